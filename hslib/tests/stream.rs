//! The checkpoint stream end to end: writer -> transport -> replica over each transport,
//! streams torn at hundreds of offsets, and corrupted streams (proptest). The replica must
//! always hold exactly the last checkpoint whose commit it received whole, with the digest
//! the writer's side computed for it, never a mixture, and never panic.

mod streamutil;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use hslib::replica::{Replica, ReplicaConfig, ReplicaError, ReplicaState};
use hslib::session::{SessionError, open_primary, serve_spare};
use hslib::transport::file::{self, FileLog};
use hslib::transport::tcp::{self, AuthKey, TcpConfig, TcpServer};
use hslib::transport::unix::{self, UnixServer};
use hslib::transport::{Endpoint, HANDSHAKE_TIMEOUT, TransportError};
use hslib::wire::{CheckpointWriter, FrameHeader, FrameKind, HEADER_LEN, MAX_BODY_LEN, WireError};
use proptest::prelude::*;
use streamutil::{Cp, Encoded, Rng, encode, hello, script, write_script};

/// Drives a primary over `ep`: hello, every checkpoint, each acked (sync mode). Returns the
/// spare's hello ack checkpoint and the acked checkpoint numbers.
fn primary<E: Endpoint>(ep: E, cps: &[Cp], epoch: u64) -> (u64, Vec<u64>) {
    let mut s = open_primary(ep, epoch, 1, &hello(), HANDSHAKE_TIMEOUT).expect("open session");
    let mut acked = Vec::new();
    for cp in cps {
        let c = s
            .writer
            .checkpoint(
                cp.full,
                cp.runs.iter().map(|(r, p, d)| (*r, *p, d.as_slice())),
                &cp.metadata,
            )
            .expect("checkpoint");
        let ack = s.wait_commit_ack(c.checkpoint).expect("commit ack");
        acked.push(ack.checkpoint);
    }
    (s.hello_ack.checkpoint, acked)
}

/// Runs a spare on `ep` and checks it ended cleanly holding the script's last checkpoint.
fn spare<E: Endpoint>(mut ep: E, cps: &[Cp]) -> Replica {
    let mut replica = Replica::default();
    let end = serve_spare(&mut replica, &mut ep, HANDSHAKE_TIMEOUT).expect("serve");
    assert!(end.error.is_none(), "stream error: {:?}", end.error);
    assert_eq!(end.commits, cps.len() as u64);
    replica
}

fn check_final(replica: &Replica, cps: &[Cp]) {
    let last = cps.last().expect("non-empty script");
    assert_eq!(
        replica.digest(),
        Some(last.digest),
        "image differs from the writer's"
    );
    assert_eq!(replica.checkpoint(), Some(cps.len() as u64));
    assert_eq!(
        replica.blob("count"),
        Some(((cps.len() - 1) as u64).to_le_bytes().as_slice())
    );
    assert_eq!(replica.metadata(), Some(&last.metadata));
    assert_eq!(replica.state(), ReplicaState::Idle);
}

#[test]
fn round_trip_over_unix_socket_with_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_dir = dir.path().join("socks");
    let server = UnixServer::bind(&sock_dir, "spare.sock").expect("bind");
    let cps = script(1, 6);
    let cps2 = cps.clone();
    let spare_thread = thread::spawn(move || {
        let ep = server.accept().expect("accept");
        spare(ep, &cps2)
    });
    let ep = unix::connect(&sock_dir, "spare.sock").expect("connect");
    let (hello_ack, acked) = primary(ep, &cps, 3);
    assert_eq!(hello_ack, 0, "a fresh spare has no checkpoint");
    assert_eq!(acked, (1..=6).collect::<Vec<u64>>());
    let replica = spare_thread.join().expect("spare thread");
    check_final(&replica, &cps);
    assert_eq!(replica.highest_epoch(), Some(3));
}

fn key(b: u8) -> AuthKey {
    AuthKey::new(vec![b; 32]).expect("key")
}

