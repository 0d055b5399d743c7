//! The replica's rules one at a time: staging until the commit, what a commit must match,
//! epochs and sequences, full versus incremental checkpoints, and what it keeps for callers.

mod streamutil;

use hslib::PAGE_SIZE;
use hslib::replica::{Image, Replica, ReplicaConfig, ReplicaError, ReplicaState};
use hslib::wire::{
    Acked, Body, CheckpointWriter, Commit, Farewell, Frame, FrameHeader, FrameKind, Hello,
    Metadata, RegionInfo, read_frame,
};
use streamutil::{hello, script, table};

/// The frames a writer produced.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut r = bytes;
    let mut out = Vec::new();
    while let Some(f) = read_frame(&mut r).expect("valid frames") {
        out.push(f);
    }
    out
}

fn metadata() -> Metadata {
    Metadata {
        regions: table(),
        ..Metadata::default()
    }
}

/// A session under `epoch` with one checkpoint writing `fill` over page 1 of region 7.
fn session(epoch: u64, full: bool, fill: u8) -> Vec<Frame> {
    numbered_session(epoch, 1, full, fill)
}

/// [`session`] with a checkpoint numbered `checkpoint`.
fn numbered_session(epoch: u64, checkpoint: u64, full: bool, fill: u8) -> Vec<Frame> {
    let mut w = CheckpointWriter::new(Vec::new(), epoch, checkpoint);
    w.hello(&hello()).expect("hello");
    w.checkpoint(full, [(7, 1, &[fill; PAGE_SIZE][..])], &metadata())
        .expect("checkpoint");
    frames(&w.into_inner())
}

fn feed(r: &mut Replica, frames: Vec<Frame>) -> Result<(), ReplicaError> {
    for f in frames {
        r.accept(f)?;
    }
    Ok(())
}

fn page(r: &Replica, region: u32, page: usize) -> Vec<u8> {
    r.image().expect("image").region(region).expect("region")[page * PAGE_SIZE..][..PAGE_SIZE]
        .to_vec()
}

#[test]
fn pages_are_staged_and_applied_only_by_the_commit() {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&hello()).expect("hello");
    w.checkpoint(true, [(7, 1, &[0xaa; PAGE_SIZE][..])], &metadata())
        .expect("first");
    let first_end = w.get_ref().len();
    w.checkpoint(
        false,
        [
            (7, 1, &[0xbb; PAGE_SIZE][..]),
            (40, 0, &[0xcc; 300 * PAGE_SIZE][..]),
        ],
        &metadata(),
    )
    .expect("second");
    let bytes = w.into_inner();
    let mut r = Replica::default();
    feed(&mut r, frames(&bytes[..first_end])).expect("first checkpoint");
    let before = r.digest();
    let mut second = frames(&bytes[first_end..]);
    let commit = second.pop().expect("commit");
    assert_eq!(
        second.len(),
        4,
        "region 7's page frame, region 40's two (256 + 44 pages), the metadata"
    );
    for f in second {
        assert_eq!(r.accept(f).expect("staged"), None);
        assert_eq!(r.state(), ReplicaState::Staging);
        assert_eq!(r.digest(), before, "a staged frame changed the image");
    }
    let ack = r.accept(commit).expect("commit").expect("ack");
    assert_eq!((ack.acked, ack.checkpoint), (Acked::Commit, 2));
    assert_eq!(page(&r, 7, 1), vec![0xbb; PAGE_SIZE]);
    assert_eq!(page(&r, 40, 299), vec![0xcc; PAGE_SIZE]);
    assert_eq!(r.state(), ReplicaState::Ready);
}

