//! In sync mode a primary's wait for its ack, and its spare's wait for the next checkpoint,
//! spin while input comes quickly ([`HotSpare::spin`], `HS_SPIN_US`): neither sleeps then;
//! with the spinning off each checkpoint sleeps once on each side, in its one `read`; a
//! spare not in sync mode never spins.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hslib::replica::Replica;
use hslib::{Backend, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role};

/// The region of the primary whose spare is a thread here.
const REGION: RegionId = RegionId(5);
/// The region of the primary whose spare is a process (a region of its own: the two tests
/// run at once in this process, and a region lives at an address given by its id).
const CHILD_REGION: RegionId = RegionId(6);
const CHECKPOINTS: u64 = 50;
/// Longer than any answer takes here: a wait this long or less is spun through.
const LONG_SPIN: Duration = Duration::from_secs(2);

/// The voluntary context switches (sleeps woken from) of the thread whose status file is
/// `path`.
fn switches_of(path: &Path) -> u64 {
    let status =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in {status}"))
}

/// The voluntary context switches of every thread of process `pid`.
fn process_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    tasks
        .filter_map(Result::ok)
        .map(|t| switches_of(&t.path().join("status")))
        .sum()
}

fn two_processors() -> bool {
    std::thread::available_parallelism().map_or(1, usize::from) >= 2
}

/// A spare in a thread of this process, answering 1 ms late (its reads do not spin).
fn slow_spare(dir: std::path::PathBuf, name: &'static str) -> std::thread::JoinHandle<Replica> {
    std::thread::spawn(move || {
        // Late answers: the primary always reaches its read first.
        let mut ep = common::Delayed {
            inner: common::connect_spare(&dir, name),
            before_read: Duration::ZERO,
            before_write: Duration::from_millis(1),
        };
        let mut replica = Replica::default();
        let _ =
            hslib::session::serve_spare(&mut replica, &mut ep, hslib::transport::HANDSHAKE_TIMEOUT);
        replica
    })
}

/// A sync primary in this thread: five checkpoints, then [`CHECKPOINTS`] more, `gap` apart,
/// each acked; returns what `count` came to over those (called before and after).
fn sync_primary(
    region: RegionId,
    link: LinkConfig,
    name: &str,
    spin: Duration,
    gap: Duration,
    count: impl Fn() -> u64 + 'static,
) -> u64 {
    let outcome = HotSpare::new(name)
        .region(region, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(link)
        .mode(Mode::Sync)
        .spin(spin)
        .worker(move |ctx| {
            // The first checkpoints are full; the spinning learns from the first answers.
            for i in 0..5u8 {
                ctx.region_mut(region)?.as_bytes_mut()[0] = i;
                ctx.checkpoint()?;
            }
            let before = count();
            let mut acked = 0;
            for i in 0..CHECKPOINTS {
                if !gap.is_zero() {
                    std::thread::sleep(gap);
                }
                ctx.region_mut(region)?.as_bytes_mut()[1] = i as u8;
                acked += u64::from(ctx.checkpoint()?.acked);
            }
            Ok((count() - before, acked))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let (counted, acked) = value;
    assert_eq!(acked, CHECKPOINTS, "every checkpoint was acked");
    counted
}

/// How many times the application's thread slept over the sync checkpoints, with `spin`.
fn primary_sleeps(spin: Duration, name: &'static str) -> u64 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("sock");
    let spare = slow_spare(sock.clone(), name);
    let link = LinkConfig::Unix {
        dir: sock,
        name: name.to_owned(),
    };
    let own = Path::new("/proc/thread-self/status");
    let slept = sync_primary(REGION, link, name, spin, Duration::ZERO, move || {
        switches_of(own)
    });
    let _ = spare.join();
    slept
}

#[test]
fn a_sync_primary_spinning_for_its_acks_does_not_sleep() {
    if !two_processors() {
        return;
    }
    let spinning = primary_sleeps(LONG_SPIN, "spin-on");
    let sleeping = primary_sleeps(Duration::ZERO, "spin-off");
    assert!(
        spinning < CHECKPOINTS / 5,
        "spinning, {CHECKPOINTS} checkpoints slept {spinning} times"
    );
    assert!(
        sleeping >= CHECKPOINTS,
        "not spinning, {CHECKPOINTS} checkpoints slept only {sleeping} times"
    );
}

/// The spare of [`a_spare_spins_for_the_next_checkpoint_in_sync_mode_only`], a process of
/// its own (its region is at the primary's address): configured from the environment.
#[test]
#[ignore = "run by a_spare_spins_for_the_next_checkpoint_in_sync_mode_only"]
fn spin_spare_child() {
    if !common::in_child() {
        return;
    }
    let outcome = HotSpare::new("spin-spare")
        .region(CHILD_REGION, 4096)
        .tracker(Backend::Full)
        .from_env()
        .unwrap_or_else(|e| panic!("environment: {e}"))
        .worker(|_ctx| Ok(()))
        .run()
        .unwrap_or_else(|e| panic!("the spare: {e}"));
    assert!(
        matches!(outcome, Outcome::PrimaryFinished { .. }),
        "{outcome:?}"
    );
}

/// A spare process in `mode` with `spin`: the sleeps of all its threads over the sync
/// checkpoints of a primary that spins for its acks and checkpoints every millisecond.
fn spare_sleeps(mode: &str, spin_us: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("sock");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let child = Command::new(exe)
        .args([
            "spin_spare_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(common::CHILD_ENV, "1")
        .env("HS_ROLE", "spare")
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", &sock)
        .env("HS_SOCKET_NAME", "spin-spare")
        .env("HS_MODE", mode)
        .env("HS_SPIN_US", spin_us)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the spare: {e}"));
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
            }
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(child);
    let pid = child.0.id();
    let link = LinkConfig::Unix {
        dir: sock,
        name: "spin-spare".to_owned(),
    };
    let slept = sync_primary(
        CHILD_REGION,
        link,
        "spin-spare",
        LONG_SPIN,
        Duration::from_millis(1),
        move || process_switches(pid),
    );
    let status = child
        .0
        .wait()
        .unwrap_or_else(|e| panic!("reaping the spare: {e}"));
    assert!(status.success(), "the spare: {status}");
    slept
}

#[test]
fn a_spare_spins_for_the_next_checkpoint_in_sync_mode_only() {
    if !two_processors() {
        return;
    }
    let spinning = spare_sleeps("sync", "1000000");
    let off = spare_sleeps("sync", "0");
    let not_sync = spare_sleeps("async", "1000000");
    assert!(
        spinning < CHECKPOINTS / 5,
        "a sync spare slept {spinning} times over {CHECKPOINTS} checkpoints"
    );
    assert!(
        off >= CHECKPOINTS,
        "a spare not spinning slept only {off} times"
    );
    assert!(
        not_sync >= CHECKPOINTS,
        "a spare in async mode slept only {not_sync} times: it spun"
    );
}