#[test]
fn round_trip_over_authenticated_tcp_with_acks() {
    let cfg = TcpConfig::new(Some(key(9)));
    let server = TcpServer::bind("127.0.0.1:0", &cfg).expect("bind");
    let addr = server.local_addr().expect("addr");
    let cps = script(2, 5);
    let cps2 = cps.clone();
    let spare_thread = thread::spawn(move || {
        let ep = server.accept().expect("accept");
        spare(ep, &cps2)
    });
    let ep = tcp::connect(addr, &cfg).expect("connect");
    let (_, acked) = primary(ep, &cps, 1);
    assert_eq!(acked, (1..=5).collect::<Vec<u64>>());
    check_final(&spare_thread.join().expect("spare thread"), &cps);
}

#[test]
fn round_trip_through_a_log_file_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cp.log");
    let cps = script(3, 5);
    let mut w = CheckpointWriter::new(FileLog::create(&path).expect("create"), 1, 1);
    write_script(&mut w, &cps);
    w.get_ref().sync().expect("sync");
    drop(w);
    let (replica, end) = file::rebuild(&path, ReplicaConfig::default()).expect("rebuild");
    assert!(end.error.is_none(), "{:?}", end.error);
    check_final(&replica, &cps);
}

#[test]
fn log_append_cuts_a_torn_tail_and_replays_the_new_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cp.log");
    let first = script(4, 3);
    let mut w = CheckpointWriter::new(FileLog::create(&path).expect("create"), 1, 1);
    write_script(&mut w, &first);
    drop(w);
    // Tear the log in the middle of the last checkpoint: only two complete.
    let enc = encode(&first, 1);
    let torn = enc.commit_ends[1].0 + (enc.commit_ends[2].0 - enc.commit_ends[1].0) / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(torn as u64)
        .expect("truncate");
    let (replica, end) = file::rebuild(&path, ReplicaConfig::default()).expect("rebuild");
    assert!(matches!(
        end.error,
        Some(ReplicaError::Wire(WireError::Truncated { .. }))
    ));
    assert_eq!(replica.digest(), Some(first[1].digest));
    // A new session appended after the torn tail (epoch 2) replays as well.
    let second = script(5, 2);
    let log = FileLog::append(&path, ReplicaConfig::default()).expect("append");
    let mut w = CheckpointWriter::new(log, 2, 3);
    write_script(&mut w, &second);
    drop(w);
    let (replica, end) = file::rebuild(&path, ReplicaConfig::default()).expect("rebuild");
    assert!(end.error.is_none(), "{:?}", end.error);
    assert_eq!(replica.digest(), Some(second[1].digest));
    assert_eq!(replica.checkpoint(), Some(4));
    assert_eq!(end.commits, 2 + 2);
}

#[test]
fn log_append_refuses_a_log_a_replica_refuses_instead_of_cutting_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cp.log");
    let cps = script(6, 2);
    let mut w = CheckpointWriter::new(FileLog::create(&path).expect("create"), 1, 1);
    write_script(&mut w, &cps);
    drop(w);
    let len = std::fs::metadata(&path).expect("stat").len();
    // A limit too small for the log's image: its frames read back fine but are refused.
    let small = ReplicaConfig {
        max_image_bytes: 4096,
    };
    match FileLog::append(&path, small) {
        Err(TransportError::Log {
            source: ReplicaError::ImageTooLarge { .. },
            ..
        }) => {}
        other => panic!("want a refusal, got {other:?}"),
    }
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        len,
        "log was cut"
    );
}

fn base() -> &'static (Vec<Cp>, Encoded) {
    static BASE: OnceLock<(Vec<Cp>, Encoded)> = OnceLock::new();
    BASE.get_or_init(|| {
        let cps = script(42, 6);
        let enc = encode(&cps, 5);
        (cps, enc)
    })
}

/// Feeds `bytes` to a fresh replica as one stream; returns it and how the stream ended.
fn replay(bytes: &[u8]) -> (Replica, Option<ReplicaError>) {
    let mut r = Replica::default();
    let end = r.replay(&mut &bytes[..]);
    (r, end.error)
}

