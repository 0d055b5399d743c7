//! Which pages of the registered regions were written since the last checkpoint.
//!
//! One trait, [`Tracker`], three backends ([`Backend`]): userfaultfd async write-protect with
//! `PAGEMAP_SCAN` (exact, cheap), `mprotect` with a SIGSEGV handler (exact, a fault per first
//! write), and `full` (no tracking: every page counts as written). [`select`] picks the best
//! one that works here, unless `HS_TRACKER=uffd|mprotect|full` says which.
//!
//! # Rules for callers
//! - Tracking of a region starts when it is registered: the first [`Tracker::collect_dirty`]
//!   reports the pages written after [`Tracker::register`], so the first checkpoint of a
//!   region must copy it whole.
//! - `collect_dirty` must not run while other threads write to the regions (a checkpoint is
//!   taken at a point where the state is consistent, by the thread that owns it).
//! - Zero pages with [`Tracker::discard`], not with a raw `madvise(MADV_DONTNEED)`: under
//!   `mprotect` the kernel zaps the pages without any fault, so the zeroing goes unreported.
//!   (Under `uffd`, Linux 6.18 reports zapped pages as written; `discard` does not depend on
//!   that.)
//! - Before the kernel writes into a region on your behalf (`read(2)`, `recv(2)`, ...), call
//!   [`Tracker::prepare_kernel_write`] for the destination. Under `mprotect` such a write
//!   into a protected page otherwise fails with `EFAULT`; under `uffd` and `full` it is a
//!   no-op, since the kernel's own write is tracked.
//! - Unregister a region before unmapping it.

mod full;
mod mprotect;
mod uffd;

pub use full::FullTracker;
pub use mprotect::MprotectTracker;
pub use uffd::UffdTracker;

use crate::region::{Region, RegionId};
use crate::runs::PageRuns;
use crate::sys::PAGE_SIZE;

/// The environment variable that overrides probing: `uffd`, `mprotect` or `full`.
pub const ENV_OVERRIDE: &str = "HS_TRACKER";

/// A dirty-page tracking method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// userfaultfd async write-protect + `PAGEMAP_SCAN`.
    Uffd,
    /// `mprotect` + SIGSEGV handler.
    Mprotect,
    /// No tracking; every page is reported.
    Full,
}

impl Backend {
    /// The name used by `HS_TRACKER` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uffd => "uffd",
            Backend::Mprotect => "mprotect",
            Backend::Full => "full",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = TrackError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uffd" => Ok(Backend::Uffd),
            "mprotect" => Ok(Backend::Mprotect),
            "full" => Ok(Backend::Full),
            _ => Err(TrackError::BadOverride {
                value: s.to_owned(),
            }),
        }
    }
}

/// What went wrong while tracking.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// `HS_TRACKER` names no backend.
    #[error("{ENV_OVERRIDE}={value:?} names no tracker; use uffd, mprotect or full")]
    BadOverride {
        /// The value found.
        value: String,
    },
    /// A backend cannot run here.
    #[error("the {backend} tracker is unavailable: {reason}")]
    Unavailable {
        /// The backend.
        backend: Backend,
        /// Why.
        reason: String,
    },
    /// The kernel's page size is not the one hslib tracks at.
    #[error("the page size is {0} bytes; hslib tracks {PAGE_SIZE}-byte pages only")]
    PageSize(usize),
    /// `register` of a region already registered.
    #[error("region {0} is already registered with this tracker")]
    AlreadyRegistered(RegionId),
    /// An operation on a region that is not registered.
    #[error("region {0} is not registered with this tracker")]
    NotRegistered(RegionId),
    /// A byte range outside the region or not page aligned.
    #[error(
        "region {id}: range {offset}+{len} is not a page-aligned range inside its {size} bytes"
    )]
    BadRange {
        /// The region.
        id: RegionId,
        /// Byte offset asked for.
        offset: usize,
        /// Length asked for.
        len: usize,
        /// The region's length.
        size: usize,
    },
    /// A system call failed.
    #[error("{op} for region {id} at {addr:#x}+{len:#x} failed: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The region.
        id: RegionId,
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// The error (an errno).
        source: std::io::Error,
    },
}

