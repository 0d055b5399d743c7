//! The `cbw` (copy-before-write) strategy's worst case: right after each `checkpoint()`
//! returns, the application overwrites every page of the checkpoint's dirty set (before the
//! sender can have copied them), and the spare (a thread of this test serving a [`Replica`]
//! over the Unix link) must still receive exactly the checkpoint-time contents: every image
//! it commits equals, by digest, the region as it was at one of the checkpoints, in order,
//! and the last one the last checkpoint. Run with each tracker (uffd and full: the strategy
//! protects the pages itself; mprotect: the tracker's protection serves both).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hslib::replica::Replica;
use hslib::snapshot::cbw;
use hslib::transport::unix;
use hslib::{
    Backend, Context, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role, Strategy, WorkerResult,
};
use rand::{RngExt, SeedableRng};

const LEN: usize = 1 << 20;
const PAGES: usize = LEN / 4096;
const ROUNDS: u64 = 150;

/// One test at a time: the fault-copy counter is process-wide.
static TURN: Mutex<()> = Mutex::new(());

fn digest(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// The spare: serves one session, pushing the digest of every image it commits.
fn recording_spare(dir: std::path::PathBuf, region: RegionId, seen: Arc<Mutex<Vec<u32>>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ep = loop {
        match unix::connect(&dir, "cbw") {
            Ok(ep) => break ep,
            Err(e) => {
                assert!(Instant::now() < deadline, "spare cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let mut replica = Replica::default();
    while let Ok(Some(frame)) = hslib::wire::read_frame(&mut ep) {
        let ack = replica
            .accept(frame)
            .unwrap_or_else(|e| panic!("the spare refused a frame: {e}"));
        if let Some(ack) = ack {
            if let Some(d) = replica.image().and_then(|i| i.region(region.0)).map(digest) {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(d);
            }
            let Some((epoch, seq)) = replica.take_ack_slot() else {
                continue;
            };
            if hslib::wire::write_ack(&mut ep, epoch, seq, &ack).is_err() {
                return;
            }
        }
    }
}

fn rewritten_at_once_still_ships_checkpoint_time_contents(backend: Backend, region: RegionId) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("sock");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (spare_dir, spare_seen) = (sock.clone(), Arc::clone(&seen));
    let spare = std::thread::spawn(move || recording_spare(spare_dir, region, spare_seen));
    let before = cbw::stats();
    let outcome = HotSpare::new("cbw-worst")
        .region(region, LEN)
        .strategy(Strategy::Cbw)
        .mode(Mode::Async)
        .tracker(backend)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: sock,
            name: "cbw".to_owned(),
        })
        .worker(move |ctx: &mut Context| -> WorkerResult<Vec<u32>> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ctx.link_stats().live {
                assert!(Instant::now() < deadline, "the spare never connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(12);
            let mut expected = Vec::new();
            for i in 0..ROUNDS {
                let bytes = ctx.region_mut(region)?.as_bytes_mut();
                bytes[..8].copy_from_slice(&i.to_le_bytes());
                let mut dirty = vec![0usize];
                for _ in 0..rng.random_range(8..48) {
                    let first = rng.random_range(1..PAGES - 4);
                    let n = rng.random_range(1..=4);
                    bytes[first * 4096..(first + n) * 4096].fill(rng.random());
                    dirty.extend(first..first + n);
                }
                expected.push(digest(bytes));
                let cp = ctx.checkpoint()?;
                assert_eq!(cp.strategy, Some(Strategy::Cbw), "checkpoint {i}: {cp:?}");
                // The worst case: every page of the dirty set written at once, each byte of
                // it changed (so a page shipped after this write could not match).
                let bytes = ctx.region_mut(region)?.as_bytes_mut();
                for &p in &dirty {
                    for b in &mut bytes[p * 4096..(p + 1) * 4096] {
                        *b = !*b;
                    }
                }
            }
            // The last writes checkpointed too, so the spare's last image is known.
            expected.push(digest(ctx.region(region)?.as_bytes()));
            ctx.checkpoint()?;
            ctx.flush()?;
            Ok(expected)
        })
        .run()
        .unwrap_or_else(|e| panic!("run: {e}"));
    let expected = match outcome {
        Outcome::Finished { value, .. } => value,
        other => panic!("the run ended as {other:?}"),
    };
    spare
        .join()
        .unwrap_or_else(|_| panic!("the spare panicked"));
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(!seen.is_empty(), "the spare committed nothing");
    // Every committed image is one checkpoint's (coalescing may skip some), in order.
    let mut at = 0;
    for (k, d) in seen.iter().enumerate() {
        match expected[at..].iter().position(|e| e == d) {
            Some(j) => at += j,
            None => panic!(
                "{backend}: image {k} of {} committed by the spare (digest {d:#x}) is no \
                 checkpoint's contents, or out of order (after checkpoint {at})",
                seen.len()
            ),
        }
    }
    assert_eq!(
        seen.last(),
        expected.last(),
        "{backend}: the spare's last image is not the last checkpoint"
    );
    let after = cbw::stats();
    assert!(
        after.fault_copies > before.fault_copies,
        "{backend}: no write ever reached a page before the sender copied it ({before:?} -> \
         {after:?}): the test did not exercise copy-before-write"
    );
}

#[test]
fn cbw_with_uffd_ships_checkpoint_time_contents_though_every_dirty_page_is_rewritten_at_once() {
    rewritten_at_once_still_ships_checkpoint_time_contents(Backend::Uffd, RegionId(961));
}

#[test]
fn cbw_with_mprotect_ships_checkpoint_time_contents_though_every_dirty_page_is_rewritten_at_once() {
    rewritten_at_once_still_ships_checkpoint_time_contents(Backend::Mprotect, RegionId(962));
}

#[test]
fn cbw_with_full_ships_checkpoint_time_contents_though_every_dirty_page_is_rewritten_at_once() {
    rewritten_at_once_still_ships_checkpoint_time_contents(Backend::Full, RegionId(963));
}

/// A `read(2)` into a region right after a cbw checkpoint (its pages read-only until copied)
/// succeeds once `prepare_kernel_write` is called, and the checkpoint still ships the old
/// contents.
#[test]
fn a_kernel_write_after_a_cbw_checkpoint_lands_and_leaves_the_checkpoint_whole() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let region = RegionId(964);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = dir.path().join("cpt.log");
    let src = dir.path().join("src");
    std::fs::write(&src, vec![0xabu8; 8192]).unwrap_or_else(|e| panic!("write src: {e}"));
    let log_in = log.clone();
    let outcome = HotSpare::new("cbw-read")
        .region(region, 64 * 4096)
        .strategy(Strategy::Cbw)
        .mode(Mode::Async)
        .tracker(Backend::Uffd)
        .role(Role::Standalone)
        .link(LinkConfig::File {
            path: log.clone(),
            append: false,
        })
        .worker(
            move |ctx: &mut Context| -> WorkerResult<(u32, Option<u32>)> {
                ctx.checkpoint()?;
                ctx.flush()?;
                ctx.region_mut(region)?.as_bytes_mut()[..8192].fill(7);
                let cp = ctx.checkpoint()?;
                assert_eq!(cp.strategy, Some(Strategy::Cbw), "{cp:?}");
                let expected = digest(ctx.region(region)?.as_bytes());
                ctx.prepare_kernel_write(region, 0, 8192)?;
                let mut f = std::fs::File::open(&src)?;
                std::io::Read::read_exact(
                    &mut f,
                    &mut ctx.region_mut(region)?.as_bytes_mut()[..8192],
                )?;
                assert_eq!(ctx.region(region)?.as_bytes()[8191], 0xab);
                ctx.flush()?;
                let (replica, _) = hslib::transport::file::rebuild(
                    &log_in,
                    hslib::replica::ReplicaConfig::default(),
                )?;
                let got = replica.image().and_then(|i| i.region(region.0)).map(digest);
                Ok((expected, got))
            },
        )
        .run()
        .unwrap_or_else(|e| panic!("run: {e}"));
    match outcome {
        Outcome::Finished {
            value: (expected, got),
            ..
        } => assert_eq!(
            got,
            Some(expected),
            "the log's image is not the contents at the cbw checkpoint"
        ),
        other => panic!("the run ended as {other:?}"),
    }
}