#[test]
fn torn_streams_at_400_offsets_hold_exactly_the_last_whole_checkpoint() {
    let (_, enc) = base();
    let mut rng = Rng::new(7);
    let mut cuts: Vec<usize> = (0..360)
        .map(|_| rng.below(enc.bytes.len() as u64) as usize)
        .collect();
    // Every commit boundary and the bytes either side of it.
    for (end, _) in &enc.commit_ends {
        cuts.extend([end - 1, *end, end + 1]);
    }
    for cut in cuts {
        let cut = cut.min(enc.bytes.len());
        let (r, err) = replay(&enc.bytes[..cut]);
        assert_eq!(r.digest(), enc.expected_at(cut), "cut at {cut}");
        let at_boundary = cut == 0 || enc.frame_ends.contains(&cut);
        assert_eq!(err.is_none(), at_boundary, "cut at {cut}: {err:?}");
        assert_ne!(r.state(), ReplicaState::Staging, "cut at {cut}");
    }
}

#[test]
fn torn_unix_connections_hold_exactly_the_last_whole_checkpoint() {
    let (_, enc) = base();
    let mut rng = Rng::new(8);
    for _ in 0..60 {
        let cut = rng.below(enc.bytes.len() as u64) as usize;
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let bytes = enc.bytes[..cut].to_vec();
        let writer = thread::spawn(move || {
            a.write_all(&bytes).expect("write");
            a.shutdown(std::net::Shutdown::Write).expect("shutdown");
            // Drain the acks until the replica hangs up.
            let mut sink = Vec::new();
            let _ = a.read_to_end(&mut sink);
        });
        let mut r = Replica::default();
        let end = r.serve(&mut b);
        drop(b);
        writer.join().expect("writer thread");
        assert_eq!(r.digest(), enc.expected_at(cut), "cut at {cut}");
        let commits = enc.commit_ends.iter().filter(|(e, _)| *e <= cut).count();
        assert_eq!(end.commits, commits as u64, "cut at {cut}");
    }
}

#[test]
fn a_primary_cut_off_mid_checkpoint_leaves_the_spare_at_its_last_acked_checkpoint() {
    // The primary's socket is closed mid-checkpoint, with acks unread (as when its process
    // dies); the spare keeps the checkpoint it acked last.
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    b.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let cps = script(11, 4);
    let spare_thread = thread::spawn(move || {
        let mut r = Replica::default();
        let end = r.serve(&mut b);
        (r, end)
    });
    let mut w = CheckpointWriter::new(&mut a, 1, 1);
    write_script(&mut w, &cps[..2]);
    w.begin(false).expect("begin");
    let (rg, p, d) = &cps[2].runs[0];
    w.pages(*rg, *p, d).expect("pages");
    a.shutdown(std::net::Shutdown::Both).expect("shutdown");
    let (r, end) = spare_thread.join().expect("spare");
    // The unread acks make the kernel report the close as a reset rather than an end of
    // stream; either way the staged frames are dropped.
    assert!(
        matches!(
            &end.error,
            None | Some(ReplicaError::Wire(WireError::Io(_)))
        ),
        "{:?}",
        end.error
    );
    assert_eq!(end.commits, 2);
    assert_eq!(r.digest(), Some(cps[1].digest));
}

/// A corruption of one frame of the base stream.
#[derive(Debug, Clone)]
enum Tamper {
    FlipBit { offset: usize, bit: u8 },
    HugeLength { frame: usize, length: u32 },
    Magic { frame: usize, magic: [u8; 4] },
    Version { frame: usize, version: u16 },
    Kind { frame: usize, kind: u16 },
    Epoch { frame: usize, delta: i8 },
    Sequence { frame: usize, delta: i8 },
    Garbage { offset: usize, bytes: Vec<u8> },
}

