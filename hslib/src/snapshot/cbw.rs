//! The `cbw` (copy-before-write) snapshot: at the checkpoint the dirty pages are only made
//! read-only and marked pending; the link's sender thread copies them into the staging
//! buffer as it ships the checkpoint, and a write by the application that reaches a pending
//! page first copies it (in the SIGSEGV handler) before the write goes through. The image is
//! consistent: every page shipped holds its contents at the checkpoint.
//!
//! Protection: under the `mprotect` tracker every page is read-only after the scan anyway,
//! and its fault handler copies a pending page before recording the write (one protection
//! serves both). Under `uffd` (whose async write-protection resolves writes in the kernel,
//! without telling anybody) and `full`, this module adds an `mprotect(PROT_READ)`: over each
//! dirty run, or over the whole region (one call; a write to a page of it that is not pending
//! faults once and is let through), whichever the last ones timed predict cheaper, and the
//! settling thread makes the ranges writable again once every page is copied.
//!
//! The application settles what is left (copies the pages the sender has not reached) before
//! its next checkpoint, before the kernel writes into a region for it
//! ([`crate::Context::prepare_kernel_write`]), before a discard and before its regions are
//! unmapped.

use std::sync::Arc;

use super::{Copied, Run, staging_bytes};
use crate::region::Region;
use crate::sys::PAGE_SIZE;
use crate::sys::cow::{self, Area, ArmedArea, Pending};
use crate::sys::mman::{self, StagingBuffer};
use crate::sys::segv;

/// The first estimates of what protecting costs (see [`Protection`]), measured on the
/// project's machine with a 4 MiB region under the uffd tracker, back to back: an `mprotect`
/// of one dirty run ~1.9 us (it splits the mapping), one over the whole region ~25 ns per page
/// (every page-table entry is rewritten). At 64 MiB the whole-region call cost ~250 ns per
/// page (4 ms) and per run ~4 us: hence estimates that learn.
const FIRST_NS_PER_RUN: f64 = 1_900.0;
const FIRST_NS_PER_PAGE: f64 = 25.0;

/// How a region's pending pages are protected: one `mprotect` per dirty run, or one over the
/// whole region, whichever is predicted cheaper from the last ones timed. Model: every page
/// protected costs `ns_per_page`, and each call beyond that `ns_per_run` (the split of the
/// mapping); the estimate a measurement informs moves halfway to it.
#[derive(Debug, Clone, Copy)]
struct Protection {
    ns_per_run: f64,
    ns_per_page: f64,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            ns_per_run: FIRST_NS_PER_RUN,
            ns_per_page: FIRST_NS_PER_PAGE,
        }
    }
}

impl Protection {
    /// Whether `runs` runs holding `dirty` pages of a region of `pages` pages are protected
    /// one by one.
    fn per_run(&self, runs: usize, dirty: usize, pages: usize) -> bool {
        runs as f64 * self.ns_per_run + dirty as f64 * self.ns_per_page
            <= pages as f64 * self.ns_per_page
    }

    /// Learns from a protection that took `spent`: of `runs` runs holding `dirty` pages one by
    /// one (`per_run`), or of a whole region of `pages` pages.
    fn observe(
        &mut self,
        per_run: bool,
        (runs, dirty, pages): (usize, usize, usize),
        spent: std::time::Duration,
    ) {
        let ns = spent.as_nanos() as f64;
        if per_run && runs > 0 {
            let per = ((ns - dirty as f64 * self.ns_per_page) / runs as f64).max(0.0);
            self.ns_per_run = 0.5 * self.ns_per_run + 0.5 * per;
        } else if !per_run && pages > 0 {
            self.ns_per_page = 0.5 * self.ns_per_page + 0.5 * ns / pages as f64;
        }
    }
}

/// Process-wide counters of copy-before-write snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CbwStats {
    /// Pages a write by the application reached before they were copied: the fault handler
    /// copied them (the cost moved onto the application's writes).
    pub fault_copies: u64,
    /// Pages copied by the thread settling a snapshot (the sender, or the application before
    /// its next checkpoint).
    pub settle_copies: u64,
}

/// The counters so far, process-wide.
pub fn stats() -> CbwStats {
    let s = cow::stats();
    CbwStats {
        fault_copies: s.fault_copies,
        settle_copies: s.settle_copies,
    }
}

/// A context's copy-before-write state: an area per region that a `cbw` snapshot covered,
/// and the snapshot whose pages may still be pending.
#[derive(Debug, Default)]
pub struct CbwState {
    areas: Vec<Arc<Area>>,
    inflight: Option<Arc<Pending>>,
    protection: Protection,
}

impl CbwState {
    /// No areas, nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies every page of the last `cbw` snapshot still pending and lifts the protection
    /// it added. Call before the regions change other than by the application's own writes.
    #[inline(always)]
    pub fn settle(&mut self) {
        if self.inflight.is_some() {
            self.settle_inflight();
        }
    }

    /// [`CbwState::settle`] with a snapshot in flight: out of the way of checkpoints of the
    /// other strategies (at a person's pace each page of code a checkpoint runs is a cold
    /// miss of its own).
    #[cold]
    #[inline(never)]
    fn settle_inflight(&mut self) {
        if let Some(p) = self.inflight.take()
            && let Err(e) = p.settle()
        {
            // The pages stay read-only; the fault handler lets each write through.
            tracing::warn!(error = %e, "making a cbw snapshot's pages writable again failed");
        }
    }