/// The pages of one region written since the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRegion {
    /// The region.
    pub id: RegionId,
    /// Its base address.
    pub base: usize,
    /// The written pages, relative to `base`.
    pub runs: PageRuns,
}

/// The result of [`Tracker::collect_dirty`]: one entry per registered region, in
/// registration order (regions with nothing written have empty runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyPages {
    /// Per region.
    pub regions: Vec<DirtyRegion>,
}

impl DirtyPages {
    /// The runs of region `id`, if it is registered.
    pub fn runs(&self, id: RegionId) -> Option<&PageRuns> {
        self.regions.iter().find(|r| r.id == id).map(|r| &r.runs)
    }

    /// Total pages over all regions.
    pub fn page_count(&self) -> usize {
        self.regions.iter().map(|r| r.runs.page_count()).sum()
    }
}

/// Answers "which pages of the registered regions were written since the last checkpoint".
pub trait Tracker: Send + std::fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Starts tracking `region` (see the module's rules).
    fn register(&mut self, region: &Region) -> Result<(), TrackError>;

    /// Stops tracking region `id` and leaves its memory plainly writable.
    fn unregister(&mut self, id: RegionId) -> Result<(), TrackError>;

    /// Reports the pages written since the previous call (or registration) and starts a new
    /// interval, atomically per region: every write after a page is reported lands in the
    /// next report.
    fn collect_dirty(&mut self) -> Result<DirtyPages, TrackError>;

    /// [`Tracker::collect_dirty`] into `out`, whose vectors a backend may reuse (a report
    /// taken at every checkpoint need not allocate). `out` is left as it was on an error.
    fn collect_dirty_into(&mut self, out: &mut DirtyPages) -> Result<(), TrackError> {
        *out = self.collect_dirty()?;
        Ok(())
    }

    /// Where region `id` is, as (base address, length), if it is registered.
    fn span(&self, id: RegionId) -> Option<(usize, usize)>;

    /// Counts pages `first .. first + count` of region `id` as written at the next
    /// [`Tracker::collect_dirty`] whatever the hardware saw, and leaves them writable by the
    /// kernel. The range is checked by the callers.
    fn mark_written(&mut self, id: RegionId, first: usize, count: usize) -> Result<(), TrackError>;

    /// Makes `[offset, offset + len)` of region `id` (page aligned) safe as the destination of
    /// a kernel write such as `read(2)`, and counts those pages as written.
    fn prepare_kernel_write(
        &mut self,
        id: RegionId,
        offset: usize,
        len: usize,
    ) -> Result<(), TrackError> {
        let (first, count) = pages_of(id, self.span(id), offset, len)?;
        self.mark_written(id, first, count)
    }

    /// Zeroes `[offset, offset + len)` of `region` (page aligned) with `MADV_DONTNEED`,
    /// giving the memory back, and counts those pages as written.
    fn discard(
        &mut self,
        region: &mut Region,
        offset: usize,
        len: usize,
    ) -> Result<(), TrackError> {
        let id = region.id();
        let span = self.span(id);
        if span.is_none_or(|(base, _)| base != region.base()) {
            return Err(TrackError::NotRegistered(id));
        }
        let (first, count) = pages_of(id, span, offset, len)?;
        region
            .discard(offset, len)
            .map_err(|errno| TrackError::Sys {
                op: "madvise(MADV_DONTNEED)",
                id,
                addr: region.base() + offset,
                len,
                source: std::io::Error::from(errno),
            })?;
        // No backend sees this as a write: uffd loses the pages' protection without a
        // report, mprotect takes no fault, so the tracker counts them itself.
        self.mark_written(id, first, count)
    }
}

/// Checks that `[offset, offset + len)` is a page-aligned range inside region `id` at `span`
/// and returns it as (first page, page count).
fn pages_of(
    id: RegionId,
    span: Option<(usize, usize)>,
    offset: usize,
    len: usize,
) -> Result<(usize, usize), TrackError> {
    let (_, size) = span.ok_or(TrackError::NotRegistered(id))?;
    let ok = offset.is_multiple_of(PAGE_SIZE)
        && len.is_multiple_of(PAGE_SIZE)
        && offset.checked_add(len).is_some_and(|e| e <= size);
    if !ok {
        return Err(TrackError::BadRange {
            id,
            offset,
            len,
            size,
        });
    }
    Ok((offset / PAGE_SIZE, len / PAGE_SIZE))
}

