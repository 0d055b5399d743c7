//! The frame layer on its own: header and body encodings round trip, every flipped bit is
//! caught, unknown kinds, versions and oversize lengths are refused with errors naming the
//! value, metadata records survive postcard, and the writer numbers and splits frames.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use hslib::PAGE_SIZE;
use hslib::meta::{FdKind, FdRecord, FileRecord, SignalFlags, SignalRecord};
use hslib::wire::{
    ACK_LEN, Ack, Acked, Body, COMMIT_LEN, CheckpointWriter, Commit, Farewell, FrameHeader,
    FrameKind, HEADER_LEN, Hello, MAX_BODY_LEN, MAX_PAGES_PER_FRAME, Metadata, RegionInfo, VERSION,
    WireError, encode_record, page_frames, read_frame, write_frame,
};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Hello),
        Just(FrameKind::Pages),
        Just(FrameKind::Metadata),
        Just(FrameKind::Commit),
        Just(FrameKind::Ack),
        Just(FrameKind::Goodbye),
        Just(FrameKind::Heartbeat),
    ]
}

prop_compose! {
    // The wire carries `hslib::meta::Metadata`; its fd and signal records have their own
    // round-trip properties in tests/meta.rs. Here: a record of each shape crosses a frame.
    fn metadata()(
        regions in prop::collection::vec(any::<(u32, u64, u64)>(), 0..5),
        files in prop::collection::vec(
            (prop::collection::vec(1u8..=255, 1..60), any::<i32>(), any::<u64>(), any::<bool>()),
            0..4,
        ),
        signals in prop::collection::vec((1i32..64, "[a-z_]{1,20}"), 0..4),
        worker in prop::option::of("[a-zA-Z0-9_:]{0,30}"),
        blobs in prop::collection::btree_map("[a-z]{1,12}", prop::collection::vec(any::<u8>(), 0..300), 0..5),
    ) -> Metadata {
        Metadata {
            regions: regions.into_iter().map(|(id, base, len)| RegionInfo { id, base, len }).collect(),
            // Distinct, non-negative fd numbers (the record's rule); non-UTF-8 paths included.
            fds: files.into_iter().enumerate().map(|(i, (path, flags, offset, refresh))| FdRecord {
                fd: i as i32 + 3,
                name: format!("file{i}"),
                cloexec: refresh,
                kind: FdKind::File(FileRecord {
                    path: PathBuf::from(std::ffi::OsString::from_vec(path)), flags, offset, refresh,
                }),
            }).collect(),
            signals: signals.into_iter().map(|(signal, handler)| SignalRecord {
                signal, handler, flags: SignalFlags::default(), mask: Vec::new(),
            }).collect(),
            worker,
            blobs: blobs.into_iter().collect::<BTreeMap<_, _>>(),
        }
    }
}

/// A metadata body that postcard decodes but that breaks the record's rules (two records for
/// one fd number) is refused by the frame reader, naming the metadata as the reason.
#[test]
fn a_metadata_frame_breaking_the_records_rules_is_refused() {
    let file = |name: &str| FdRecord {
        fd: 7,
        name: name.to_owned(),
        cloexec: false,
        kind: FdKind::File(FileRecord {
            path: PathBuf::from("/tmp/x"),
            flags: 0,
            offset: 0,
            refresh: false,
        }),
    };
    let md = Metadata {
        fds: vec![file("a"), file("b")],
        ..Metadata::default()
    };
    let body = encode_record(FrameKind::Metadata, &md).expect("encode");
    let mut w = Vec::new();
    write_frame(&mut w, FrameKind::Metadata, 1, 2, &[&body]).expect("write");
    let err = read_frame(&mut &w[..]).expect_err("a duplicate fd number is refused");
    assert!(matches!(err, WireError::Metadata { .. }), "{err}");
}