#[test]
fn end_of_stream_drops_the_staged_checkpoint() {
    let mut r = Replica::default();
    let mut fs = session(1, true, 0xaa);
    fs.pop(); // no commit
    feed(&mut r, fs).expect("staged");
    assert_eq!(r.state(), ReplicaState::Staging);
    r.end_session();
    assert_eq!(r.state(), ReplicaState::Idle);
    assert_eq!(r.digest(), None);
    // A new session starts clean: its commit must not count the dropped frames.
    feed(&mut r, session(1, true, 0xcc)).expect("new session");
    assert_eq!(page(&r, 7, 1), vec![0xcc; PAGE_SIZE]);
}

#[test]
fn a_full_checkpoint_zeroes_the_pages_it_does_not_send() {
    let mut r = Replica::default();
    feed(&mut r, session(1, true, 0xaa)).expect("first");
    let mut w = CheckpointWriter::new(Vec::new(), 1, 5);
    w.hello(&hello()).expect("hello");
    w.checkpoint(true, [(2, 0, &[1u8; PAGE_SIZE][..])], &metadata())
        .expect("checkpoint");
    feed(&mut r, frames(&w.into_inner())).expect("full");
    assert_eq!(page(&r, 7, 1), vec![0; PAGE_SIZE]);
    assert_eq!(page(&r, 2, 0), vec![1; PAGE_SIZE]);
}

#[test]
fn an_incremental_checkpoint_patches_the_previous_image() {
    let mut r = Replica::default();
    feed(&mut r, session(1, true, 0xaa)).expect("first");
    let mut w = CheckpointWriter::new(Vec::new(), 1, 2);
    w.hello(&hello()).expect("hello");
    w.checkpoint(false, [(7, 3, &[5u8; PAGE_SIZE][..])], &metadata())
        .expect("checkpoint");
    feed(&mut r, frames(&w.into_inner())).expect("incremental");
    assert_eq!(page(&r, 7, 1), vec![0xaa; PAGE_SIZE]);
    assert_eq!(page(&r, 7, 3), vec![5; PAGE_SIZE]);
}

#[test]
fn an_incremental_checkpoint_without_a_base_image_is_refused() {
    let mut r = Replica::default();
    let e = feed(&mut r, session(1, false, 1)).expect_err("no base");
    assert!(matches!(e, ReplicaError::NeedFull { checkpoint: 1 }), "{e}");
    assert_eq!(r.digest(), None);
    assert_eq!(r.state(), ReplicaState::Rejected);
}

#[test]
fn an_incremental_checkpoint_after_a_region_table_change_is_refused() {
    let mut r = Replica::default();
    feed(&mut r, session(1, true, 1)).expect("first");
    let before = r.digest();
    let mut regions = table();
    regions.push(RegionInfo {
        id: 99,
        base: 0x3000_0000_0000,
        len: PAGE_SIZE as u64,
    });
    let h = Hello {
        page_size: PAGE_SIZE as u32,
        regions: regions.clone(),
    };
    let md = Metadata {
        regions,
        ..Metadata::default()
    };
    let mut w = CheckpointWriter::new(Vec::new(), 1, 2);
    w.hello(&h).expect("hello");
    w.checkpoint(false, [(99, 0, &[1u8; PAGE_SIZE][..])], &md)
        .expect("checkpoint");
    let e = feed(&mut r, frames(&w.into_inner())).expect_err("needs full");
    assert!(matches!(e, ReplicaError::NeedFull { .. }), "{e}");
    assert_eq!(r.digest(), before);
}

#[test]
fn stale_epochs_are_refused_and_the_image_kept() {
    let mut r = Replica::default();
    feed(&mut r, session(7, true, 1)).expect("epoch 7");
    let before = r.digest();
    let e = feed(&mut r, session(6, true, 2)).expect_err("epoch 6");
    assert!(
        matches!(
            e,
            ReplicaError::StaleEpoch {
                found: 6,
                highest: 7
            }
        ),
        "{e}"
    );
    assert_eq!(r.digest(), before);
    // The same epoch (a reconnect) and a newer one are accepted.
    feed(&mut r, numbered_session(7, 2, true, 3)).expect("epoch 7 again");
    feed(&mut r, session(8, true, 4)).expect("epoch 8");
    assert_eq!(r.highest_epoch(), Some(8));
}

