//! The `full` backend: no tracking, every page of every region counts as written.

use super::{Backend, DirtyPages, DirtyRegion, TrackError, Tracked, Tracker, check_new, find};
use crate::region::{Region, RegionId};
use crate::runs::PageRuns;
use crate::sys::PAGE_SIZE;

/// Reports every page at every checkpoint. Always available.
#[derive(Debug, Default)]
pub struct FullTracker {
    regions: Vec<Tracked>,
}

impl FullTracker {
    /// A tracker with no regions.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Tracker for FullTracker {
    fn backend(&self) -> Backend {
        Backend::Full
    }

    fn register(&mut self, region: &Region) -> Result<(), TrackError> {
        check_new(&self.regions, region)?;
        self.regions.push(Tracked::new(region));
        Ok(())
    }

    fn unregister(&mut self, id: RegionId) -> Result<(), TrackError> {
        let i = find(&self.regions, id)?;
        self.regions.remove(i);
        Ok(())
    }

    fn collect_dirty(&mut self) -> Result<DirtyPages, TrackError> {
        let mut dirty = DirtyPages::default();
        self.collect_dirty_into(&mut dirty)?;
        Ok(dirty)
    }

    fn collect_dirty_into(&mut self, out: &mut DirtyPages) -> Result<(), TrackError> {
        out.regions.truncate(self.regions.len());
        for (i, t) in self.regions.iter().enumerate() {
            let pages = t.len / PAGE_SIZE;
            match out.regions.get_mut(i) {
                Some(r) => {
                    r.id = t.id;
                    r.base = t.base;
                    r.runs.clear();
                    r.runs.push(0, pages);
                }
                None => {
                    let mut runs = PageRuns::new();
                    runs.push(0, pages);
                    out.regions.push(DirtyRegion {
                        id: t.id,
                        base: t.base,
                        runs,
                    });
                }
            }
        }
        Ok(())
    }

    fn span(&self, id: RegionId) -> Option<(usize, usize)> {
        let i = find(&self.regions, id).ok()?;
        Some(self.regions[i].span())
    }

    fn mark_written(&mut self, id: RegionId, _: usize, _: usize) -> Result<(), TrackError> {
        // Every page is reported anyway.
        find(&self.regions, id).map(drop)
    }
}