    /// Settles and takes every area out of the fault handler's sight (before the regions
    /// are unmapped).
    pub fn retire(&mut self) {
        self.settle();
        for a in self.areas.drain(..) {
            a.retire();
        }
    }

    /// Whether a snapshot's pages may still be pending.
    pub fn in_flight(&self) -> bool {
        self.inflight.as_ref().is_some_and(|p| !p.is_settled())
    }

    fn area(&mut self, region: &Region) -> Result<Arc<Area>, nix::errno::Errno> {
        if let Some(a) = self
            .areas
            .iter()
            .find(|a| a.base() == region.base() && a.len() == region.len())
        {
            return Ok(Arc::clone(a));
        }
        let a = Arc::new(Area::new(region.base(), region.len())?);
        self.areas.push(Arc::clone(&a));
        Ok(a)
    }

    /// Takes a copy-before-write snapshot of `runs` of `regions` into `data` (sized for them
    /// by the caller, see [`staging_bytes`]): marks the pages pending and read-only, copies
    /// nothing. `tracker_protects`: the tracker left every page read-only (the `mprotect`
    /// backend), so no protection is added. Whatever fails on the way (no area slot, an
    /// `mprotect`) makes it copy the pages now, like [`Copied::take`]: slower, never wrong.
    pub fn take(
        &mut self,
        regions: &[Region],
        full: bool,
        runs: Vec<Run>,
        mut data: StagingBuffer,
        metadata: Vec<u8>,
        tracker_protects: bool,
    ) -> Copied {
        self.settle();
        data.clear();
        let bytes = staging_bytes(&runs);
        if bytes == 0 || segv::install().is_err() {
            return Copied::take(regions, full, runs, data, metadata);
        }
        // The areas first (the only step that can fail before anything is armed).
        let mut armed: Vec<ArmedArea> = Vec::new();
        for run in &runs {
            if armed
                .last()
                .is_some_and(|(a, _)| a.base() == regions[run.index].base())
            {
                continue;
            }
            match self.area(&regions[run.index]) {
                Ok(a) => armed.push((a, Vec::new())),
                Err(e) => {
                    tracing::warn!(error = %e, "no cbw area for a region; copying now");
                    return Copied::take(regions, full, runs, data, metadata);
                }
            }
        }
        let staging = data.addr();
        for (a, _) in &armed {
            a.prepare(staging, !tracker_protects);
        }
        let mut dest = 0u32;
        let mut at = 0;
        for run in &runs {
            while armed[at].0.base() != regions[run.index].base() {
                at += 1;
            }
            let (area, pending) = &mut armed[at];
            let first = run.first_page as usize;
            for page in first..first + run.pages {
                area.arm(page, dest);
                dest += 1;
            }
            pending.push((first, run.pages));
        }
        let mut protected = Vec::new();
        let mut failed = None;
        if !tracker_protects {
            'areas: for (area, pending) in &armed {
                let pages = area.len() / PAGE_SIZE;
                let dirty = pending.iter().map(|&(_, n)| n).sum();
                let per_run = self.protection.per_run(pending.len(), dirty, pages);
                let from = protected.len();
                if per_run {
                    protected.extend(
                        pending
                            .iter()
                            .map(|&(p, n)| (area.base() + p * PAGE_SIZE, n * PAGE_SIZE)),
                    );
                } else {
                    protected.push((area.base(), area.len()));
                }
                let t = std::time::Instant::now();
                for i in from..protected.len() {
                    let (addr, len) = protected[i];
                    if let Err(e) = mman::protect_read(addr, len) {
                        failed = Some((e, addr, len));
                        protected.truncate(i);
                        break 'areas;
                    }
                }
                self.protection
                    .observe(per_run, (pending.len(), dirty, pages), t.elapsed());
            }
        }
        let pending = Arc::new(Pending::new(armed, protected));
        if let Some((e, addr, len)) = failed {
            tracing::warn!(error = %e, addr, len, "mprotect(PROT_READ) for a cbw snapshot failed; copying now");
            self.inflight = Some(Arc::clone(&pending));
            data.fill_later(bytes, pending);
            self.settle();
        } else {
            self.inflight = Some(Arc::clone(&pending));
            data.fill_later(bytes, pending);
        }
        Copied {
            full,
            runs,
            data,
            metadata,
            plan: Copied::UNKNOWN_PLAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Protection;
    use std::time::Duration;

    #[test]
    fn protection_goes_per_run_once_whole_region_calls_turn_out_slow() {
        let mut p = Protection::default();
        // 4 MiB, 26 runs of 4 pages: the whole region (1024 x 25 ns) beats 26 x 1.9 us.
        assert!(!p.per_run(26, 104, 1024));
        // 1%: 3 runs of 4 pages are protected one by one.
        assert!(p.per_run(3, 12, 1024));
        // A full checkpoint (one run, the whole region, 26 us) does not make runs look dear.
        p.observe(true, (1, 1024, 1024), Duration::from_micros(26));
        assert!(p.per_run(3, 12, 1024), "{p:?}");
        // 64 MiB, 356 runs: first the whole region (410 us predicted vs 712 us)...
        assert!(!p.per_run(356, 1424, 16384));
        // ... which takes 4 ms twice: per run it is.
        p.observe(false, (356, 1424, 16384), Duration::from_millis(4));
        p.observe(false, (356, 1424, 16384), Duration::from_millis(4));
        assert!(p.per_run(356, 1424, 16384), "{p:?}");
    }
}
