//! Lazy mode (`HS_MODE=lazy`, [`HotSpare::lazy`]): `checkpoint()` only copies and
//! publishes; the sender ships the newest checkpoint on its own schedule, so the spare
//! converges to the last checkpoint without the application doing anything more. Also the
//! settings: `HS_MODE=lazy`, `HS_MAX_LAG_US` (lazy mode's bound, refused with another mode
//! or out of range) and `HS_MAX_LAG` (the back-pressure bound: in lazy mode a time must
//! exceed the lazy bound).
//!
//! The kill-and-resume round trip in lazy mode is in `roundtrip.rs`.

mod common;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hslib::replica::Replica;
use hslib::{Backend, HotSpare, HsError, LinkConfig, Mode, Outcome, RegionId, Role, Strategy};

const REGION: RegionId = RegionId(77);

/// Held by the tests that open a link: `Link::open` reads `HS_MAX_LAG`, which one of them
/// sets; and the region is mapped at one fixed address, which one test at a time can hold.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
const PAGES: usize = 3;

fn vars(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let owned: Vec<(String, OsString)> = list
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    move |name| {
        owned
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn mode_of(list: &[(&str, &str)]) -> Result<String, HsError> {
    HotSpare::new("lazy-env")
        .from_vars(vars(list))
        .map(|hs| format!("{hs:?}"))
}

#[test]
fn hs_mode_lazy_takes_its_bound_from_hs_max_lag_us_and_refuses_bad_ones() {
    let dbg = mode_of(&[("HS_MODE", "lazy")]).unwrap_or_else(|e| panic!("lazy: {e}"));
    assert!(
        dbg.contains("Lazy { max_lag: 1ms }"),
        "the default bound is 1000 us: {dbg}"
    );
    let dbg = mode_of(&[("HS_MODE", "lazy"), ("HS_MAX_LAG_US", "250")])
        .unwrap_or_else(|e| panic!("lazy 250: {e}"));
    assert!(dbg.contains("Lazy { max_lag: 250µs }"), "{dbg}");
    for (list, what) in [
        (vec![("HS_MODE", "lazy"), ("HS_MAX_LAG_US", "0")], "zero"),
        (
            vec![("HS_MODE", "lazy"), ("HS_MAX_LAG_US", "1ms")],
            "a unit",
        ),
        (
            vec![("HS_MODE", "lazy"), ("HS_MAX_LAG_US", "10000001")],
            "above 10 s",
        ),
        (
            vec![("HS_MODE", "async"), ("HS_MAX_LAG_US", "500")],
            "with async mode",
        ),
        (vec![("HS_MAX_LAG_US", "500")], "with the default mode"),
        (vec![("HS_MODE", "slow")], "an unknown mode"),
    ] {
        let e = mode_of(&list).expect_err(what);
        let text = e.to_string();
        assert!(
            text.contains("HS_MAX_LAG_US") || text.contains("HS_MODE"),
            "{what}: {text}"
        );
    }
}

#[test]
fn hs_spin_us_sets_how_long_reads_look_for_input_and_refuses_bad_ones() {
    let dbg = mode_of(&[]).unwrap_or_else(|e| panic!("defaults: {e}"));
    assert!(
        dbg.contains("spin: 100µs"),
        "the default spin is 100 us: {dbg}"
    );
    let dbg = mode_of(&[("HS_SPIN_US", "0")]).unwrap_or_else(|e| panic!("0: {e}"));
    assert!(dbg.contains("spin: 0ns"), "0 turns it off: {dbg}");
    let dbg = mode_of(&[("HS_SPIN_US", "250")]).unwrap_or_else(|e| panic!("250: {e}"));
    assert!(dbg.contains("spin: 250µs"), "{dbg}");
    for (v, what) in [
        ("-1", "negative"),
        ("1ms", "a unit"),
        ("1000001", "above 1 s"),
    ] {
        let e = mode_of(&[("HS_SPIN_US", v)]).expect_err(what);
        let text = e.to_string();
        assert!(
            text.contains("HS_SPIN_US") && text.contains(v),
            "{what}: {text}"
        );
    }
}

fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("sock");
    (dir, sock)
}

/// A spare in a thread of this process: connects (retrying while the primary starts) and
/// replicates until the stream ends; returns the replica.
fn spare(dir: PathBuf, name: &'static str) -> std::thread::JoinHandle<Replica> {
    std::thread::spawn(move || {
        let mut ep = common::connect_spare(&dir, name);
        let mut replica = Replica::default();
        let _ =
            hslib::session::serve_spare(&mut replica, &mut ep, hslib::transport::HANDSHAKE_TIMEOUT);
        replica
    })
}

/// A lazy primary of the test region, with the bound `lag`, listening at `name` in `dir`.
fn lazy_primary(dir: PathBuf, name: &str, lag: Duration) -> HotSpare {
    HotSpare::new("lazy")
        .region(REGION, PAGES * 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir,
            name: name.to_owned(),
        })
        .lazy(lag)
}