#[test]
fn a_frame_of_another_epoch_inside_a_session_is_refused() {
    let mut r = Replica::default();
    let mut fs = session(3, true, 1);
    fs[1].header.epoch = 4;
    let e = feed(&mut r, fs).expect_err("epoch change");
    assert!(
        matches!(
            e,
            ReplicaError::EpochChanged {
                found: 4,
                session: 3
            }
        ),
        "{e}"
    );
    assert_eq!(r.digest(), None);
}

#[test]
fn out_of_order_sequences_are_refused() {
    for (i, j) in [(1, 2), (2, 3), (1, 3)] {
        let mut r = Replica::default();
        let mut fs = session(1, true, 1);
        fs.swap(i, j);
        let e = feed(&mut r, fs).expect_err("reordered");
        assert!(matches!(e, ReplicaError::OutOfOrder { .. }), "{e}");
        assert_eq!(r.digest(), None);
    }
    // A repeated frame.
    let mut r = Replica::default();
    let mut fs = session(1, true, 1);
    let dup = fs[1].clone();
    fs.insert(2, dup);
    let e = feed(&mut r, fs).expect_err("repeated");
    assert!(
        matches!(e, ReplicaError::OutOfOrder { found: 1, want: 2 }),
        "{e}"
    );
}

#[test]
fn frames_before_a_hello_are_refused() {
    let mut r = Replica::default();
    let mut fs = session(1, true, 1);
    fs.remove(0);
    let e = feed(&mut r, fs).expect_err("no hello");
    assert!(
        matches!(
            e,
            ReplicaError::NoSession {
                kind: FrameKind::Pages
            }
        ),
        "{e}"
    );
}

/// A commit frame replacing the last one of `session(1, true, 1)`.
fn with_commit(edit: impl FnOnce(&mut Commit)) -> Result<(), ReplicaError> {
    let mut fs = session(1, true, 1);
    let last = fs.last_mut().expect("commit");
    let Body::Commit(c) = &mut last.body else {
        panic!("last frame is not a commit");
    };
    edit(c);
    let mut r = Replica::default();
    let res = feed(&mut r, fs);
    if res.is_err() {
        assert_eq!(r.digest(), None, "a refused commit changed the image");
    }
    res
}

#[test]
fn a_commit_that_does_not_match_the_staged_frames_is_refused() {
    let e = with_commit(|c| c.frames += 1).expect_err("frames");
    assert!(
        matches!(
            e,
            ReplicaError::CommitMismatch {
                field: "frame count",
                ..
            }
        ),
        "{e}"
    );
    let e = with_commit(|c| c.pages = 0).expect_err("pages");
    assert!(
        matches!(
            e,
            ReplicaError::CommitMismatch {
                field: "page count",
                ..
            }
        ),
        "{e}"
    );
    let e = with_commit(|c| c.bodies_crc ^= 1).expect_err("crc");
    assert!(
        matches!(
            e,
            ReplicaError::CommitMismatch {
                field: "bodies crc32c",
                ..
            }
        ),
        "{e}"
    );
    with_commit(|_| {}).expect("the unedited commit is accepted");
}

#[test]
fn a_commit_without_metadata_or_with_two_is_refused() {
    // Hello, pages, commit: the commit describes the page frame exactly, but there is no
    // metadata record.
    let mut fs = session(1, true, 1);
    fs.remove(2);
    let Body::Pages(p) = &fs[1].body else {
        panic!("frame 1 is not a page frame");
    };
    let page_crc = crc32c::crc32c(p.body());
    fs[2].header.sequence = 2;
    let Body::Commit(c) = &mut fs[2].body else {
        panic!("frame 2 is not the commit");
    };
    c.frames = 1;
    c.bodies_crc = page_crc;
    let mut r = Replica::default();
    let e = feed(&mut r, fs).expect_err("no metadata");
    assert!(
        matches!(e, ReplicaError::MissingMetadata { checkpoint: 1 }),
        "{e}"
    );
    let mut fs = session(1, true, 1);
    let md = fs[2].clone();
    fs.insert(3, md);
    for (i, f) in fs.iter_mut().enumerate() {
        f.header.sequence = i as u64;
    }
    let mut r = Replica::default();
    let e = feed(&mut r, fs).expect_err("two metadata records");
    assert!(matches!(e, ReplicaError::DuplicateMetadata), "{e}");
}

