//! Process hygiene: whichever way a `run` ends but SIGKILL (its end, SIGTERM, SIGINT,
//! SIGHUP), its games are gone and its session directory removed; a harness SIGKILLed at
//! any moment (also while it forks a spare) leaves no game behind; the directory a
//! SIGKILLed harness had to leave is swept by the next session.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Guard, harness};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(60);
/// Orphaned games would live on for as long as their connect retry (about 10 s): they must
/// be gone well before.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(5);
const MARK: &str = "HOTSPARE_HYGIENE_MARK";

/// Pids of live processes whose environment holds `MARK=mark` (the harness's games inherit
/// it).
fn marked(mark: &str) -> Vec<u32> {
    let want = format!("{MARK}={mark}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn sessions(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .expect("the test's TMPDIR")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hotspare-harness-"))
        .collect()
}

/// An endless `run` with a failover every 40 inputs (spares forked all the time), in `tmp`.
fn endless_run(tmp: &Path, mark: &str) -> Guard {
    let kills: Vec<String> = (1..500).map(|i| (i * 40).to_string()).collect();
    let mut cmd = harness();
    cmd.args([
        "run",
        "--seed",
        "3",
        "--script",
        "/dev/zero",
        "--kill-after",
    ])
    .arg(kills.join(","))
    .env("TMPDIR", tmp)
    .env(MARK, mark)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Guard(cmd.spawn().expect("the harness starts"))
}

fn poll_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn term_int_and_hup_end_a_run_with_its_games_and_its_directory() {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let tmp = TempDir::new().expect("tempdir");
        let mark = format!("sig-{}-{}", sig.as_str(), std::process::id());
        let mut g = endless_run(tmp.path(), &mark);
        poll_until("a game and its spare", DEADLINE, || {
            marked(&mark).len() >= 3
        });
        let pid = Pid::from_raw(i32::try_from(g.0.id()).expect("pid"));
        kill(pid, sig).expect("signal the harness");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = g.0.try_wait().expect("wait") {
                break st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{sig:?}: the harness did not end"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(!status.success(), "{sig:?}: {status:?}");
        assert_eq!(sessions(tmp.path()), Vec::<String>::new(), "{sig:?}");
        poll_until("the games gone", ORPHAN_DEADLINE, || {
            marked(&mark).is_empty()
        });
    }
}

#[test]
fn a_harness_killed_at_any_moment_leaves_no_game_and_its_directory_is_swept_next_time() {
    let tmp = TempDir::new().expect("tempdir");
    let mark = format!("kill-{}", std::process::id());
    let mut rng = tetris::rng::SplitMix64::new(9);
    for i in 0..60 {
        let mut g = endless_run(tmp.path(), &mark);
        // Past the start, while spares are forked one after another.
        std::thread::sleep(Duration::from_millis(30 + rng.next_u64() % 300));
        g.0.kill().expect("SIGKILL the harness");
        g.0.wait().expect("reap the harness");
        poll_until(
            &format!("no game left after harness kill {i}"),
            ORPHAN_DEADLINE,
            || marked(&mark).is_empty(),
        );
    }
    assert!(
        !sessions(tmp.path()).is_empty(),
        "SIGKILL leaves its directory"
    );
    let script = common::file(tmp.path(), "short", b"jjlq");
    let mut cmd = harness();
    cmd.args(["run", "--seed", "1", "--script"])
        .arg(&script)
        .env("TMPDIR", tmp.path());
    let out = common::output(cmd);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(sessions(tmp.path()), Vec::<String>::new());
}
