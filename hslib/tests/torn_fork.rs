//! Torn streams from the fork strategy: a primary (this test's worker) checkpoints with
//! `fork()` to a spare (a thread of this test serving a [`Replica`] over the Unix link) and
//! SIGKILLs the fork child at a random moment while it writes, until 200 kills have landed
//! mid-write. Each time the
//! spare's image must equal exactly one completed checkpoint (compared by digest) — the one
//! before the killed checkpoint, or the killed one if its child finished first — never a
//! mixture; then the spare reconnects, gets a full checkpoint, and it goes on.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hslib::replica::Replica;
use hslib::transport::{HANDSHAKE_TIMEOUT, unix};
use hslib::{Context, HotSpare, LinkConfig, Mode, RegionId, Role, Strategy, WorkerResult};
use rand::{RngExt, SeedableRng};

const REGION: RegionId = RegionId(950);
const LEN: usize = 4 << 20;
/// Kills that must land while a child writes.
const LANDED: usize = 200;
/// Rounds at most.
const ROUNDS: usize = 3000;

/// The tests share one region id, so they take turns.
static REGION_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn region_turn() -> std::sync::MutexGuard<'static, ()> {
    REGION_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A checksum of the region's bytes (CRC-32C: cheap enough for thousands of rounds; each
/// checkpoint also stamps a counter into the region, so no two share contents).
fn digest(ctx: &Context) -> u32 {
    crc32c::crc32c(ctx.region(REGION).expect("region").as_bytes())
}

fn image_digest(replica: &Replica) -> Option<u32> {
    replica.image()?.region(REGION.0).map(crc32c::crc32c)
}