#[test]
fn a_checkpoint_number_not_above_the_last_of_its_epoch_is_refused() {
    let mut r = Replica::default();
    feed(&mut r, session(1, true, 1)).expect("checkpoint 1");
    let e = feed(&mut r, session(1, true, 2)).expect_err("checkpoint 1 again");
    assert!(
        matches!(
            e,
            ReplicaError::CheckpointNotNewer {
                checkpoint: 1,
                last: 1
            }
        ),
        "{e}"
    );
    // A new epoch may start its numbering anew.
    feed(&mut r, session(2, true, 3)).expect("epoch 2, checkpoint 1");
}

#[test]
fn pages_outside_their_region_or_of_an_unknown_region_are_refused() {
    let table_pages = 8u64; // region 7
    for (region, first) in [(7u32, table_pages), (7, u64::MAX), (1234, 0)] {
        let mut fs = session(1, true, 1);
        let sub = hslib::wire::PageHeader {
            region,
            first_page: first,
            pages: 1,
        }
        .encode();
        let mut w = Vec::new();
        hslib::wire::write_frame(&mut w, FrameKind::Pages, 1, 1, &[&sub, &[9u8; PAGE_SIZE]])
            .expect("encode");
        fs[1] = read_frame(&mut &w[..]).expect("frame").expect("some");
        let mut r = Replica::default();
        let e = feed(&mut r, fs).expect_err("out of range");
        assert!(
            matches!(
                e,
                ReplicaError::PageOutOfRange { .. } | ReplicaError::UnknownRegion { .. }
            ),
            "{e}"
        );
    }
}

#[test]
fn a_metadata_region_table_unlike_the_hello_is_refused() {
    assert_table_refused(table()[..2].to_vec());
}

/// A session's first checkpoint whose metadata lists `regions` (the hello's are [`table`])
/// is refused for its region table.
fn assert_table_refused(regions: Vec<RegionInfo>) {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&hello()).expect("hello");
    let md = Metadata {
        regions,
        ..Metadata::default()
    };
    w.checkpoint(true, [(7, 0, &[1u8; PAGE_SIZE][..])], &md)
        .expect("checkpoint");
    let mut r = Replica::default();
    let e = feed(&mut r, frames(&w.into_inner())).expect_err("table");
    assert!(matches!(e, ReplicaError::RegionTableMismatch { .. }), "{e}");
}