/// Creates a tracker of the given backend, or says why it cannot run here (for uffd, after
/// the same end-to-end self-test as probing).
pub fn create(backend: Backend) -> Result<Box<dyn Tracker>, TrackError> {
    Ok(match backend {
        Backend::Uffd => {
            let mut t = UffdTracker::new()?;
            t.self_test()?;
            Box::new(t)
        }
        Backend::Mprotect => Box::new(MprotectTracker::new()?),
        Backend::Full => Box::new(FullTracker::new()),
    })
}

/// Creates the tracker named by `HS_TRACKER` if it is set (failing if that backend cannot run
/// here), else the best backend that passes a self-test: uffd, then mprotect, then full.
/// Logs the choice at info level.
pub fn select() -> Result<Box<dyn Tracker>, TrackError> {
    match std::env::var(ENV_OVERRIDE) {
        Ok(v) if !v.is_empty() => {
            let backend: Backend = v.parse()?;
            let t = create(backend)?;
            tracing::info!(
                backend = %backend,
                source = ENV_OVERRIDE,
                "dirty-page tracker selected"
            );
            Ok(t)
        }
        _ => Ok(probe()),
    }
}

/// Creates the best backend that passes a self-test here, ignoring `HS_TRACKER`.
pub fn probe() -> Box<dyn Tracker> {
    let uffd_err = match UffdTracker::new().and_then(|mut t| t.self_test().map(|()| t)) {
        Ok(t) => {
            tracing::info!(
                backend = "uffd",
                source = "probe",
                uffd = ?t.uffd_source(),
                "dirty-page tracker selected"
            );
            return Box::new(t);
        }
        Err(e) => e,
    };
    match MprotectTracker::new() {
        Ok(t) => {
            tracing::info!(
                backend = "mprotect",
                source = "probe",
                uffd_error = %uffd_err,
                "dirty-page tracker selected"
            );
            Box::new(t)
        }
        Err(e) => {
            tracing::info!(
                backend = "full",
                source = "probe",
                uffd_error = %uffd_err,
                mprotect_error = %e,
                "dirty-page tracker selected"
            );
            Box::new(FullTracker::new())
        }
    }
}

/// A region as a tracker remembers it.
#[derive(Debug, Clone)]
struct Tracked {
    id: RegionId,
    base: usize,
    len: usize,
    /// Pages to report at the next collection whatever the backend saw (discarded pages).
    forced: PageRuns,
}

impl Tracked {
    fn new(region: &Region) -> Self {
        Self {
            id: region.id(),
            base: region.base(),
            len: region.len(),
            forced: PageRuns::new(),
        }
    }

    /// This collection's report for the region: the backend's `runs` plus the forced pages,
    /// which are forgotten once reported.
    fn report(&mut self, runs: PageRuns) -> DirtyRegion {
        let runs = if self.forced.is_empty() {
            runs
        } else {
            runs.union(&std::mem::replace(&mut self.forced, PageRuns::new()))
        };
        DirtyRegion {
            id: self.id,
            base: self.base,
            runs,
        }
    }

    /// Forces pages `first .. first + count` into the next report.
    fn force(&mut self, first: usize, count: usize) {
        let mut r = PageRuns::new();
        r.push(first, count);
        self.forced = self.forced.union(&r);
    }

    fn sys<E: Into<std::io::Error>>(
        &self,
        op: &'static str,
        addr: usize,
        len: usize,
    ) -> impl FnOnce(E) -> TrackError {
        let id = self.id;
        move |errno| TrackError::Sys {
            op,
            id,
            addr,
            len,
            source: errno.into(),
        }
    }

    fn span(&self) -> (usize, usize) {
        (self.base, self.len)
    }
}

fn find(regions: &[Tracked], id: RegionId) -> Result<usize, TrackError> {
    regions
        .iter()
        .position(|r| r.id == id)
        .ok_or(TrackError::NotRegistered(id))
}

fn check_new(regions: &[Tracked], region: &Region) -> Result<(), TrackError> {
    if regions.iter().any(|r| r.id == region.id()) {
        return Err(TrackError::AlreadyRegistered(region.id()));
    }
    crate::sys::check_page_size().map_err(TrackError::PageSize)
}