fn tamper() -> impl Strategy<Value = Tamper> {
    let (_, enc) = base();
    let len = enc.bytes.len();
    let frames = enc.frame_ends.len();
    prop_oneof![
        (0..len, 0u8..8).prop_map(|(offset, bit)| Tamper::FlipBit { offset, bit }),
        (0..frames, (MAX_BODY_LEN + 1)..=u32::MAX)
            .prop_map(|(frame, length)| Tamper::HugeLength { frame, length }),
        (0..frames, any::<[u8; 4]>())
            .prop_filter("not the magic", |(_, m)| m != b"HSCP")
            .prop_map(|(frame, magic)| Tamper::Magic { frame, magic }),
        (0..frames, any::<u16>())
            .prop_filter("not the version", |(_, v)| *v != 1)
            .prop_map(|(frame, version)| Tamper::Version { frame, version }),
        (0..frames, any::<u16>()).prop_map(|(frame, kind)| Tamper::Kind { frame, kind }),
        (0..frames, any::<i8>())
            .prop_filter("a change", |(_, d)| *d != 0)
            .prop_map(|(frame, delta)| Tamper::Epoch { frame, delta }),
        (0..frames, any::<i8>())
            .prop_filter("a change", |(_, d)| *d != 0)
            .prop_map(|(frame, delta)| Tamper::Sequence { frame, delta }),
        (0..len, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(offset, bytes)| Tamper::Garbage { offset, bytes }),
    ]
}

/// Rewrites the header of frame `frame` with `edit` applied to its raw bytes, then either
/// keeps the header checksum valid (`fix_crc`) or not.
fn edit_header(bytes: &mut [u8], start: usize, edit: impl FnOnce(&mut [u8; HEADER_LEN])) {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&bytes[start..start + HEADER_LEN]);
    edit(&mut h);
    let crc = crc32c::crc32c(&h[..36]);
    h[36..].copy_from_slice(&crc.to_le_bytes());
    bytes[start..start + HEADER_LEN].copy_from_slice(&h);
}

/// Re-encodes frame `start`'s header with new field values (valid checksums).
fn reencode(bytes: &mut [u8], start: usize, f: impl FnOnce(&mut FrameHeader)) {
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&bytes[start..start + HEADER_LEN]);
    let mut h = FrameHeader::decode(&raw).expect("valid base frame");
    f(&mut h);
    bytes[start..start + HEADER_LEN].copy_from_slice(&h.encode());
}

/// Applies `t`; returns the stream and the offset of the first byte changed (`usize::MAX`
/// if it changed nothing).
fn apply(t: &Tamper) -> (Vec<u8>, usize) {
    let (_, enc) = base();
    let b = tampered(t);
    let changed = b
        .iter()
        .zip(&enc.bytes)
        .position(|(new, old)| new != old)
        .unwrap_or(usize::MAX);
    (b, changed)
}