#[test]
fn bad_region_tables_and_page_sizes_in_the_hello_are_refused() {
    let page = PAGE_SIZE as u64;
    let cases = [
        vec![RegionInfo {
            id: 1,
            base: page,
            len: 0,
        }],
        vec![RegionInfo {
            id: 1,
            base: page,
            len: 100,
        }],
        vec![RegionInfo {
            id: 1,
            base: 0,
            len: page,
        }],
        vec![RegionInfo {
            id: 1,
            base: page + 1,
            len: page,
        }],
        vec![RegionInfo {
            id: 1,
            base: u64::MAX - page + 1,
            len: 2 * page,
        }],
        vec![
            RegionInfo {
                id: 1,
                base: page,
                len: 2 * page,
            },
            RegionInfo {
                id: 2,
                base: 2 * page,
                len: page,
            },
        ],
        vec![
            RegionInfo {
                id: 1,
                base: page,
                len: page,
            },
            RegionInfo {
                id: 1,
                base: 4 * page,
                len: page,
            },
        ],
    ];
    for regions in cases {
        let h = Hello {
            page_size: PAGE_SIZE as u32,
            regions: regions.clone(),
        };
        let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
        w.hello(&h).expect("hello");
        let mut r = Replica::default();
        let e = feed(&mut r, frames(&w.into_inner())).expect_err("bad table");
        assert!(
            matches!(e, ReplicaError::BadRegionTable { .. }),
            "{regions:?}: {e}"
        );
    }
    let many: Vec<RegionInfo> = (0..4097u32)
        .map(|i| RegionInfo {
            id: i,
            base: (u64::from(i) + 1) * page,
            len: page,
        })
        .collect();
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&Hello {
        page_size: PAGE_SIZE as u32,
        regions: many,
    })
    .expect("hello");
    let e = feed(&mut Replica::default(), frames(&w.into_inner())).expect_err("4097 regions");
    assert!(
        matches!(
            e,
            ReplicaError::TooManyRegions {
                count: 4097,
                max: 4096
            }
        ),
        "{e}"
    );
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&Hello {
        page_size: 16384,
        regions: table(),
    })
    .expect("hello");
    let e = feed(&mut Replica::default(), frames(&w.into_inner())).expect_err("page size");
    assert!(
        matches!(e, ReplicaError::PageSize { found: 16384, .. }),
        "{e}"
    );
}

#[test]
fn an_image_larger_than_the_limit_is_refused_before_it_is_allocated() {
    let mut r = Replica::new(ReplicaConfig {
        max_image_bytes: 64 * PAGE_SIZE as u64,
    });
    let e = feed(&mut r, session(1, true, 1)).expect_err("too large");
    assert!(matches!(e, ReplicaError::ImageTooLarge { .. }), "{e}");
    // 1 TiB asked for in a hello with the default limit.
    let h = Hello {
        page_size: PAGE_SIZE as u32,
        regions: vec![RegionInfo {
            id: 1,
            base: 1 << 40,
            len: 1 << 40,
        }],
    };
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&h).expect("hello");
    let e = feed(&mut Replica::default(), frames(&w.into_inner())).expect_err("1 TiB");
    assert!(matches!(e, ReplicaError::ImageTooLarge { .. }), "{e}");
}

#[test]
fn the_latest_committed_blobs_and_metadata_are_kept_for_callers() {
    let cps = script(21, 3);
    let mut r = Replica::default();
    let enc = streamutil::encode(&cps, 1);
    // Up to the second commit, then a staged third checkpoint that never commits.
    let cut = enc.commit_ends[1].0 + 100;
    let _ = r.replay(&mut &enc.bytes[..cut]);
    assert_eq!(r.blob("count"), Some(1u64.to_le_bytes().as_slice()));
    assert_eq!(r.blob("nothing"), None);
    assert_eq!(r.metadata(), Some(&cps[1].metadata));
    assert_eq!(r.checkpoint(), Some(2));
    let committed = r.committed().expect("committed");
    assert_eq!(committed.epoch, 1);
    assert_eq!(committed.image.table(), {
        let mut t = table();
        t.sort_by_key(|r| r.id);
        t
    });
    let digest = r.digest();
    let taken = r.into_committed().expect("committed");
    assert_eq!(Some(taken.image.digest()), digest);
    assert_eq!(taken.checkpoint, 2);
}

#[test]
fn the_image_digest_changes_with_any_byte() {
    let mut a = Image::new(&table(), u64::MAX).expect("image");
    let d0 = a.digest();
    a.write_pages(40, 299, &[0u8; PAGE_SIZE]).expect("write");
    assert_eq!(a.digest(), d0, "writing zeros over zeros");
    let mut page = vec![0u8; PAGE_SIZE];
    page[PAGE_SIZE - 1] = 1;
    a.write_pages(40, 299, &page).expect("write");
    assert_ne!(a.digest(), d0);
    assert!(a.write_pages(40, 300, &page).is_err(), "past the region");
    assert!(
        a.write_pages(40, 0, &page[..100]).is_err(),
        "not whole pages"
    );
}

