//! A spare's steady checkpoint does not decode a metadata record the same, byte for byte,
//! as the one it committed last (a game sends the same record at every move). Checked with
//! a counting global allocator in a test binary of its own.

mod counting;
mod streamutil;

use hslib::PAGE_SIZE;
use hslib::replica::Replica;
use hslib::wire::{CheckpointWriter, FrameKind, Metadata, encode_record};
use streamutil::{hello, table};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

use counting::allocations;

/// A record whose decoding allocates a good deal: a worker name, blobs.
fn record() -> Metadata {
    Metadata {
        worker: Some("game".to_owned()),
        regions: table(),
        blobs: (0..8)
            .map(|i| (format!("blob-{i}"), vec![i as u8; 16]))
            .collect(),
        ..Metadata::default()
    }
}

/// A stream of one session with `n` one-page checkpoints, all with [`record`].
fn stream(n: usize) -> Vec<u8> {
    stream_of_runs(n, 1)
}

/// A stream of one session with `n` checkpoints of `runs` separate pages each (one page
/// frame per page), all with [`record`].
fn stream_of_runs(n: usize, runs: u64) -> Vec<u8> {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&hello()).expect("hello");
    for i in 0..n {
        let page = [i as u8; PAGE_SIZE];
        let pages: Vec<(u32, u64, &[u8])> = (0..runs).map(|r| (7, 2 * r, &page[..])).collect();
        w.checkpoint(i == 0, pages, &record()).expect("checkpoint");
    }
    w.into_inner()
}

/// Allocations per checkpoint of a steady stream of `runs` page frames per checkpoint.
fn per_checkpoint(runs: u64) -> usize {
    let replay = |bytes: &[u8]| {
        let mut r = Replica::default();
        allocations(|| {
            let end = r.replay(&mut &bytes[..]);
            assert!(end.error.is_none(), "{:?}", end.error);
        })
    };
    (replay(&stream_of_runs(12, runs)) - replay(&stream_of_runs(2, runs))) / 10
}

#[test]
fn page_frames_are_read_into_the_buffers_of_those_applied_before() {
    let (one, three) = (per_checkpoint(1), per_checkpoint(3));
    assert_eq!(
        one, three,
        "a checkpoint of one page frame allocates {one} times, of three {three}"
    );
}

#[test]
fn a_steady_checkpoint_does_not_decode_an_unchanged_metadata_record() {
    let bytes = encode_record(FrameKind::Metadata, &record()).expect("encode");
    let decoding = allocations(|| {
        Metadata::decode(&bytes).expect("decode");
    });
    assert!(
        decoding >= 10,
        "decoding the record allocates {decoding} times"
    );

    let (short, long) = (stream(2), stream(12));
    let replay = |bytes: &[u8]| {
        let mut r = Replica::default();
        let n = allocations(|| {
            let end = r.replay(&mut &bytes[..]);
            assert!(end.error.is_none(), "{:?}", end.error);
        });
        assert_eq!(r.metadata(), Some(&record()));
        n
    };
    let per_checkpoint = (replay(&long) - replay(&short)) / 10;
    assert!(
        per_checkpoint < decoding,
        "a steady checkpoint allocates {per_checkpoint} times, decoding the record {decoding}"
    );
}