fn tampered(t: &Tamper) -> Vec<u8> {
    let (_, enc) = base();
    let mut b = enc.bytes.clone();
    let start = |frame: usize| {
        if frame == 0 {
            0
        } else {
            enc.frame_ends[frame - 1]
        }
    };
    match t {
        Tamper::FlipBit { offset, bit } => {
            b[*offset] ^= 1 << bit;
            b
        }
        Tamper::HugeLength { frame, length } => {
            let s = start(*frame);
            edit_header(&mut b, s, |h| {
                h[24..28].copy_from_slice(&length.to_le_bytes())
            });
            b
        }
        Tamper::Magic { frame, magic } => {
            let s = start(*frame);
            b[s..s + 4].copy_from_slice(magic);
            b
        }
        Tamper::Version { frame, version } => {
            let s = start(*frame);
            edit_header(&mut b, s, |h| {
                h[4..6].copy_from_slice(&version.to_le_bytes())
            });
            b
        }
        Tamper::Kind { frame, kind } => {
            let s = start(*frame);
            edit_header(&mut b, s, |h| h[6..8].copy_from_slice(&kind.to_le_bytes()));
            b
        }
        Tamper::Epoch { frame, delta } => {
            let s = start(*frame);
            reencode(&mut b, s, |h| {
                h.epoch = h.epoch.wrapping_add_signed(i64::from(*delta))
            });
            b
        }
        Tamper::Sequence { frame, delta } => {
            let s = start(*frame);
            reencode(&mut b, s, |h| {
                h.sequence = h.sequence.wrapping_add_signed(i64::from(*delta))
            });
            b
        }
        Tamper::Garbage { offset, bytes } => {
            let end = (offset + bytes.len()).min(b.len());
            b[*offset..end].copy_from_slice(&bytes[..end - offset]);
            b
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every corruption is refused with an error (never a panic, never a clean end), and the
    /// replica holds exactly the last checkpoint committed before the corrupted frame.
    #[test]
    fn corrupt_streams_are_refused_and_leave_the_last_whole_checkpoint(t in tamper()) {
        let (_, enc) = base();
        let (bytes, changed) = apply(&t);
        prop_assume!(changed != usize::MAX);
        let (r, err) = replay(&bytes);
        let frame_start = enc.frame_start(changed);
        prop_assert!(err.is_some(), "{t:?} was accepted");
        prop_assert_eq!(r.digest(), enc.expected_at(frame_start), "{:?}: {:?}", t, err);
        prop_assert_ne!(r.state(), ReplicaState::Staging);
    }
}

#[test]
fn a_length_over_the_limit_is_refused_before_the_body_is_read() {
    let (_, enc) = base();
    let mut b = enc.bytes[..HEADER_LEN].to_vec();
    edit_header(&mut b, 0, |h| {
        h[24..28].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    // Only the header is there: had the reader allocated and read the body, it would report
    // a truncated body instead.
    match hslib::wire::read_frame(&mut &b[..]) {
        Err(WireError::TooLong { length, max, kind }) => {
            assert_eq!(
                (length, max, kind),
                (u64::from(u32::MAX), MAX_BODY_LEN, FrameKind::Hello)
            );
        }
        other => panic!("want TooLong, got {other:?}"),
    }
}

#[test]
fn a_reconnected_spare_gets_a_session_on_top_of_its_image() {
    // Two sessions through one replica: the second hello is acked with the checkpoint the
    // spare already holds, and a lower epoch afterwards is refused as stale.
    let cps = script(12, 3);
    let mut r = Replica::default();
    let first = encode(&cps[..2], 4);
    assert!(r.replay(&mut &first.bytes[..]).error.is_none());
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let primary = thread::spawn(move || {
        let s = open_primary(&mut a, 5, 3, &hello(), HANDSHAKE_TIMEOUT).expect("open");
        assert_eq!(s.hello_ack.checkpoint, 2);
    });
    let end = serve_spare(&mut r, &mut b, HANDSHAKE_TIMEOUT).expect("serve");
    primary.join().expect("primary");
    assert!(end.error.is_none());
    assert_eq!(r.digest(), Some(cps[1].digest));
    let stale = encode(&cps[..1], 4);
    let e = r.replay(&mut &stale.bytes[..]).error;
    assert!(
        matches!(
            e,
            Some(ReplicaError::StaleEpoch {
                found: 4,
                highest: 5
            })
        ),
        "{e:?}"
    );
    assert_eq!(r.digest(), Some(cps[1].digest));
}

#[test]
fn the_spare_gives_up_waiting_for_a_hello_after_the_handshake_timeout() {
    let (_primary, mut b) = UnixStream::pair().expect("socketpair");
    let mut r = Replica::default();
    match serve_spare(&mut r, &mut b, Duration::from_millis(100)) {
        Err(SessionError::Wire {
            source: WireError::Io(e),
            ..
        }) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("want a timeout, got {other:?}"),
    }
    assert_eq!(r.state(), ReplicaState::Idle);
}

#[test]
fn the_primary_gives_up_waiting_for_the_hello_ack_after_the_handshake_timeout() {
    let (a, _silent_spare) = UnixStream::pair().expect("socketpair");
    match open_primary(a, 1, 1, &hello(), Duration::from_millis(100)) {
        Err(SessionError::Wire {
            source: WireError::Io(e),
            ..
        }) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("want a timeout, got {other:?}"),
    }
}

#[test]
fn a_spare_refuses_a_session_that_does_not_start_with_a_hello() {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let (_, enc) = base();
    // The stream without its hello frame.
    a.write_all(&enc.bytes[enc.frame_ends[0]..enc.frame_ends[1]])
        .expect("write");
    let mut r = Replica::default();
    match serve_spare(&mut r, &mut b, HANDSHAKE_TIMEOUT) {
        Err(SessionError::Replica {
            source: ReplicaError::NoSession { kind },
            ..
        }) => assert_eq!(kind, FrameKind::Pages),
        other => panic!("want a refusal, got {other:?}"),
    }
}
