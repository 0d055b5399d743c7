//! A sync primary whose checkpoints flow back to back writes them itself (the direct path);
//! its sender thread must count them as traffic. Before, it went on beating on its own clock
//! and queued for the session's lock behind every checkpoint, so that each one woke it on
//! its way out and heartbeats were squeezed in between checkpoints.

use std::time::{Duration, Instant};

use hslib::replica::{Replica, ReplicaConfig};
use hslib::transport::{Endpoint, unix};
use hslib::wire::{self, FrameKind};
use hslib::{Backend, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role};

const REGION: RegionId = RegionId(17);
const HEARTBEAT: Duration = Duration::from_millis(10);
const BUSY: Duration = Duration::from_millis(600);
const DEADLINE: Duration = Duration::from_secs(20);

/// A spare in a thread: acks every hello and commit and returns the kinds of the frames it
/// read, in order, once the stream ends.
fn spare(dir: std::path::PathBuf) -> std::thread::JoinHandle<Vec<FrameKind>> {
    std::thread::spawn(move || {
        let mut ep = unix::connect(&dir, "hb").expect("connect to the primary");
        ep.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let mut replica = Replica::new(ReplicaConfig::default());
        let mut kinds = Vec::new();
        while let Ok(Some(frame)) = wire::read_frame(&mut ep) {
            kinds.push(frame.header.kind);
            match replica.accept(frame) {
                Ok(Some(ack)) => {
                    let (epoch, seq) = replica.take_ack_slot().expect("an open session");
                    wire::write_ack(&mut ep, epoch, seq, &ack).expect("write the ack");
                }
                Ok(None) => {}
                Err(e) => panic!("the spare refused a frame: {e}"),
            }
        }
        kinds
    })
}

/// Heartbeats that came between two commits: squeezed in while checkpoints flowed.
fn between_commits(kinds: &[FrameKind]) -> usize {
    let first = kinds.iter().position(|k| *k == FrameKind::Commit);
    let last = kinds.iter().rposition(|k| *k == FrameKind::Commit);
    match (first, last) {
        (Some(a), Some(b)) => kinds[a..b]
            .iter()
            .filter(|k| **k == FrameKind::Heartbeat)
            .count(),
        _ => 0,
    }
}

#[test]
fn back_to_back_sync_checkpoints_count_as_traffic_and_get_no_heartbeats_between_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("socks");
    let for_spare = socks.clone();
    let outcome = HotSpare::new("direct-heartbeat")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .mode(Mode::Sync)
        .heartbeat(Some(HEARTBEAT))
        // Its spare starts in the worker: do not wait for one before it.
        .spare_wait(Duration::from_millis(1))
        .link(LinkConfig::Unix {
            dir: socks,
            name: "hb".to_owned(),
        })
        .init(|ctx| {
            ctx.place(REGION, 0u64)?;
            Ok(())
        })
        .worker(move |ctx| {
            let count = ctx.root::<u64>(REGION)?;
            let spare = spare(for_spare);
            let deadline = Instant::now() + DEADLINE;
            while !ctx.link_stats().synced {
                assert!(Instant::now() < deadline, "the spare never synced");
                *ctx.get_mut(REGION, count)? += 1;
                ctx.checkpoint()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            let busy = Instant::now();
            let mut acked = 0u64;
            while busy.elapsed() < BUSY {
                *ctx.get_mut(REGION, count)? += 1;
                acked += u64::from(ctx.checkpoint()?.acked);
            }
            Ok((acked, spare))
        })
        .run()
        .expect("the run");
    let Outcome::Finished {
        value: (acked, spare),
        ..
    } = outcome
    else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let kinds = spare.join().expect("the spare thread");
    let commits = kinds.iter().filter(|k| **k == FrameKind::Commit).count();
    let squeezed = between_commits(&kinds);
    // Its own clock would have beaten about BUSY / HEARTBEAT = 60 times. A checkpoint
    // delayed past HEARTBEAT on a loaded machine may earn one beat; a few such are allowed.
    assert!(acked > 100, "only {acked} checkpoints acked in {BUSY:?}");
    assert!(
        squeezed <= 6,
        "{squeezed} heartbeats between {commits} back-to-back sync checkpoints"
    );
}
