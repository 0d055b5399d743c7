//! The `uffd` backend: userfaultfd async write-protection read back with `PAGEMAP_SCAN`.
//!
//! Regions are registered in write-protect mode with `UFFD_FEATURE_WP_ASYNC` (the kernel
//! resolves a write to a protected page itself, clearing the page's protection, without
//! waking anybody) and `UFFD_FEATURE_WP_UNPOPULATED` (pages never touched count as protected
//! too). A checkpoint is one `PAGEMAP_SCAN` per region that lists the unprotected ("written")
//! pages and protects them again in the same walk.
//!
//! Observed on Linux 6.18 and checked by the oracle tests:
//! - Transparent huge pages: a region populated with huge pages before registration stays
//!   huge-page backed when protected; the first write to a protected huge page splits it and
//!   only the written 4 KiB page is reported (no huge-page-granularity over-reporting). Pages
//!   first touched after registration are faulted in at 4 KiB (the unpopulated-protection
//!   markers are per page), so no new huge pages appear in a tracked region.
//! - `MADV_DONTNEED` on a protected page is reported once as written, then protected again.
//! - `fork`: without `UFFD_FEATURE_EVENT_FORK` the child's copy of the region is not
//!   registered; the parent's copy-on-write faults after the fork still clear the protection
//!   of exactly the pages the parent writes.

use super::{Backend, DirtyPages, TrackError, Tracked, Tracker, check_new, find};
use crate::region::{Region, RegionId};
use crate::runs::PageRuns;
use crate::sys::PAGE_SIZE;
use crate::sys::mman::ScratchPage;
use crate::sys::pagemap::Pagemap;
use crate::sys::uffd::{self, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED, Uffd};

const FEATURES: u32 = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;

/// Exact tracking through userfaultfd write-protection; costs one minor fault per first write
/// and one ioctl per region per checkpoint. Kernel writes (`read(2)` into a region) are
/// tracked like user writes. `UFFD_FEATURE_EVENT_FORK` is not requested, so a forked child
/// inherits no tracking and cannot disturb ours.
#[derive(Debug)]
pub struct UffdTracker {
    /// Kept open for the tracker's life: closing it drops every protection.
    uffd: Uffd,
    pagemap: Pagemap,
    regions: Vec<Tracked>,
}

impl UffdTracker {
    /// Opens a userfaultfd with async write-protect features and `/proc/self/pagemap`.
    pub fn new() -> Result<Self, TrackError> {
        let unavailable = |reason: String| TrackError::Unavailable {
            backend: Backend::Uffd,
            reason,
        };
        crate::sys::check_page_size().map_err(TrackError::PageSize)?;
        let uffd = Uffd::open().map_err(|e| {
            unavailable(format!(
                "userfaultfd(UFFD_USER_MODE_ONLY) failed: {}; /dev/userfaultfd failed: {}",
                e.syscall, e.device
            ))
        })?;
        let granted = uffd.api(FEATURES).map_err(|e| {
            unavailable(format!(
                "UFFDIO_API with features {FEATURES:#x} failed: {e}"
            ))
        })?;
        if granted & u64::from(FEATURES) != u64::from(FEATURES) {
            return Err(unavailable(format!(
                "kernel grants features {granted:#x}, lacking some of {FEATURES:#x}"
            )));
        }
        let pagemap = Pagemap::open()
            .map_err(|e| unavailable(format!("opening /proc/self/pagemap failed: {e}")))?;
        Ok(Self {
            uffd,
            pagemap,
            regions: Vec::new(),
        })
    }

    /// How the userfaultfd was obtained (system call or `/dev/userfaultfd`).
    pub fn uffd_source(&self) -> uffd::Source {
        self.uffd.source()
    }

