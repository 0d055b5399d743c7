//! Dirty-page tracking costs.
//!
//! - `scan_reprotect/<backend>/<size>`: one `collect_dirty` (scan + re-protect) of a region
//!   with 10% of its pages written in sets of four contiguous pages (the paper's pattern).
//!   Targets: uffd 4 MiB <= 10 us, 64 MiB <= 120 us.
//! - `first_write/<backend>`: one store to a page not written since the last checkpoint
//!   (includes the fault); `first_write/baseline` is the same store to a page already
//!   written. The extra cost of tracking is the difference. Target: uffd <= 1 us.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hslib::PAGE_SIZE;
use hslib::track::{FullTracker, MprotectTracker, UffdTracker};
use hslib::{Backend, Region, RegionId, Tracker};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const MIB: usize = 1 << 20;

fn tracker(backend: Backend) -> Box<dyn Tracker> {
    match backend {
        Backend::Uffd => Box::new(UffdTracker::new().expect("uffd tracker")),
        Backend::Mprotect => Box::new(MprotectTracker::new().expect("mprotect tracker")),
        Backend::Full => Box::new(FullTracker::new()),
    }
}

/// A populated region without huge pages (so every size behaves alike).
fn region(id: u32, len: usize) -> Region {
    let mut r = Region::map(RegionId(id), len).expect("map");
    r.set_huge_pages(false).expect("madvise");
    r.as_bytes_mut().fill(1);
    r
}

/// Start pages of 10% of the region's pages, in non-overlapping sets of four.
fn ten_percent_in_fours(pages: usize) -> Vec<usize> {
    let mut sets: Vec<usize> = (0..pages / 4).map(|s| s * 4).collect();
    sets.shuffle(&mut StdRng::seed_from_u64(4));
    sets.truncate(pages / 10 / 4);
    sets.sort_unstable();
    sets
}

fn scan_reprotect(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_reprotect");
    let mut rng = StdRng::seed_from_u64(1);
    for (backend, id) in [(Backend::Uffd, 1), (Backend::Mprotect, 3)] {
        for (len, label) in [(4 * MIB, "4MiB"), (64 * MIB, "64MiB")] {
            let mut t = tracker(backend);
            let mut r = region(id + u32::from(len > 4 * MIB), len);
            t.register(&r).expect("register");
            let sets = ten_percent_in_fours(r.pages());
            let want = sets.len() * 4;
            if backend == Backend::Mprotect {
                // Each iteration takes ~4.5 us of faults per dirtied page outside the timing.
                g.sample_size(10).measurement_time(Duration::from_secs(10));
            } else {
                g.sample_size(100).measurement_time(Duration::from_secs(5));
            }
            g.bench_function(format!("{backend}/{label}_10pct_sets_of_4"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let v: u8 = rng.random();
                        let bytes = r.as_bytes_mut();
                        for &s in &sets {
                            for p in s..s + 4 {
                                bytes[p * PAGE_SIZE] = black_box(v);
                            }
                        }
                        let start = Instant::now();
                        let d = t.collect_dirty().expect("collect");
                        total += start.elapsed();
                        assert_eq!(d.page_count(), want);
                    }
                    total
                });
            });
            t.unregister(r.id()).expect("unregister");
        }
    }
    g.finish();
}

fn first_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("first_write");
    g.sample_size(100).measurement_time(Duration::from_secs(5));
    for (backend, id) in [
        (Backend::Uffd, 10),
        (Backend::Mprotect, 11),
        (Backend::Full, 12),
    ] {
        let mut t = tracker(backend);
        let mut r = region(id, 4 * MIB);
        t.register(&r).expect("register");
        let pages = r.pages();
        let name = if backend == Backend::Full {
            "baseline_already_written".to_owned()
        } else {
            backend.to_string()
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(pages);
                    // Re-protects every page written so far (untimed); for `full` the pages
                    // stay writable, giving the cost of a plain store.
                    t.collect_dirty().expect("collect");
                    let bytes = r.as_bytes_mut();
                    let start = Instant::now();
                    for p in 0..n {
                        bytes[p * PAGE_SIZE + 8] = black_box(p as u8);
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            });
        });
        t.unregister(r.id()).expect("unregister");
    }
    g.finish();
}

criterion_group!(benches, scan_reprotect, first_write);
criterion_main!(benches);