/// A heartbeat is an empty frame numbered in its session like any other, written only
/// between checkpoints; a heartbeat with a body is refused.
#[test]
fn a_heartbeat_is_an_empty_numbered_frame_between_checkpoints() {
    let mut w = CheckpointWriter::new(Vec::new(), 4, 1);
    assert!(
        matches!(w.heartbeat(), Err(WireError::Misuse { .. })),
        "before the hello"
    );
    w.hello(&Hello {
        page_size: 4096,
        regions: Vec::new(),
    })
    .expect("hello");
    w.heartbeat().expect("a heartbeat after the hello");
    w.begin(true).expect("begin");
    assert!(
        matches!(w.heartbeat(), Err(WireError::Misuse { .. })),
        "inside a checkpoint"
    );
    let bytes = w.into_inner();
    let mut r = &bytes[..];
    let hello = read_frame(&mut r).expect("read").expect("the hello");
    assert_eq!(hello.header.kind, FrameKind::Hello);
    let beat = read_frame(&mut r).expect("read").expect("the heartbeat");
    assert_eq!(beat.body, Body::Heartbeat);
    assert_eq!(
        (
            beat.header.kind,
            beat.header.epoch,
            beat.header.sequence,
            beat.header.length
        ),
        (FrameKind::Heartbeat, 4, 1, 0)
    );
    assert!(read_frame(&mut r).expect("read").is_none(), "nothing else");
    let mut w = Vec::new();
    write_frame(&mut w, FrameKind::Heartbeat, 4, 1, &[b"x"]).expect("write");
    let err = read_frame(&mut &w[..]).expect_err("a heartbeat with a body is refused");
    assert!(
        matches!(err, WireError::BodyLength { want: 0, .. }),
        "{err}"
    );
}

/// A goodbye says why: a finished primary's is the empty frame every goodbye was before
/// reasons (old logs read as they did), a dropped spare's carries one byte; anything else is
/// refused.
#[test]
fn a_goodbye_says_whether_the_primary_finished_or_dropped_its_spare() {
    for (why, length) in [(Farewell::Finished, 0), (Farewell::Dropped, 1)] {
        let mut w = CheckpointWriter::new(Vec::new(), 4, 1);
        w.hello(&Hello {
            page_size: 4096,
            regions: Vec::new(),
        })
        .expect("hello");
        w.goodbye(why).expect("goodbye");
        let bytes = w.into_inner();
        let mut r = &bytes[..];
        read_frame(&mut r).expect("read").expect("the hello");
        let bye = read_frame(&mut r).expect("read").expect("the goodbye");
        assert_eq!(bye.body, Body::Goodbye(why));
        assert_eq!(
            (bye.header.kind, bye.header.length),
            (FrameKind::Goodbye, length)
        );
    }
    for body in [&[2u8][..], &[1, 1]] {
        let mut w = Vec::new();
        write_frame(&mut w, FrameKind::Goodbye, 4, 1, &[body]).expect("write");
        let err = read_frame(&mut &w[..]).expect_err("an unknown farewell is refused");
        assert!(matches!(err, WireError::BodyLength { .. }), "{err}");
    }
}