#[test]
fn frame_header_round_trips_its_fields() {
    let h = FrameHeader::new(FrameKind::Metadata, 9, 12, 77, 0xdead_beef);
    assert_eq!(FrameHeader::decode(&h.encode()).expect("decode"), h);
}

/// A heartbeat frame under `epoch` numbered `sequence`.
fn heartbeat(epoch: u64, sequence: u64) -> Frame {
    Frame {
        header: FrameHeader::new(
            FrameKind::Heartbeat,
            epoch,
            sequence,
            0,
            crc32c::crc32c(&[]),
        ),
        body: Body::Heartbeat,
    }
}

/// Accepts a heartbeat and checks it earned no ack, left the state and the image alone, and
/// moved the time the primary was last heard.
fn beat(r: &mut Replica, frame: Frame) {
    let state = r.state();
    let digest = r.digest();
    let before = std::time::Instant::now();
    assert_eq!(r.accept(frame).expect("a heartbeat is accepted"), None);
    assert_eq!(r.state(), state, "a heartbeat changed the state");
    assert_eq!(r.digest(), digest, "a heartbeat changed the image");
    assert!(
        r.last_heard().is_some_and(|t| t >= before),
        "a heartbeat is not noted as hearing from the primary"
    );
}

/// A heartbeat is accepted in every state (idle, ready, staging, rejected, after a goodbye),
/// changes no image and no staged checkpoint (a checkpoint with one in the middle still
/// commits), and is numbered like any frame inside a session.
#[test]
fn a_heartbeat_is_accepted_in_every_state_and_changes_no_image() {
    // Idle: nothing to check its number against.
    let mut r = Replica::default();
    assert_eq!(r.last_heard(), None);
    beat(&mut r, heartbeat(1, 9));
    assert_eq!(r.state(), ReplicaState::Idle);

    // Ready, then Staging: shift the checkpoint's frames by the heartbeats put in front of
    // them and between them.
    let mut fs = session(1, true, 0xaa).into_iter();
    r.accept(fs.next().expect("hello")).expect("hello");
    beat(&mut r, heartbeat(1, 1));
    assert_eq!(r.state(), ReplicaState::Ready);
    let mut rest: Vec<Frame> = fs.collect();
    for f in &mut rest {
        f.header.sequence += 1;
    }
    let mut rest = rest.into_iter();
    r.accept(rest.next().expect("pages")).expect("pages");
    assert_eq!(r.state(), ReplicaState::Staging);
    beat(&mut r, heartbeat(1, 3));
    assert_eq!(r.state(), ReplicaState::Staging);
    for mut f in rest {
        f.header.sequence += 1;
        r.accept(f)
            .expect("the checkpoint commits around the heartbeat");
    }
    assert_eq!(r.checkpoint(), Some(1));
    assert_eq!(page(&r, 7, 1), vec![0xaa; PAGE_SIZE]);

    // Numbered: one out of sequence is refused like any frame (and ends the session).
    let err = r.accept(heartbeat(1, 99)).expect_err("out of sequence");
    assert!(matches!(err, ReplicaError::OutOfOrder { .. }), "{err}");
    // Rejected: still accepted, still rejected, image kept.
    assert_eq!(r.state(), ReplicaState::Rejected);
    beat(&mut r, heartbeat(1, 100));
    assert_eq!(r.state(), ReplicaState::Rejected);

    // After a goodbye: accepted, and the goodbye still holds.
    let mut w = CheckpointWriter::new(Vec::new(), 2, 1);
    w.hello(&hello()).expect("hello");
    w.goodbye(Farewell::Dropped).expect("goodbye");
    feed(&mut r, frames(&w.into_inner())).expect("hello and goodbye");
    assert_eq!(r.farewell(), Some(Farewell::Dropped));
    beat(&mut r, heartbeat(2, 2));
    assert_eq!(
        r.farewell(),
        Some(Farewell::Dropped),
        "a heartbeat undid the goodbye"
    );
}

