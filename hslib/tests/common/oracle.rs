//! An exactness oracle in the style of CRIU zdtm's `mem-touch`: a shadow copy of the region
//! as of the last checkpoint, random writes, and at each checkpoint a comparison of the pages
//! the tracker reports with the pages whose contents really changed.
//!
//! The rule: every changed page is reported (0 missed), and a reported page whose contents
//! did not change must be one the test wrote (with the bytes it already held) or discarded.
//! The `full` backend must report every page.

use std::hint::black_box;

use hslib::PAGE_SIZE;
use hslib::{Backend, PageRuns, Region, Tracker};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Per-check counts, for the test log and for assertions that the ops did something.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckStats {
    /// Pages whose contents changed.
    pub changed: usize,
    /// Pages reported by the tracker.
    pub reported: usize,
    /// Reported pages whose contents did not change (all written or discarded by the test).
    pub unchanged_reported: usize,
}

/// The region under test, its shadow and the pages written since the last checkpoint.
pub struct Oracle {
    pub region: Region,
    shadow: Vec<u8>,
    written: Vec<bool>,
    pub rng: StdRng,
}

impl Oracle {
    /// Takes `region` (already registered with the tracker, or about to be) and snapshots it.
    pub fn new(region: Region, seed: u64) -> Self {
        let shadow = region.as_bytes().to_vec();
        let pages = region.pages();
        Self {
            region,
            shadow,
            written: vec![false; pages],
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Pages in the region.
    pub fn pages(&self) -> usize {
        self.region.pages()
    }

    /// Marks `[first, first + count)` as written by the test.
    pub fn note_written(&mut self, first: usize, count: usize) {
        for w in &mut self.written[first..first + count] {
            *w = true;
        }
    }

    /// Writes `value` to byte `offset` (which may already hold it).
    pub fn write_byte(&mut self, offset: usize, value: u8) {
        self.region.as_bytes_mut()[offset] = black_box(value);
        self.note_written(offset / PAGE_SIZE, 1);
    }

    /// Fills pages `[first, first + count)` with `value`.
    pub fn fill_pages(&mut self, first: usize, count: usize, value: u8) {
        let bytes = &mut self.region.as_bytes_mut()[first * PAGE_SIZE..(first + count) * PAGE_SIZE];
        bytes.fill(black_box(value));
        self.note_written(first, count);
    }

    /// Stores, into one byte of each page in the run, the value it already holds.
    pub fn rewrite_unchanged(&mut self, first: usize, count: usize) {
        for p in first..first + count {
            let off = p * PAGE_SIZE + self.rng.random_range(0..PAGE_SIZE);
            let v = self.region.as_bytes()[off];
            self.region.as_bytes_mut()[off] = black_box(v);
        }
        self.note_written(first, count);
    }

    /// A random run of at most `max` pages.
    pub fn random_run(&mut self, max: usize) -> (usize, usize) {
        let pages = self.pages();
        let count = self.rng.random_range(1..=max.min(pages));
        let first = self.rng.random_range(0..=pages - count);
        (first, count)
    }

    /// `ops` random writes: single bytes (random values, some equal to the old one), whole
    /// pages, runs of pages, and stores of unchanged values.
    pub fn random_writes(&mut self, ops: usize) {
        for _ in 0..ops {
            match self.rng.random_range(0..10u32) {
                0..=3 => {
                    let off = self.rng.random_range(0..self.region.len());
                    // One value in four is the old one: a write that changes nothing.
                    let v = if self.rng.random_range(0..4u32) == 0 {
                        self.region.as_bytes()[off]
                    } else {
                        self.rng.random()
                    };
                    self.write_byte(off, v);
                }
                4..=6 => {
                    let (p, _) = self.random_run(1);
                    let v = self.rng.random();
                    self.fill_pages(p, 1, v);
                }
                7 | 8 => {
                    let (p, n) = self.random_run(16);
                    let v = self.rng.random();
                    self.fill_pages(p, n, v);
                }
                _ => {
                    let (p, n) = self.random_run(4);
                    self.rewrite_unchanged(p, n);
                }
            }
        }
    }

    /// Pages whose contents differ from the shadow.
    pub fn changed_pages(&self) -> Vec<usize> {
        self.region
            .as_bytes()
            .chunks_exact(PAGE_SIZE)
            .zip(self.shadow.chunks_exact(PAGE_SIZE))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect()
    }

    /// Takes a checkpoint with `tracker` and applies the oracle's rule; then the shadow
    /// becomes the current contents.
    pub fn check(&mut self, tracker: &mut dyn Tracker, what: &str) -> CheckStats {
        let dirty = tracker.collect_dirty().expect("collect_dirty");
        let runs: PageRuns = dirty
            .runs(self.region.id())
            .expect("the region is registered")
            .clone();
        let changed = self.changed_pages();
        let missed: Vec<usize> = changed
            .iter()
            .copied()
            .filter(|&p| !runs.contains(p))
            .collect();
        assert!(
            missed.is_empty(),
            "{what}: {} backend missed {} changed pages (first {:?}); reported {} runs",
            tracker.backend(),
            missed.len(),
            &missed[..missed.len().min(8)],
            runs.as_slice().len()
        );
        let is_changed = {
            let mut v = vec![false; self.pages()];
            for &p in &changed {
                v[p] = true;
            }
            v
        };
        let unchanged_reported: Vec<usize> = runs.pages().filter(|&p| !is_changed[p]).collect();
        if tracker.backend() == Backend::Full {
            assert_eq!(
                runs.page_count(),
                self.pages(),
                "{what}: full must report every page"
            );
        } else {
            let unexplained: Vec<usize> = unchanged_reported
                .iter()
                .copied()
                .filter(|&p| !self.written[p])
                .collect();
            assert!(
                unexplained.is_empty(),
                "{what}: {} backend reported {} pages that were neither changed nor written \
                 (first {:?})",
                tracker.backend(),
                unexplained.len(),
                &unexplained[..unexplained.len().min(8)]
            );
        }
        self.shadow.copy_from_slice(self.region.as_bytes());
        self.written.iter_mut().for_each(|w| *w = false);
        CheckStats {
            changed: changed.len(),
            reported: runs.page_count(),
            unchanged_reported: unchanged_reported.len(),
        }
    }

    /// `rounds` rounds of `ops` random writes, each followed by a check; returns the stats.
    pub fn run(
        &mut self,
        tracker: &mut dyn Tracker,
        rounds: usize,
        ops: usize,
        what: &str,
    ) -> Vec<CheckStats> {
        (0..rounds)
            .map(|round| {
                self.random_writes(ops);
                let s = self.check(tracker, &format!("{what}, round {round}"));
                assert!(
                    s.changed > 0,
                    "{what}, round {round}: the writes changed nothing"
                );
                s
            })
            .collect()
    }
}