proptest! {
    #[test]
    fn header_round_trips_every_field(
        k in kind(), epoch: u64, seq: u64, len in 0..=MAX_BODY_LEN, crc: u32,
    ) {
        let h = FrameHeader::new(k, epoch, seq, len, crc);
        let mut buf = [0u8; HEADER_LEN];
        h.encode_into(&mut buf);
        prop_assert_eq!(FrameHeader::decode(&buf).expect("decode"), h);
        prop_assert_eq!(&buf[..4], b"HSCP");
        prop_assert_eq!(&buf[4..6], &VERSION.to_le_bytes());
        prop_assert_eq!(&buf[8..16], &epoch.to_le_bytes());
        prop_assert_eq!(&buf[16..24], &seq.to_le_bytes());
        prop_assert_eq!(&buf[24..28], &len.to_le_bytes());
    }

    #[test]
    fn metadata_records_round_trip_through_a_frame(md in metadata()) {
        let mut w = Vec::new();
        let body = encode_record(FrameKind::Metadata, &md).expect("encode");
        write_frame(&mut w, FrameKind::Metadata, 1, 2, &[&body]).expect("write");
        let f = read_frame(&mut &w[..]).expect("read").expect("a frame");
        prop_assert_eq!(f.body, Body::Metadata(Box::new(md)));
    }

    #[test]
    fn commit_and_ack_bodies_round_trip(cp: u64, frames: u32, full: bool, pages: u64, crc: u32) {
        let c = Commit { checkpoint: cp, frames, full, pages, bodies_crc: crc };
        prop_assert_eq!(Commit::decode(&c.encode()).expect("commit"), c);
        for acked in [Acked::Hello, Acked::Commit] {
            let a = Ack { acked, checkpoint: cp };
            prop_assert_eq!(Ack::decode(&a.encode()).expect("ack"), a);
        }
    }

    /// Any single flipped bit in a frame (header or body) is an error, never a frame.
    #[test]
    fn every_flipped_bit_in_a_frame_is_caught(bit in 0usize..(HEADER_LEN + 16 + PAGE_SIZE) * 8) {
        let mut w = Vec::new();
        let sub = hslib::wire::PageHeader { region: 1, first_page: 2, pages: 1 }.encode();
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
        write_frame(&mut w, FrameKind::Pages, 3, 4, &[&sub, &data]).expect("write");
        w[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(read_frame(&mut &w[..]).is_err());
    }
}

fn header_with(edit: impl FnOnce(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
    let mut h = FrameHeader::new(FrameKind::Commit, 1, 1, COMMIT_LEN as u32, 0).encode();
    edit(&mut h);
    let crc = crc32c::crc32c(&h[..36]);
    h[36..].copy_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn unknown_kinds_are_refused_naming_the_kind() {
    for k in [0u16, 8, 0x1234, u16::MAX] {
        let h = header_with(|h| h[6..8].copy_from_slice(&k.to_le_bytes()));
        match FrameHeader::decode(&h) {
            Err(e @ WireError::UnknownKind { kind }) => {
                assert_eq!(kind, k);
                assert!(e.to_string().contains(&k.to_string()), "{e}");
            }
            other => panic!("kind {k}: {other:?}"),
        }
    }
}

#[test]
fn other_versions_are_refused_naming_both_versions() {
    for v in [0u16, 1, 3, u16::MAX] {
        let h = header_with(|h| h[4..6].copy_from_slice(&v.to_le_bytes()));
        match FrameHeader::decode(&h) {
            Err(e @ WireError::UnsupportedVersion { found, supported }) => {
                assert_eq!((found, supported), (v, VERSION));
                assert!(e.to_string().contains(&format!("version {v}")), "{e}");
            }
            other => panic!("version {v}: {other:?}"),
        }
    }
}

#[test]
fn wrong_magic_is_refused_before_anything_else() {
    let h = header_with(|h| h[..4].copy_from_slice(b"GET "));
    assert!(matches!(
        FrameHeader::decode(&h),
        Err(WireError::BadMagic { found }) if &found == b"GET "
    ));
}

#[test]
fn a_nonzero_reserved_field_is_refused() {
    let h = header_with(|h| h[32] = 1);
    assert!(matches!(
        FrameHeader::decode(&h),
        Err(WireError::Reserved { value: 1, .. })
    ));
}

#[test]
fn oversize_lengths_are_refused_and_the_limit_is_accepted() {
    for len in [MAX_BODY_LEN + 1, u32::MAX] {
        let h = header_with(|h| h[24..28].copy_from_slice(&len.to_le_bytes()));
        assert!(matches!(
            FrameHeader::decode(&h),
            Err(WireError::TooLong { length, .. }) if length == u64::from(len)
        ));
    }
    let h = header_with(|h| h[24..28].copy_from_slice(&MAX_BODY_LEN.to_le_bytes()));
    assert!(FrameHeader::decode(&h).is_ok());
    // The writer refuses to produce one, too.
    let big = vec![0u8; MAX_BODY_LEN as usize + 1];
    let mut sink = Vec::new();
    assert!(matches!(
        write_frame(&mut sink, FrameKind::Metadata, 0, 0, &[&big]),
        Err(WireError::TooLong { .. })
    ));
    assert!(sink.is_empty(), "nothing written for a refused frame");
}

#[test]
fn fixed_bodies_of_the_wrong_length_are_refused() {
    for (k, want) in [(FrameKind::Commit, COMMIT_LEN), (FrameKind::Ack, ACK_LEN)] {
        let mut w = Vec::new();
        write_frame(&mut w, k, 0, 0, &[&vec![0u8; want + 1]]).expect("write");
        assert!(matches!(
            read_frame(&mut &w[..]),
            Err(WireError::BodyLength { length, .. }) if length == want + 1
        ));
    }
    // A page frame whose bytes do not match its page count.
    let sub = hslib::wire::PageHeader {
        region: 1,
        first_page: 0,
        pages: 2,
    }
    .encode();
    let mut w = Vec::new();
    write_frame(&mut w, FrameKind::Pages, 0, 0, &[&sub, &[0u8; PAGE_SIZE]]).expect("write");
    assert!(matches!(
        read_frame(&mut &w[..]),
        Err(WireError::PageLength {
            pages: 2,
            data: PAGE_SIZE,
            ..
        })
    ));
}

#[test]
fn a_stream_cut_inside_a_frame_is_truncated_and_between_frames_is_the_end() {
    let mut w = Vec::new();
    write_frame(
        &mut w,
        FrameKind::Ack,
        0,
        0,
        &[&Ack {
            acked: Acked::Hello,
            checkpoint: 0,
        }
        .encode()],
    )
    .expect("write");
    assert!(read_frame(&mut &w[..0]).expect("empty").is_none());
    for cut in 1..w.len() {
        assert!(
            matches!(read_frame(&mut &w[..cut]), Err(WireError::Truncated { .. })),
            "cut {cut}"
        );
    }
}

fn hello() -> Hello {
    Hello {
        page_size: PAGE_SIZE as u32,
        regions: vec![RegionInfo {
            id: 1,
            base: 1 << 44,
            len: 1024 * PAGE_SIZE as u64,
        }],
    }
}

#[test]
fn the_writer_numbers_frames_and_splits_long_runs() {
    let mut w = CheckpointWriter::new(Vec::new(), 9, 4);
    w.hello(&hello()).expect("hello");
    let run = vec![7u8; 600 * PAGE_SIZE];
    let c = w
        .checkpoint(true, [(1, 10, run.as_slice())], &Metadata::default())
        .expect("checkpoint");
    assert_eq!(page_frames(600), 3);
    assert_eq!((c.checkpoint, c.frames, c.pages, c.full), (4, 4, 600, true));
    let bytes = w.into_inner();
    let mut cur = Cursor::new(&bytes);
    let mut seqs = Vec::new();
    let mut runs = Vec::new();
    while let Some(f) = read_frame(&mut cur).expect("frame") {
        assert_eq!(f.header.epoch, 9);
        seqs.push(f.header.sequence);
        if let Body::Pages(p) = f.body {
            assert!(p.header.pages <= MAX_PAGES_PER_FRAME);
            runs.push((p.header.first_page, p.header.pages));
        }
    }
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    assert_eq!(runs, [(10, 256), (266, 256), (522, 88)]);
}

#[test]
fn the_writer_refuses_misuse() {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    assert!(matches!(w.begin(true), Err(WireError::Misuse { .. })));
    w.hello(&hello()).expect("hello");
    assert!(matches!(w.hello(&hello()), Err(WireError::Misuse { .. })));
    assert!(matches!(
        w.pages(1, 0, &[0u8; PAGE_SIZE]),
        Err(WireError::Misuse { .. })
    ));
    w.begin(false).expect("begin");
    assert!(matches!(w.begin(false), Err(WireError::Misuse { .. })));
    assert!(matches!(
        w.pages(1, 0, &[0u8; 100]),
        Err(WireError::UnalignedPages { len: 100, .. })
    ));
    assert!(matches!(w.commit(), Err(WireError::Misuse { .. })));
    w.metadata(&Metadata::default()).expect("metadata");
    assert!(matches!(
        w.metadata(&Metadata::default()),
        Err(WireError::Misuse { .. })
    ));
    w.commit().expect("commit");
}

/// A writer whose output fails after `left` bytes.
struct Failing {
    left: usize,
}

impl std::io::Write for Failing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_breaks_the_session_for_good() {
    let mut w = CheckpointWriter::new(Failing { left: 100 }, 1, 1);
    w.hello(&hello()).expect("hello fits");
    w.begin(true).expect("begin");
    assert!(matches!(
        w.pages(1, 0, &[0u8; PAGE_SIZE]),
        Err(WireError::Io(_))
    ));
    w.get_mut().left = usize::MAX;
    assert!(matches!(
        w.metadata(&Metadata::default()),
        Err(WireError::Broken)
    ));
}

#[test]
fn the_parent_state_after_a_child_checkpoint_matches_the_child() {
    // A fork child finishes a checkpoint with a copy of the writer; the parent advances its
    // own state by the frame count and must land where the child did.
    let mut parent = CheckpointWriter::new(Vec::new(), 2, 1);
    parent.hello(&hello()).expect("hello");
    parent.begin(false).expect("begin");
    let mut child = CheckpointWriter::with_state(Vec::new(), parent.state());
    let run = vec![1u8; 300 * PAGE_SIZE];
    child.pages(1, 0, &run).expect("pages");
    child.metadata(&Metadata::default()).expect("metadata");
    child.commit().expect("commit");
    let mut st = parent.state();
    st.skip_checkpoint(page_frames(300) + 1);
    parent.set_state(st);
    assert_eq!(parent.state(), child.state());
    assert!(!parent.state().is_open());
}
