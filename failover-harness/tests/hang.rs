//! Games that stop answering (SIGSTOP: they neither die nor play) are dealt with instead of
//! freezing the run for ever: a primary silent for `--hang-ms` is killed as hung and failed
//! over like any death; a sync spare that misses its ack deadline is let go by its primary
//! and replaced by the harness, whether it stays stopped or wakes to read the goodbye that
//! says it was dropped (it then exits 4). Either way the run ends with the uninterrupted
//! game's output.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Guard, children, file, harness, pair, reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// A `run` whose script comes through a FIFO in parts, each released by [`Paced::next_part`].
struct Paced {
    g: Guard,
    go: mpsc::Sender<()>,
    feeder: JoinHandle<()>,
    log: PathBuf,
    /// The games' own log (`TETRIS_LOG`, all of them in one file).
    games_log: PathBuf,
    want: Vec<u8>,
    deadline: Instant,
}

impl Paced {
    /// Starts `run ARGS --seed SEED` on `parts.concat()` (moves and rotations, a fall now and
    /// then: the game lasts the whole script); the first part is written at once.
    fn start(dir: &Path, seed: u64, args: &[&str], parts: Vec<Vec<u8>>) -> Self {
        let path = file(dir, "script", &parts.concat());
        let want = reference(&[&"--seed", &seed.to_string(), &"--script", &path]);
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let log = dir.join("harness.log");
        let games_log = dir.join("games.log");
        let mut cmd = harness();
        cmd.args(["run", "--seed", &seed.to_string()])
            .args(args)
            .arg("--script")
            .arg(&fifo)
            .env("FAILOVER_HARNESS_LOG", &log)
            .env("TETRIS_LOG", &games_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let g = Guard(cmd.spawn().expect("the harness starts"));
        let (go, wait) = mpsc::channel::<()>();
        let feeder = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the FIFO");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 && wait.recv().is_err() {
                    return;
                }
                // The run may have failed meanwhile: then nobody reads.
                let _ = w.write_all(part);
            }
        });
        Self {
            g,
            go,
            feeder,
            log,
            games_log,
            want,
            deadline: Instant::now() + common::DEADLINE,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 30 s) until `log` (the harness's or the games') holds `text`; the stopped
    /// game `stopped` is killed if it never does.
    fn wait_for(&self, games: bool, text: &str, stopped: u32) {
        let path = if games { &self.games_log } else { &self.log };
        let until = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(text)
        {
            if Instant::now() >= until {
                let _ = kill(Pid::from_raw(stopped as i32), Signal::SIGKILL);
                panic!(
                    "no {text:?} within 30 s:\n{}\n--- games:\n{}",
                    self.log_text(),
                    std::fs::read_to_string(&self.games_log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `pick` finds a pid in the harness's log and children, then SIGSTOPs it.
    fn stop(&mut self, what: &str, mut pick: impl FnMut(&Path, u32) -> Option<u32>) -> u32 {
        loop {
            assert!(Instant::now() < self.deadline, "no {what} to stop");
            assert!(
                self.g.0.try_wait().expect("try_wait").is_none(),
                "the run ended before the {what} was stopped"
            );
            if let Some(pid) = pick(&self.log, self.g.0.id()) {
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
                return pid;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn next_part(&self) {
        self.go.send(()).expect("the feeder waits");
    }

    /// Waits for the run's end (killing the stopped game `stopped` if it never comes) and
    /// checks it printed the uninterrupted game's line; the harness's log.
    fn finish(mut self, stopped: u32) -> String {
        let status = loop {
            if let Some(st) = self.g.0.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() >= self.deadline {
                let _ = kill(Pid::from_raw(stopped as i32), Signal::SIGKILL);
                panic!("the run froze with a game stopped:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(self.go);
        self.feeder.join().expect("the feeder");
        let mut out = Vec::new();
        let mut err = String::new();
        let g = &mut self.g.0;
        g.stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut out)
            .expect("stdout");
        g.stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("stderr");
        assert!(status.success(), "{status}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&self.want)
        );
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `len` moves and rotations (in the order `keys`), a fall every 40th input.
fn moves(keys: &[u8; 3], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 40 == 39 { b'.' } else { keys[i % 3] })
        .collect()
}

#[test]
fn a_stopped_primary_is_killed_as_hung_and_the_run_ends_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let script = moves(b"jkl", 600);
    let parts = vec![script[..300].to_vec(), script[300..].to_vec()];
    let mut run = Paced::start(dir.path(), 11, &["--hang-ms", "1000"], parts);
    let stopped = run.stop("synced primary", |log, _| match pair(log) {
        (Some(pid), true) => Some(pid),
        _ => None,
    });
    run.next_part();
    let log = run.finish(stopped);
    assert!(
        log.contains("killed as hung") && log.contains("the spare took over"),
        "the stopped primary was not failed over as hung:\n{log}"
    );
}

#[test]
fn a_stopped_sync_spare_is_dropped_and_replaced_and_the_run_ends_exactly() {
    let dir = TempDir::new().expect("tempdir");
    // A third of the script; a third once the spare is stopped (its first checkpoint waits
    // for the stopped spare's ack until the deadline, then goes on without it); the rest once
    // the harness has replaced the spare the primary let go.
    let script = moves(b"ljk", 900);
    let parts = script.chunks(300).map(<[u8]>::to_vec).collect();
    let mut run = Paced::start(dir.path(), 12, &["--sync"], parts);
    let stopped = run.stop("synced spare", |log, harness| match pair(log) {
        (Some(primary), true) => children(harness).into_iter().find(|&p| p != primary),
        _ => None,
    });
    run.next_part();
    let replaced = Instant::now() + Duration::from_secs(30);
    while !run
        .log_text()
        .contains("dropped by its primary and did not come back")
    {
        if Instant::now() >= replaced {
            let _ = kill(Pid::from_raw(stopped as i32), Signal::SIGKILL);
            panic!(
                "the stopped spare (pid {stopped}) was not replaced within 30 s:\n{}",
                run.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    run.next_part();
    let log = run.finish(stopped);
    assert!(
        log.matches("spare synced").count() >= 2,
        "no new spare synced after the stopped one:\n{log}"
    );
}

#[test]
fn a_dropped_sync_spare_that_wakes_ends_saying_so_and_is_replaced() {
    // As above, but the stopped spare is let go on as soon as its primary dropped it: it
    // reads the goodbye that says so and exits 4 (not 0, which would tell the harness the
    // game was over), and the harness starts another spare for it, before the deadline for
    // a spare that does not come back.
    let dir = TempDir::new().expect("tempdir");
    let script = moves(b"klj", 900);
    let parts = script.chunks(300).map(<[u8]>::to_vec).collect();
    let mut run = Paced::start(dir.path(), 13, &["--sync"], parts);
    let stopped = run.stop("synced spare", |log, harness| match pair(log) {
        (Some(primary), true) => children(harness).into_iter().find(|&p| p != primary),
        _ => None,
    });
    run.next_part();
    run.wait_for(
        true,
        "the spare missed its ack deadline: told goodbye and dropped",
        stopped,
    );
    kill(Pid::from_raw(stopped as i32), Signal::SIGCONT).expect("SIGCONT");
    run.wait_for(false, "status=exit status: 4", stopped);
    run.next_part();
    let log = run.finish(stopped);
    let ended = log
        .lines()
        .find(|l| l.contains("the spare ended"))
        .unwrap_or_default();
    assert!(
        ended.contains(&format!("pid={stopped}")) && ended.contains("exit status: 4"),
        "the dropped spare's end: {ended:?}\n{log}"
    );
    assert!(
        !log.contains("did not come back"),
        "replaced at the deadline, not at its exit:\n{log}"
    );
    let after = log.split("the spare ended").nth(1).unwrap_or_default();
    assert!(
        after.contains("spare started") && after.contains("spare synced"),
        "no new spare synced after the dropped one ended:\n{log}"
    );
}
