//! Checkpoint stream costs (throughput in bytes of page data).
//!
//! - `write/null/<size>`: frame a checkpoint of `size` bytes of pages (crc32c + headers) into
//!   the null endpoint: the stream's own overhead.
//! - `apply/<size>`: a replica reads, validates, stages and commits that checkpoint from
//!   memory.
//! - `unix/<size>`: writer -> Unix socket -> replica in another thread, until the commit ack.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::thread;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hslib::PAGE_SIZE;
use hslib::replica::Replica;
use hslib::transport::NullEndpoint;
use hslib::wire::{AckReader, Acked, CheckpointWriter, Hello, Metadata, RegionInfo};

const MIB: usize = 1 << 20;

fn hello(len: usize) -> Hello {
    Hello {
        page_size: PAGE_SIZE as u32,
        regions: vec![RegionInfo {
            id: 1,
            base: 1 << 44,
            len: len as u64,
        }],
    }
}

fn metadata(len: usize) -> Metadata {
    Metadata {
        regions: hello(len).regions,
        ..Metadata::default()
    }
}

fn bench(c: &mut Criterion) {
    for size in [MIB, 16 * MIB] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let md = metadata(size);
        let mut g = c.benchmark_group("stream");
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(20);

        g.bench_function(format!("write/null/{}MiB", size / MIB), |b| {
            let mut w = CheckpointWriter::new(NullEndpoint::new(), 1, 1);
            w.hello(&hello(size)).expect("hello");
            b.iter(|| {
                w.checkpoint(true, [(1, 0, data.as_slice())], &md)
                    .expect("checkpoint")
            });
        });

        let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
        w.hello(&hello(size)).expect("hello");
        w.checkpoint(true, [(1, 0, data.as_slice())], &md)
            .expect("checkpoint");
        let bytes = w.into_inner();
        g.bench_function(format!("apply/{}MiB", size / MIB), |b| {
            b.iter(|| {
                let mut r = Replica::default();
                let end = r.replay(&mut &bytes[..]);
                black_box(end.commits)
            });
        });

        g.bench_function(format!("unix/{}MiB", size / MIB), |b| {
            let (a, mut s) = UnixStream::pair().expect("socketpair");
            let spare = thread::spawn(move || {
                let mut r = Replica::default();
                r.serve(&mut s).commits
            });
            let mut w = CheckpointWriter::new(a, 1, 1);
            w.hello(&hello(size)).expect("hello");
            let mut acks = AckReader::new(1);
            let mut rd = w.get_ref().try_clone().expect("clone");
            acks.expect(&mut rd, Acked::Hello, None).expect("hello ack");
            b.iter(|| {
                let c = w
                    .checkpoint(true, [(1, 0, data.as_slice())], &md)
                    .expect("checkpoint");
                acks.expect(&mut rd, Acked::Commit, Some(c.checkpoint))
                    .expect("ack")
            });
            drop(w);
            drop(rd);
            black_box(spare.join().expect("spare"));
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
