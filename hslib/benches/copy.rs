//! Copying page data at a distance that `memcpy`'s `rep movsb` takes badly
//! ([`hslib::memcopy`]).
//!
//! - `<len>/<how>/<d>`: `len` bytes from a page-aligned source to a destination `d` bytes
//!   past a page boundary, by `copy_from_slice` (one `memcpy`) or by
//!   [`copy_bytes`](hslib::memcopy::copy_bytes) (2 KiB pieces). Distance 0 is the floor; on
//!   the project's AMD EPYC VMs, 16 costs `copy_from_slice` ~20x that and `copy_bytes`
//!   nothing.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hslib::memcopy::copy_bytes;

const PAGE: usize = 4096;

fn copies(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy");
    for len in [PAGE, 104 * PAGE] {
        // Room for the source on its own pages, then the destination at every distance.
        let mut buf = vec![0u8; 2 * len + 3 * PAGE];
        let base = buf.as_ptr() as usize;
        let src = base.next_multiple_of(PAGE) - base;
        let dst = src + len.next_multiple_of(PAGE) + PAGE;
        buf[src..src + len].fill(7);
        g.throughput(Throughput::Bytes(len as u64));
        for distance in [0, 16, 40] {
            let (head, tail) = buf.split_at_mut(dst);
            let from = &head[src..src + len];
            let to = &mut tail[distance..distance + len];
            g.bench_with_input(
                BenchmarkId::new(format!("{len}/copy_from_slice"), distance),
                &distance,
                |b, _| b.iter(|| black_box(&mut *to).copy_from_slice(black_box(from))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{len}/copy_bytes"), distance),
                &distance,
                |b, _| b.iter(|| copy_bytes(black_box(&mut *to), black_box(from))),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, copies);
criterion_main!(benches);