    /// Checks end to end on a scratch page that a write is reported exactly once.
    pub(super) fn self_test(&mut self) -> Result<(), TrackError> {
        let fail = |reason: String| TrackError::Unavailable {
            backend: Backend::Uffd,
            reason,
        };
        let page = ScratchPage::new().map_err(|e| fail(format!("mapping a probe page: {e}")))?;
        let addr = page.addr();
        self.uffd
            .register_wp(addr, PAGE_SIZE)
            .map_err(|e| fail(format!("UFFDIO_REGISTER of a probe page: {e}")))?;
        let result = self.probe_page(&page).map_err(fail);
        let _ = self.uffd.unregister(addr, PAGE_SIZE);
        result
    }

    fn probe_page(&mut self, page: &ScratchPage) -> Result<(), String> {
        let (start, end) = (page.addr(), page.addr() + PAGE_SIZE);
        self.uffd
            .writeprotect(start, PAGE_SIZE, true)
            .map_err(|e| format!("UFFDIO_WRITEPROTECT of a probe page: {e}"))?;
        let mut counts = [0; 2];
        for count in &mut counts {
            self.pagemap
                .scan_written_and_protect(start, end, |s, e| *count += (e - s) / PAGE_SIZE)
                .map_err(|e| format!("PAGEMAP_SCAN of a probe page: {e}"))?;
            page.touch();
        }
        if counts != [0, 1] {
            return Err(format!(
                "PAGEMAP_SCAN reported {counts:?} written pages before and after a write, \
                 expected [0, 1]"
            ));
        }
        Ok(())
    }

    fn sys_err<E: Into<std::io::Error>>(
        t: &Tracked,
        op: &'static str,
    ) -> impl FnOnce(E) -> TrackError {
        t.sys(op, t.base, t.len)
    }
}

impl Tracker for UffdTracker {
    fn backend(&self) -> Backend {
        Backend::Uffd
    }

    fn register(&mut self, region: &Region) -> Result<(), TrackError> {
        check_new(&self.regions, region)?;
        let t = Tracked::new(region);
        self.uffd
            .register_wp(t.base, t.len)
            .map_err(Self::sys_err(&t, "UFFDIO_REGISTER(MODE_WP)"))?;
        if let Err(e) = self.uffd.writeprotect(t.base, t.len, true) {
            let _ = self.uffd.unregister(t.base, t.len);
            return Err(Self::sys_err(&t, "UFFDIO_WRITEPROTECT")(e));
        }
        self.regions.push(t);
        Ok(())
    }

    fn unregister(&mut self, id: RegionId) -> Result<(), TrackError> {
        let i = find(&self.regions, id)?;
        let t = self.regions.remove(i);
        self.uffd
            .unregister(t.base, t.len)
            .map_err(Self::sys_err(&t, "UFFDIO_UNREGISTER"))
    }

    fn collect_dirty(&mut self) -> Result<DirtyPages, TrackError> {
        let mut out = Vec::with_capacity(self.regions.len());
        for t in &mut self.regions {
            let mut runs = PageRuns::new();
            let base = t.base;
            self.pagemap
                .scan_written_and_protect(base, base + t.len, |s, e| {
                    runs.push((s - base) / PAGE_SIZE, (e - s) / PAGE_SIZE);
                })
                .map_err(t.sys("PAGEMAP_SCAN(WP_MATCHING)", t.base, t.len))?;
            out.push(t.report(runs));
        }
        Ok(DirtyPages { regions: out })
    }

    fn span(&self, id: RegionId) -> Option<(usize, usize)> {
        let i = find(&self.regions, id).ok()?;
        Some(self.regions[i].span())
    }

    fn mark_written(&mut self, id: RegionId, first: usize, count: usize) -> Result<(), TrackError> {
        let i = find(&self.regions, id)?;
        let t = &mut self.regions[i];
        let (addr, len) = (t.base + first * PAGE_SIZE, count * PAGE_SIZE);
        // Protected again so that writes after the next report are seen (a discard has
        // dropped the protection; the kernel's own writes fault like the user's).
        self.uffd
            .writeprotect(addr, len, true)
            .map_err(t.sys("UFFDIO_WRITEPROTECT", addr, len))?;
        t.force(first, count);
        Ok(())
    }
}