/// Checkpoints until the spare holds a checkpoint of ours (20 s at most).
fn until_synced(ctx: &mut hslib::Context) -> hslib::WorkerResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctx.link_stats().synced {
        if Instant::now() > deadline {
            return Err("the spare never synced".into());
        }
        std::thread::sleep(Duration::from_millis(1));
        ctx.checkpoint()?;
    }
    Ok(())
}

/// Joins the spare thread and checks that its image of the region is `image`.
fn assert_spare_holds(spare: std::thread::JoinHandle<Replica>, image: &[u8]) {
    let replica = spare
        .join()
        .unwrap_or_else(|_| panic!("the spare panicked"));
    let got = replica
        .image()
        .and_then(|i| i.region(REGION.0))
        .unwrap_or_else(|| panic!("the spare holds no image of the region"));
    assert_eq!(got, image, "the spare's image is the last checkpoint's");
}

#[test]
fn a_lazy_checkpoint_reaches_the_spare_without_the_application_doing_more() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let lag = Duration::from_millis(300);
    let spare = spare(dir.clone(), "lazy");
    let outcome = lazy_primary(dir, "lazy", lag)
        .worker(move |ctx| {
            until_synced(ctx)?;
            let before = ctx.link_stats();
            ctx.region_mut(REGION)?.as_bytes_mut().fill(0xA5);
            ctx.checkpoint()?;
            ctx.region_mut(REGION)?.as_bytes_mut()[4096..].fill(0x5A);
            ctx.checkpoint()?;
            let published = ctx.link_stats();
            let taken = Instant::now();
            // Nothing more from the application: the sender ships on its own schedule.
            let shipped = loop {
                let s = ctx.link_stats();
                if s.pending == 0 && s.acked == s.last_written && s.acked > before.acked {
                    break taken.elapsed();
                }
                if taken.elapsed() > Duration::from_secs(20) {
                    return Err(format!("the spare never caught up: {s:?}").into());
                }
                std::thread::sleep(Duration::from_micros(200));
            };
            Ok((
                before,
                published,
                shipped,
                ctx.region(REGION)?.as_bytes().to_vec(),
            ))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (before, published, shipped, image) = value;
    // The second checkpoint found the first still waiting (checkpoint() woke no one; the
    // sender looks every 300 ms) and was merged into it.
    assert!(
        published.pending >= 1 && published.coalesced > before.coalesced,
        "before {before:?}, published {published:?}"
    );
    println!("converged {shipped:?} after the last checkpoint (bound {lag:?})");
    assert_spare_holds(spare, &image);
}

#[test]
fn a_back_pressure_time_within_the_lazy_bound_is_refused() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    // SAFETY: the other test that reads the environment (through `Link::open`) waits for
    // the lock held here.
    unsafe { std::env::set_var("HS_MAX_LAG", "500us") };
    let run = HotSpare::new("lazy-bp")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir,
            name: "bp".to_owned(),
        })
        .mode(Mode::LAZY)
        .worker(|_| Ok(()))
        .run();
    // SAFETY: as above.
    unsafe { std::env::remove_var("HS_MAX_LAG") };
    let e = run.expect_err("HS_MAX_LAG=500us under a 1000 us lazy bound");
    let text = e.to_string();
    assert!(
        text.contains("HS_MAX_LAG=500us") && text.contains("HS_MAX_LAG_US=1000"),
        "{text}"
    );
}