fn wait_live(ctx: &Context, live: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctx.link_stats().live != live {
        assert!(Instant::now() < deadline, "link never became live={live}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The spare: connects, serves until the stream ends, reports the image's digest, again.
fn spare(dir: std::path::PathBuf, reports: mpsc::Sender<(Option<u32>, String)>) {
    let mut replica = Replica::default();
    loop {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ep = loop {
            match unix::connect(&dir, "torn") {
                Ok(ep) => break ep,
                Err(e) => {
                    if Instant::now() > deadline {
                        panic!("spare cannot connect: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let end = hslib::session::serve_spare(&mut replica, &mut ep, HANDSHAKE_TIMEOUT);
        if replica.said_goodbye() {
            return;
        }
        let how = format!("checkpoint {:?}, stream end {end:?}", replica.checkpoint());
        if reports.send((image_digest(&replica), how)).is_err() {
            return;
        }
    }
}

#[test]
fn killing_fork_children_mid_write_leaves_the_spare_at_one_whole_checkpoint() {
    let _turn = region_turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let (tx, reports) = mpsc::channel();
    let spare_dir = sock.clone();
    let spare = std::thread::spawn(move || spare(spare_dir, tx));
    let outcome = HotSpare::new("torn")
        .region(REGION, LEN)
        .strategy(Strategy::Fork)
        .mode(Mode::Async)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: sock,
            name: "torn".to_owned(),
        })
        .worker(move |ctx: &mut Context| -> WorkerResult {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut stamp = 0u64;
            let (mut landed, mut finished_first) = (0, 0);
            let mut history = Vec::new();
            for round in 0..ROUNDS {
                if landed >= LANDED {
                    break;
                }
                wait_live(ctx, true);
                let session = ctx.link_stats().sessions;
                // Checkpoints by number of their digest, for the message.
                let mut digests: HashMap<u32, u64> = HashMap::new();
                let mut last_flushed = None;
                for k in 0..3 {
                    stamp += 1;
                    let bytes = ctx.region_mut(REGION)?.as_bytes_mut();
                    bytes[..8].copy_from_slice(&stamp.to_le_bytes());
                    // Half of the pages, scattered, so the child writes about 2 MiB.
                    for _ in 0..128 {
                        let page = rng.random_range(1..LEN / 4096 - 4);
                        bytes[page * 4096..(page + 4) * 4096].fill(rng.random());
                    }
                    let d = digest(ctx);
                    ctx.checkpoint()?;
                    digests.insert(d, stamp);
                    if k < 2 {
                        // Everything before the last checkpoint is on the wire.
                        ctx.flush()?;
                        last_flushed = Some(d);
                    }
                }
                let killed = digest(ctx);
                // Kill the last child somewhere in its write (or after it, sometimes).
                std::thread::sleep(Duration::from_micros(rng.random_range(0..300)));
                let signalled = ctx.kill_snapshot_child();
                ctx.flush()?;
                history.push(format!(
                    "round {round}: signalled={signalled} {:?}",
                    ctx.link_stats()
                ));
                // The round's session ended if it is down or the spare already came back.
                let stats = ctx.link_stats();
                if !stats.live || stats.sessions != session {
                    landed += 1;
                    let (got, how) = reports
                        .recv_timeout(Duration::from_secs(20))
                        .expect("the spare reports");
                    let got = got.expect("the spare has an image");
                    let which = digests.get(&got);
                    assert!(
                        got == killed || Some(got) == last_flushed,
                        "round {round}: the spare's image is checkpoint {which:?}, \
                         neither the one before the killed child nor the killed one \
                         (signalled={signalled}; {how})\n{}",
                        history[history.len().saturating_sub(4)..].join("\n")
                    );
                } else {
                    finished_first += 1;
                }
            }
            eprintln!("{landed} kills landed mid-write, {finished_first} children finished first");
            assert!(
                landed >= LANDED,
                "only {landed} kills landed while a child was writing"
            );
            Ok(())
        })
        .run()
        .expect("run");
    assert!(matches!(outcome, hslib::Outcome::Finished { .. }));
    spare.join().expect("spare thread");
}

/// A spare that applies frames itself and publishes the image's checksum after each commit,
/// before acking it: in sync mode, when `checkpoint()` returns, the published checksum is the
/// spare's image of exactly that checkpoint.
fn checking_spare(dir: std::path::PathBuf, published: std::sync::Arc<std::sync::Mutex<u32>>) {
    use hslib::wire;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ep = loop {
        match unix::connect(&dir, "exact") {
            Ok(ep) => break ep,
            Err(e) => {
                assert!(Instant::now() < deadline, "spare cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let mut replica = Replica::default();
    while let Ok(Some(frame)) = wire::read_frame(&mut ep) {
        let ack = replica
            .accept(frame)
            .expect("the spare accepts every frame");
        if let Some(ack) = ack {
            if let Some(d) = image_digest(&replica) {
                *published.lock().expect("lock") = d;
            }
            let (epoch, seq) = replica.take_ack_slot().expect("session");
            wire::write_ack(&mut ep, epoch, seq, &ack).expect("ack");
        }
    }
}

fn every_checkpoint_reaches_the_spare_exactly(strategy: Strategy) {
    let _turn = region_turn();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let published = std::sync::Arc::new(std::sync::Mutex::new(0));
    let (spare_dir, seen) = (sock.clone(), std::sync::Arc::clone(&published));
    let spare = std::thread::spawn(move || checking_spare(spare_dir, seen));
    HotSpare::new("exact")
        .region(REGION, LEN)
        .strategy(strategy)
        .mode(Mode::Sync)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: sock,
            name: "exact".to_owned(),
        })
        .worker(move |ctx: &mut Context| -> WorkerResult {
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            for i in 0..300u64 {
                let bytes = ctx.region_mut(REGION)?.as_bytes_mut();
                bytes[..8].copy_from_slice(&i.to_le_bytes());
                for _ in 0..rng.random_range(0..64) {
                    let page = rng.random_range(1..LEN / 4096 - 4);
                    let len = 4096 * rng.random_range(1..4);
                    bytes[page * 4096..page * 4096 + len].fill(rng.random());
                }
                let d = digest(ctx);
                let cp = ctx.checkpoint()?;
                assert!(cp.acked, "checkpoint {i} was not acked");
                let got = *published.lock().expect("lock");
                assert_eq!(got, d, "checkpoint {i} ({cp:?}): the spare's image differs");
            }
            Ok(())
        })
        .run()
        .expect("run");
    spare.join().expect("spare");
}

#[test]
fn every_fork_checkpoint_reaches_the_spare_exactly() {
    every_checkpoint_reaches_the_spare_exactly(Strategy::Fork);
}

#[test]
fn every_copy_checkpoint_reaches_the_spare_exactly() {
    every_checkpoint_reaches_the_spare_exactly(Strategy::Copy);
}

#[test]
fn every_cbw_checkpoint_reaches_the_spare_exactly() {
    every_checkpoint_reaches_the_spare_exactly(Strategy::Cbw);
}
