//! A primary whose spare reads slowly takes 300,000 async checkpoints: the snapshots the
//! sender has no time for are merged into the one waiting for it instead of queueing, so the
//! process's memory stays within a fixed bound (it grew by a staging buffer per checkpoint
//! before), the spare ends with the primary's last state, and once the primary stops the
//! stream catches up within about one write (it used to replay the whole backlog). With
//! `HS_MAX_LAG` the application waits for the sender instead of running ahead of it.

mod common;

use std::time::{Duration, Instant};

use hslib::link::MaxLag;
use hslib::replica::{Replica, ReplicaConfig};
use hslib::session::serve_spare;
use hslib::{Backend, HotSpare, LinkConfig, LinkStats, Mode, Outcome, RegionId, Role};

const REGION: RegionId = RegionId(4);
const CHECKPOINTS: u32 = 300_000;
/// What the slow spare waits before each read.
const READ_DELAY: Duration = Duration::from_micros(500);
/// The most the process may grow by over the run: the region is one page, so this is the
/// pool, the queue and the allocator's slack, many times over.
const GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// What a run against a slow spare measured.
#[derive(Debug)]
struct Run {
    /// Growth of the peak RSS over the checkpoints, KiB.
    grown: u64,
    /// The time the checkpoints took.
    took: Duration,
    /// The time the stream took to catch up after the last one.
    catch_up: Duration,
    /// The link's counters at the end.
    stats: LinkStats,
    /// The most checkpoints pending when `checkpoint()` returned.
    max_pending: u64,
    /// The first four bytes of the spare's image, as the checkpoint's index.
    spare_has: Option<u32>,
}

/// Takes `checkpoints` async checkpoints of a one-page region, each writing its index, with
/// a slow spare attached.
fn against_slow_spare(checkpoints: u32) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("socks");
    let spare_dir = socks.clone();
    let spare = std::thread::spawn(move || {
        let mut slow = common::Delayed {
            inner: common::connect_spare(&spare_dir, "c"),
            before_read: READ_DELAY,
            before_write: Duration::ZERO,
        };
        let mut replica = Replica::new(ReplicaConfig::default());
        let _ = serve_spare(&mut replica, &mut slow, Duration::from_secs(5));
        let first = replica.image()?.region(REGION.0)?.get(..4)?;
        Some(u32::from_le_bytes(first.try_into().ok()?))
    });
    let measured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = std::sync::Arc::clone(&measured);
    let outcome = HotSpare::new("coalesce")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .mode(Mode::Async)
        .spare_wait(Duration::ZERO)
        .link(LinkConfig::Unix {
            dir: socks,
            name: "c".to_owned(),
        })
        .worker(move |ctx| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ctx.link_stats().live {
                assert!(Instant::now() < deadline, "the spare never connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = status_kib("VmHWM");
            let start = Instant::now();
            let mut max_pending = 0;
            for i in 0..checkpoints {
                let bytes = ctx.region_mut(REGION)?.as_bytes_mut();
                bytes[..4].copy_from_slice(&i.to_le_bytes());
                ctx.checkpoint()?;
                max_pending = max_pending.max(ctx.link_stats().pending);
            }
            let took = start.elapsed();
            let flush = Instant::now();
            ctx.flush()?;
            let catch_up = flush.elapsed();
            let grown = status_kib("VmHWM").saturating_sub(before);
            *out.lock().map_err(|_| "poisoned")? = Some(Run {
                grown,
                took,
                catch_up,
                stats: ctx.link_stats(),
                max_pending,
                spare_has: None,
            });
            Ok(())
        })
        .run()
        .expect("the primary's run");
    assert!(matches!(outcome, Outcome::Finished { .. }), "{outcome:?}");
    let mut run = measured
        .lock()
        .expect("lock")
        .take()
        .expect("the worker measured");
    run.spare_has = spare.join().expect("the spare thread");
    eprintln!("{checkpoints} checkpoints: {run:?}");
    run
}

#[test]
fn a_slow_spare_costs_bounded_memory_and_catches_up_at_once() {
    let run = against_slow_spare(CHECKPOINTS);
    assert_eq!(
        run.spare_has,
        Some(CHECKPOINTS - 1),
        "the spare's image is the last checkpoint's"
    );
    assert!(
        run.grown < GROWTH_BOUND_KIB,
        "the peak RSS grew by {} KiB over {CHECKPOINTS} checkpoints",
        run.grown
    );
    assert!(
        run.stats.coalesced > 0,
        "the slow spare never made the sender fall behind: {:?}",
        run.stats
    );
    // Every checkpoint was accounted for: written, or merged into one that was.
    assert_eq!(run.stats.pending, 0, "{:?}", run.stats);
    // Numbers count the checkpoints taken with the spare there, merged ones included.
    assert_eq!(run.stats.last_written, u64::from(CHECKPOINTS));
    // The backlog is one merged snapshot, not every checkpoint the sender had no time for.
    assert!(
        run.catch_up < run.took / 4,
        "catching up took {:?} after {:?} of checkpoints",
        run.catch_up,
        run.took
    );
}

/// The checkpoints `HS_MAX_LAG` allows to be pending in [`max_lag_in_checkpoints_child`].
const MAX_LAG: u64 = 4;

#[test]
fn max_lag_in_checkpoints_makes_checkpoint_wait_for_the_sender() {
    common::run_child(
        "max_lag_in_checkpoints_child",
        &[("HS_MAX_LAG", &MAX_LAG.to_string())],
    );
}

#[test]
#[ignore = "run by max_lag_in_checkpoints_makes_checkpoint_wait_for_the_sender"]
fn max_lag_in_checkpoints_child() {
    if !common::in_child() {
        return;
    }
    let n = 2000;
    let run = against_slow_spare(n);
    assert!(
        run.max_pending <= MAX_LAG,
        "{} checkpoints were pending with HS_MAX_LAG={MAX_LAG}",
        run.max_pending
    );
    assert_eq!(run.spare_has, Some(n - 1));
}

#[test]
fn max_lag_parses_checkpoints_or_microseconds_and_refuses_the_rest() {
    assert_eq!("4".parse::<MaxLag>().ok(), Some(MaxLag::Checkpoints(4)));
    assert_eq!(
        "500us".parse::<MaxLag>().ok(),
        Some(MaxLag::Time(Duration::from_micros(500)))
    );
    for bad in ["", "0", "0us", "-1", "5ms", "us", "4 ", "x"] {
        let e = bad.parse::<MaxLag>().expect_err(bad);
        assert!(
            e.to_string().starts_with(&format!("HS_MAX_LAG={bad:?} ")),
            "{e}"
        );
    }
}
