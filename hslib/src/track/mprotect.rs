//! The `mprotect` backend: regions are read-only between checkpoints; the process-wide
//! SIGSEGV handler in [`crate::sys::segv`] records the first write to each page in a bitmap
//! and makes the page writable.
//!
//! Limit: the kernel does not fault on our behalf when *it* writes to a protected page, so
//! `read(2)` (or any system call that stores into user memory) into a protected page fails
//! with `EFAULT`. Call [`Tracker::prepare_kernel_write`] on the destination first.

use super::{Backend, DirtyPages, TrackError, Tracked, Tracker, check_new};
use crate::region::{Region, RegionId};
use crate::runs::PageRuns;
use crate::sys::segv::{self, Registration};
use crate::sys::{PAGE_SIZE, mman};

/// Above this many dirty runs in a region, re-protect it with one `mprotect` of the whole
/// region instead of one per run.
const WHOLE_REGION_RUNS: usize = 16;

/// Exact tracking through page protection and a SIGSEGV handler; costs a signal and an
/// `mprotect` per first write and one `mprotect` per dirty run per checkpoint. At most
/// [`segv::MAX_REGIONS`] regions process-wide.
#[derive(Debug)]
pub struct MprotectTracker {
    regions: Vec<(Tracked, Registration)>,
}

impl MprotectTracker {
    /// Installs the process-wide SIGSEGV handler (once) and returns an empty tracker.
    pub fn new() -> Result<Self, TrackError> {
        crate::sys::check_page_size().map_err(TrackError::PageSize)?;
        segv::install().map_err(|e| TrackError::Unavailable {
            backend: Backend::Mprotect,
            reason: format!("installing the SIGSEGV handler failed: {e}"),
        })?;
        Ok(Self {
            regions: Vec::new(),
        })
    }

    fn index(&self, id: RegionId) -> Result<usize, TrackError> {
        self.regions
            .iter()
            .position(|(t, _)| t.id == id)
            .ok_or(TrackError::NotRegistered(id))
    }
}

impl Tracker for MprotectTracker {
    fn backend(&self) -> Backend {
        Backend::Mprotect
    }

    fn register(&mut self, region: &Region) -> Result<(), TrackError> {
        let tracked: Vec<Tracked> = self.regions.iter().map(|(t, _)| t.clone()).collect();
        check_new(&tracked, region)?;
        let t = Tracked::new(region);
        let reg = segv::claim(t.base, t.len).map_err(t.sys(
            "claiming a SIGSEGV table slot",
            t.base,
            t.len,
        ))?;
        mman::protect_read(t.base, t.len).map_err(t.sys("mprotect(PROT_READ)", t.base, t.len))?;
        self.regions.push((t, reg));
        Ok(())
    }

    fn unregister(&mut self, id: RegionId) -> Result<(), TrackError> {
        let i = self.index(id)?;
        let (t, _) = &self.regions[i];
        // Writable first, so no fault can look for the bitmap the registration frees.
        mman::protect_read_write(t.base, t.len).map_err(t.sys(
            "mprotect(PROT_READ|PROT_WRITE)",
            t.base,
            t.len,
        ))?;
        self.regions.remove(i);
        Ok(())
    }

    fn collect_dirty(&mut self) -> Result<DirtyPages, TrackError> {
        let mut out = Vec::with_capacity(self.regions.len());
        for (t, reg) in &mut self.regions {
            let mut runs = PageRuns::new();
            reg.take_dirty(|page| runs.push(page, 1));
            if runs.as_slice().len() > WHOLE_REGION_RUNS {
                // One call over the region also merges the mappings the handler split off,
                // and beats hundreds of per-run calls that each merge one mapping.
                mman::protect_read(t.base, t.len).map_err(t.sys(
                    "mprotect(PROT_READ)",
                    t.base,
                    t.len,
                ))?;
            } else {
                for r in &runs {
                    let (addr, len) = (t.base + r.start * PAGE_SIZE, r.count * PAGE_SIZE);
                    mman::protect_read(addr, len).map_err(t.sys(
                        "mprotect(PROT_READ)",
                        addr,
                        len,
                    ))?;
                }
            }
            out.push(t.report(runs));
        }
        Ok(DirtyPages { regions: out })
    }

    fn span(&self, id: RegionId) -> Option<(usize, usize)> {
        let i = self.index(id).ok()?;
        Some(self.regions[i].0.span())
    }

    fn mark_written(&mut self, id: RegionId, first: usize, count: usize) -> Result<(), TrackError> {
        let (t, reg) = &self.regions[self.index(id)?];
        // Mark before unprotecting: once writable, a write would go unrecorded. The next
        // collection protects the marked pages again.
        reg.mark(first, count);
        let (addr, len) = (t.base + first * PAGE_SIZE, count * PAGE_SIZE);
        mman::protect_read_write(addr, len).map_err(t.sys(
            "mprotect(PROT_READ|PROT_WRITE)",
            addr,
            len,
        ))
    }
}

impl Drop for MprotectTracker {
    fn drop(&mut self) {
        for (t, _) in &self.regions {
            let _ = mman::protect_read_write(t.base, t.len);
        }
    }
}