/// Voluntary context switches of this process's `hs-sender` threads so far: each is one time
/// a sender went to sleep (and so one wake-up).
fn sender_sleeps() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap_or_else(|e| panic!("tasks: {e}"));
    let mut total = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "hs-sender" {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn an_idle_lazy_sender_parks_and_the_next_checkpoint_wakes_it() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let spare = spare(dir.clone(), "parks");
    let outcome = lazy_primary(dir, "parks", Duration::from_millis(1))
        // No heartbeats: nothing wakes a parked sender but the application's next snapshot.
        .heartbeat(None)
        .worker(move |ctx| {
            until_synced(ctx)?;
            // Idle past the sender's parking time (1 s), then count its sleeps: looking every
            // millisecond it would sleep ~500 times in 500 ms.
            std::thread::sleep(Duration::from_millis(1500));
            let before = sender_sleeps();
            std::thread::sleep(Duration::from_millis(500));
            let idle_sleeps = sender_sleeps() - before;
            // The next checkpoint reaches the spare: a parked sender does not look, so only
            // the wake-up the checkpoint sends can ship it.
            let before = ctx.link_stats();
            ctx.region_mut(REGION)?.as_bytes_mut().fill(0x3C);
            ctx.checkpoint()?;
            let taken = Instant::now();
            loop {
                let s = ctx.link_stats();
                if s.pending == 0 && s.acked == s.last_written && s.acked > before.acked {
                    break;
                }
                if taken.elapsed() > Duration::from_secs(20) {
                    return Err(format!("the parked sender never shipped: {s:?}").into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((idle_sleeps, ctx.region(REGION)?.as_bytes().to_vec()))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (idle_sleeps, image) = value;
    assert!(
        idle_sleeps < 50,
        "the idle sender slept {idle_sleeps} times in 500 ms: it never parked"
    );
    assert_spare_holds(spare, &image);
}

/// Writes `byte` over the region's page `page` and checkpoints; returns what it did.
fn write_and_checkpoint(
    ctx: &mut hslib::Context,
    page: usize,
    byte: u8,
) -> Result<hslib::Checkpoint, HsError> {
    ctx.region_mut(REGION)?.as_bytes_mut()[page * 4096..(page + 1) * 4096].fill(byte);
    ctx.checkpoint()
}

/// Waits until the spare acked everything taken so far (20 s at most).
fn until_caught_up(ctx: &hslib::Context) -> hslib::WorkerResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ctx.link_stats();
        if s.synced && s.pending == 0 && s.acked == s.last_written {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the spare never caught up: {s:?}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn steady_lazy_copy_checkpoints_only_publish_and_the_spare_holds_the_last() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let spare = spare(dir.clone(), "steady");
    let outcome = lazy_primary(dir, "steady", Duration::from_micros(200))
        .strategy(Strategy::Copy)
        .worker(move |ctx| {
            until_synced(ctx)?;
            // Once synced, with the plan standing, every checkpoint only publishes (back to
            // back, and with pauses that let the sender take what waits).
            let mut steady = Vec::new();
            for i in 0..200u8 {
                steady.push(write_and_checkpoint(ctx, usize::from(i) % PAGES, i)?);
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            until_caught_up(ctx)?;
            Ok((steady, ctx.region(REGION)?.as_bytes().to_vec()))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (steady, image) = value;
    for (i, c) in steady.iter().enumerate() {
        assert!(
            !c.planned && !c.full && c.pages == PAGES as u64 && c.strategy == Some(Strategy::Copy),
            "checkpoint {i} after the sync was not a steady publish: {c:?}"
        );
    }
    assert_spare_holds(spare, &image);
}

#[test]
fn after_steady_lazy_checkpoints_a_new_spare_gets_a_full_one_then_steady_ones_again() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let first_spare = spare(dir.clone(), "replaced");
    let spare_dir = dir.clone();
    let outcome = lazy_primary(dir, "replaced", Duration::from_micros(200))
        .strategy(Strategy::Copy)
        .worker(move |ctx| {
            until_synced(ctx)?;
            for i in 0..20u8 {
                write_and_checkpoint(ctx, 1, i)?;
            }
            if write_and_checkpoint(ctx, 1, 0xEE)?.planned {
                return Err("the checkpoints before the new spare were not steady".into());
            }
            until_caught_up(ctx)?;
            let sessions = ctx.link_stats().sessions;
            // A second spare takes the first one's place.
            let second_spare = spare(spare_dir, "replaced");
            let deadline = Instant::now() + Duration::from_secs(20);
            while ctx.link_stats().sessions == sessions {
                if Instant::now() > deadline {
                    return Err("the second spare never connected".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // Until the new spare's full checkpoint is taken, none is steady: the session
            // the last plan was for is over.
            let mut until_full = Vec::new();
            loop {
                let c = write_and_checkpoint(ctx, 2, 0x77)?;
                until_full.push(c);
                if c.full || until_full.len() > 10_000 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            until_synced(ctx)?;
            let mut after = Vec::new();
            for i in 0..20u8 {
                after.push(write_and_checkpoint(ctx, 0, i)?);
            }
            until_caught_up(ctx)?;
            Ok((
                until_full,
                after,
                second_spare,
                ctx.region(REGION)?.as_bytes().to_vec(),
            ))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (until_full, after, second_spare, image) = value;
    assert!(
        until_full.iter().all(|c| c.planned),
        "a checkpoint between the new spare and its full one was steady: {until_full:?}"
    );
    assert!(until_full.last().is_some_and(|c| c.full), "{until_full:?}");
    assert!(
        after.iter().skip(1).all(|c| !c.planned),
        "steady publishes did not resume: {after:?}"
    );
    assert_spare_holds(second_spare, &image);
    // The first spare's stream ended when the second one connected.
    let _ = first_spare.join();
}

#[test]
fn steady_lazy_checkpoints_after_a_metadata_change_carry_the_new_metadata() {
    let _env = env_lock();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = dir.path().join("checkpoints.log");
    let outcome = HotSpare::new("lazy-meta")
        .region(REGION, PAGES * 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::File {
            path: log.clone(),
            append: false,
        })
        .lazy(Duration::from_micros(200))
        .strategy(Strategy::Copy)
        .worker(move |ctx| {
            let mut steady = 0;
            for phase in [1u32, 2] {
                // A new blob: the next checkpoint is planned (the metadata is encoded again),
                // and the steady ones after it reuse pooled snapshots that held the last
                // phase's metadata.
                ctx.blobs().put("phase", &phase)?;
                until_synced(ctx)?;
                write_and_checkpoint(ctx, 0, 0)?;
                for i in 0..40u8 {
                    steady += usize::from(!write_and_checkpoint(ctx, 1, i)?.planned);
                    // Time for the sender to write most of them, each from its own pooled
                    // snapshot.
                    std::thread::sleep(Duration::from_millis(1));
                }
                ctx.flush()?;
            }
            Ok(steady)
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value: steady, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    // Every 16th checkpoint is planned, to look at the log's size.
    assert!(
        steady >= 80 - 80 / 16 - 1,
        "only {steady} of 80 checkpoints were steady publishes"
    );
    // Every checkpoint written carries the phase it was taken in: none after the change
    // carries the old one.
    let mut file = std::fs::File::open(&log).unwrap_or_else(|e| panic!("the log: {e}"));
    let mut phases = Vec::new();
    while let Some(frame) =
        hslib::wire::read_frame(&mut file).unwrap_or_else(|e| panic!("a frame: {e}"))
    {
        if let hslib::wire::Body::Metadata(m) = frame.body {
            phases.push(m.blobs.get("phase").map_or(0, |blob| {
                postcard::from_bytes::<u32>(blob).unwrap_or_else(|e| panic!("{e}"))
            }));
        }
    }
    let changed = phases.iter().position(|&p| p == 2).unwrap_or(phases.len());
    assert!(
        changed > 1 && phases.len() - changed > 10,
        "the phase of each checkpoint written: {phases:?}"
    );
    assert!(
        phases[changed..].iter().all(|&p| p == 2),
        "a checkpoint after the change carried the old metadata: {phases:?}"
    );
}

#[test]
fn with_the_adaptive_strategy_lazy_checkpoints_only_publish_once_its_model_copies_only() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let spare = spare(dir.clone(), "adaptive");
    // The library's default strategy.
    let outcome = lazy_primary(dir, "adaptive", Duration::from_micros(200))
        .worker(move |ctx| {
            let model = ctx.calibrate();
            until_synced(ctx)?;
            let mut taken = Vec::new();
            for i in 0..50u8 {
                taken.push(write_and_checkpoint(ctx, usize::from(i) % PAGES, i)?);
            }
            until_caught_up(ctx)?;
            Ok((model, taken, ctx.region(REGION)?.as_bytes().to_vec()))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (model, taken, image) = value;
    // Which way it goes depends on what this machine's calibration measured. A model that
    // copies only from the start skips the planning at once; one that may try another
    // strategy (a cbw snapshot often calibrates below a few pages' copy, with its fixed
    // cost) times its checkpoints until what it observes settles it on copying, and from
    // then on it copies only: no checkpoint of another strategy ever skips the planning.
    let copies_only = model.copies_only((PAGES * 4096) as u64);
    println!("copies only at first: {copies_only} ({model:?})");
    let first_steady = taken.iter().position(|c| !c.planned);
    if copies_only {
        assert_eq!(first_steady, Some(0), "{taken:?}");
    }
    if let Some(first) = first_steady {
        assert!(
            taken[first..]
                .iter()
                .all(|c| !c.planned && c.strategy == Some(Strategy::Copy)),
            "once settled on copying, every checkpoint is a steady copy: {taken:?}"
        );
    }
    assert!(
        taken
            .iter()
            .all(|c| c.strategy == Some(Strategy::Copy) || c.planned),
        "a checkpoint of another strategy skipped the planning: {taken:?}"
    );
    assert_spare_holds(spare, &image);
}

#[test]
fn a_lazy_checkpoint_a_cost_model_learns_from_is_always_planned() {
    let _env = env_lock();
    let (_keep, dir) = socket_dir();
    let spare = spare(dir.clone(), "learns");
    // 64 pages: the model learns the per-byte cost of a copy from each one, so it times
    // every checkpoint. (The copy strategy with a model made by `calibrate`: the adaptive
    // one would try forks and cbw as well.)
    let outcome = HotSpare::new("lazy-learns")
        .region(REGION, 64 * 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir,
            name: "learns".to_owned(),
        })
        .lazy(Duration::from_micros(200))
        .strategy(Strategy::Copy)
        .worker(move |ctx| {
            ctx.calibrate();
            until_synced(ctx)?;
            let mut taken = Vec::new();
            for i in 0..20u8 {
                taken.push(write_and_checkpoint(ctx, usize::from(i), i)?);
            }
            until_caught_up(ctx)?;
            Ok((taken, ctx.region(REGION)?.as_bytes().to_vec()))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (taken, image) = value;
    assert!(
        taken.iter().all(|c| c.planned),
        "a checkpoint the model learns from skipped the planning: {taken:?}"
    );
    assert_spare_holds(spare, &image);
}