/// A metadata record with a worker name and blobs (what a game sends every checkpoint).
fn rich_metadata(score: u8) -> Metadata {
    Metadata {
        worker: Some("game".to_owned()),
        regions: table(),
        blobs: [
            ("score".to_owned(), vec![score; 8]),
            ("name".to_owned(), b"player".to_vec()),
        ]
        .into(),
        ..Metadata::default()
    }
}

/// Checkpoints of one session read off a stream: a record the same, byte for byte, as the
/// committed one stands for it; one that changed replaces it.
#[test]
fn a_stream_s_unchanged_metadata_stands_and_a_changed_one_replaces_it() {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&hello()).expect("hello");
    w.checkpoint(true, [(7, 1, &[1u8; PAGE_SIZE][..])], &rich_metadata(1))
        .expect("first");
    w.checkpoint(false, [(7, 2, &[2u8; PAGE_SIZE][..])], &rich_metadata(1))
        .expect("second, same record");
    let two = w.get_ref().len();
    w.checkpoint(false, [(7, 3, &[3u8; PAGE_SIZE][..])], &rich_metadata(2))
        .expect("third, a blob changed");
    w.checkpoint(false, [(7, 4, &[4u8; PAGE_SIZE][..])], &rich_metadata(2))
        .expect("fourth, same record");
    let bytes = w.into_inner();

    let mut r = Replica::default();
    let end = r.replay(&mut &bytes[..two]);
    assert!(end.error.is_none(), "{:?}", end.error);
    assert_eq!((end.commits, r.checkpoint()), (2, Some(2)));
    assert_eq!(r.metadata(), Some(&rich_metadata(1)));
    assert_eq!(page(&r, 7, 2), vec![2u8; PAGE_SIZE]);

    let mut r = Replica::default();
    let end = r.replay(&mut &bytes[..]);
    assert!(end.error.is_none(), "{:?}", end.error);
    assert_eq!((end.commits, r.checkpoint()), (4, Some(4)));
    assert_eq!(r.metadata(), Some(&rich_metadata(2)));
    assert_eq!(r.blob("score"), Some(&[2u8; 8][..]));
    assert_eq!(page(&r, 7, 4), vec![4u8; PAGE_SIZE]);
}

/// A record the same as the committed one is still checked against the session's region
/// table: a new session (a new hello) with another table refuses it.
#[test]
fn an_unchanged_metadata_record_is_refused_by_a_session_with_another_table() {
    let mut w = CheckpointWriter::new(Vec::new(), 1, 1);
    w.hello(&hello()).expect("hello");
    w.checkpoint(true, [(7, 1, &[1u8; PAGE_SIZE][..])], &rich_metadata(1))
        .expect("first");
    let mut bytes = w.into_inner();
    let mut w = CheckpointWriter::new(Vec::new(), 2, 1);
    let mut other = hello();
    other.regions.truncate(2);
    w.hello(&other).expect("a new session, two regions");
    w.checkpoint(true, [(7, 1, &[5u8; PAGE_SIZE][..])], &rich_metadata(1))
        .expect("the first session's record again");
    bytes.extend_from_slice(&w.into_inner());

    let mut r = Replica::default();
    let end = r.replay(&mut &bytes[..]);
    assert_eq!((end.commits, r.checkpoint()), (1, Some(1)));
    let e = end.error.expect("the record's table is not the session's");
    assert!(matches!(e, ReplicaError::RegionTableMismatch { .. }), "{e}");
    assert_eq!(page(&r, 7, 1), vec![1u8; PAGE_SIZE], "the image kept");
}

/// A record listing one region twice (and so, at the same length, missing another) is not
/// the session's table.
#[test]
fn a_metadata_region_table_with_a_region_twice_is_refused() {
    let t = table();
    assert_table_refused(vec![t[0], t[0], t[1]]);
}
