//! Where a `cbw` checkpoint's stall goes, on a populated 4 MiB region under the uffd tracker
//! with 10% of its pages dirtied in sets of four (as `hs-bench paper` does), back to back:
//! the `PAGEMAP_SCAN` that finds and re-protects the dirty pages, an `mprotect(PROT_READ)` of
//! the whole region and of each dirty run (what cbw adds), the `mprotect` that lifts it again,
//! a `UFFDIO_WRITEPROTECT` per run (what a sync-userfaultfd variant would pay instead), and
//! the floor they are compared with: copying the dirty pages into a warm buffer.
//!
//! `cargo run --release -p hslib --example cbw_breakdown` (`CBW_BREAKDOWN_MIB=64` for a
//! 64 MiB region).

use std::time::Instant;

use hslib::region::{Region, RegionId};
use hslib::track::{self, Backend};

const PAGE: usize = 4096;

fn protect(addr: usize, len: usize, prot: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `[addr, addr + len)` is part of a region this program mapped read-write and
    // does not touch while it is read-only; changing its protection invalidates no value.
    let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `CBW_BREAKDOWN_MIB` sets another region size.
    let mib: usize = match std::env::var("CBW_BREAKDOWN_MIB") {
        Ok(v) => v.parse()?,
        Err(_) => 4,
    };
    let size = mib << 20;
    let pages = size / PAGE;
    let mut r = Region::map(RegionId(77), size)?;
    r.as_bytes_mut().fill(1);
    let mut t = track::create(Backend::Uffd)?;
    t.register(&r)?;
    // A second region and tracker for the UFFDIO_WRITEPROTECT timing (it counts the pages as
    // written, which must not swell the first region's scan).
    let other = Region::map(RegionId(79), size)?;
    let mut t2 = track::create(Backend::Uffd)?;
    t2.register(&other)?;
    let mut rng = 0x1234_5678u64;
    let names = [
        "scan (PAGEMAP_SCAN + re-protect)",
        "mprotect READ whole region",
        "mprotect READ|WRITE whole region",
        "mprotect READ per run",
        "mprotect READ|WRITE per run",
        "UFFDIO_WRITEPROTECT per run",
        "memcpy of the dirty pages (floor)",
    ];
    let mut warm = vec![2u8; size];
    let mut times: Vec<Vec<u128>> = vec![Vec::new(); names.len()];
    let mut runs_seen = 0;
    for i in 0..300u32 {
        let mut sets: Vec<usize> = (0..pages.div_ceil(40))
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng as usize) % (pages / 4)
            })
            .collect();
        sets.sort_unstable();
        sets.dedup();
        for &s in &sets {
            for p in 0..4 {
                r.as_bytes_mut()[(s * 4 + p) * PAGE] = i as u8;
            }
        }
        // The UFFDIO_WRITEPROTECT timing's pages, forgotten (outside every timing).
        let _ = t2.collect_dirty()?;
        let mut lap = |k: usize, f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
            let a = Instant::now();
            let res = f();
            times[k].push(a.elapsed().as_nanos());
            res
        };
        let base = r.base();
        lap(0, &mut || {
            runs_seen = t.collect_dirty()?.regions[0].runs.as_slice().len();
            Ok(())
        })?;
        lap(1, &mut || Ok(protect(base, size, libc::PROT_READ)?))?;
        lap(2, &mut || {
            Ok(protect(base, size, libc::PROT_READ | libc::PROT_WRITE)?)
        })?;
        lap(3, &mut || {
            for &s in &sets {
                protect(base + s * 4 * PAGE, 4 * PAGE, libc::PROT_READ)?;
            }
            Ok(())
        })?;
        lap(4, &mut || {
            for &s in &sets {
                protect(
                    base + s * 4 * PAGE,
                    4 * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                )?;
            }
            Ok(())
        })?;
        // mark_written is one UFFDIO_WRITEPROTECT of the range (plus bookkeeping).
        lap(5, &mut || {
            for &s in &sets {
                t2.mark_written(other.id(), s * 4, 4)?;
            }
            Ok(())
        })?;
        let src = r.as_bytes();
        lap(6, &mut || {
            for (j, &s) in sets.iter().enumerate() {
                // In pieces: `warm` is a `Vec`, at whatever distance from the region
                // `malloc` put it, and one `memcpy` can be 20x slower at some of them
                // (`hslib::memcopy`); a checkpoint copies into page-aligned staging.
                hslib::memcopy::copy_bytes(
                    &mut warm[j * 4 * PAGE..(j + 1) * 4 * PAGE],
                    &src[s * 4 * PAGE..(s + 1) * 4 * PAGE],
                );
            }
            std::hint::black_box(&mut warm);
            Ok(())
        })?;
    }
    println!(
        "{mib} MiB region, {runs_seen} dirty runs of 4 pages (10%), 300 rounds, back to back:"
    );
    for (n, mut v) in names.iter().zip(times) {
        v.sort_unstable();
        let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize] as f64 / 1e3;
        println!(
            "  {n:<34} p50 {:>7.1} us  p10 {:>7.1}  p90 {:>7.1}",
            q(0.5),
            q(0.1),
            q(0.9)
        );
    }
    Ok(())
}
