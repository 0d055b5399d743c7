//! A primary that stops answering (SIGSTOP: it neither dies nor plays) is killed as hung once
//! it has written no status line for `--hang-ms`, and failed over like any death: the run
//! ends with the uninterrupted game's output instead of freezing for ever.

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Guard, children, file, harness, pair, reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

#[test]
fn a_stopped_primary_is_killed_as_hung_and_the_run_ends_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let seed = 11u64;
    // Moves and rotations, a fall now and then: the game lasts the whole script.
    let inputs: Vec<u8> = (0..600)
        .map(|i| if i % 40 == 39 { b'.' } else { b"jkl"[i % 3] })
        .collect();
    let path = file(dir.path(), "script", &inputs);
    let want = reference(&[&"--seed", &seed.to_string(), &"--script", &path]);
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let log = dir.path().join("harness.log");
    let mut cmd = harness();
    cmd.args([
        "run",
        "--seed",
        &seed.to_string(),
        "--hang-ms",
        "1000",
        "--script",
    ])
    .arg(&fifo)
    .env("FAILOVER_HARNESS_LOG", &log)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().expect("the harness starts"));
    // The first half of the script, then the rest once the primary is stopped.
    let (go, wait) = mpsc::channel::<()>();
    let half = inputs.len() / 2;
    let feeder = {
        let fifo = fifo.clone();
        let inputs = inputs.clone();
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the FIFO");
            w.write_all(&inputs[..half]).expect("the first half");
            let _ = wait.recv();
            // The run may have failed meanwhile: then nobody reads.
            let _ = w.write_all(&inputs[half..]);
        })
    };
    let deadline = Instant::now() + common::DEADLINE;
    let stopped = loop {
        assert!(Instant::now() < deadline, "the spare never synced");
        assert!(
            g.0.try_wait().expect("try_wait").is_none(),
            "the run ended before the stop"
        );
        if let (Some(pid), true) = pair(&log) {
            kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP the primary");
            break pid;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    go.send(()).expect("the feeder waits");
    let status = loop {
        if let Some(st) = g.0.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            // Let the stopped game go before the guard kills the harness.
            let _ = kill(Pid::from_raw(stopped as i32), Signal::SIGKILL);
            panic!("the run froze with its primary stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    feeder.join().expect("the feeder");
    let mut out = Vec::new();
    let mut err = String::new();
    use std::io::Read as _;
    g.0.stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("stdout");
    g.0.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(status.success(), "{status}: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
    let text = std::fs::read_to_string(&log).expect("the harness's log");
    assert!(
        text.contains("killed as hung") && text.contains("the spare took over"),
        "the stopped primary was not failed over as hung:\n{text}"
    );
}

#[test]
fn a_stopped_sync_spare_is_dropped_and_replaced_and_the_run_ends_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let seed = 12u64;
    let inputs: Vec<u8> = (0..900)
        .map(|i| if i % 40 == 39 { b'.' } else { b"ljk"[i % 3] })
        .collect();
    let path = file(dir.path(), "script", &inputs);
    let want = reference(&[&"--seed", &seed.to_string(), &"--script", &path]);
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let log = dir.path().join("harness.log");
    let mut cmd = harness();
    cmd.args(["run", "--sync", "--seed", &seed.to_string(), "--script"])
        .arg(&fifo)
        .env("FAILOVER_HARNESS_LOG", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().expect("the harness starts"));
    // A third of the script; a third once the spare is stopped (its first checkpoint waits
    // for the stopped spare's ack until the deadline, then goes on without it); the rest once
    // the harness has replaced the spare the primary let go.
    let (go, wait) = mpsc::channel::<()>();
    let third = inputs.len() / 3;
    let feeder = {
        let fifo = fifo.clone();
        let inputs = inputs.clone();
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open the FIFO");
            w.write_all(&inputs[..third]).expect("the first third");
            for part in [&inputs[third..2 * third], &inputs[2 * third..]] {
                if wait.recv().is_err() {
                    return;
                }
                // The run may have failed meanwhile: then nobody reads.
                let _ = w.write_all(part);
            }
        })
    };
    let deadline = Instant::now() + common::DEADLINE;
    // The spare: the harness's child that is not the primary, once it is synced.
    let spare = loop {
        assert!(Instant::now() < deadline, "the spare never synced");
        assert!(
            g.0.try_wait().expect("try_wait").is_none(),
            "the run ended before the stop"
        );
        if let (Some(primary), true) = pair(&log)
            && let Some(spare) = children(g.0.id()).into_iter().find(|&p| p != primary)
        {
            kill(Pid::from_raw(spare as i32), Signal::SIGSTOP).expect("SIGSTOP the spare");
            break spare;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    go.send(()).expect("the feeder waits");
    let replaced = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("dropped by its primary and did not come back")
    {
        if Instant::now() >= replaced {
            let _ = kill(Pid::from_raw(spare as i32), Signal::SIGKILL);
            panic!(
                "the stopped spare (pid {spare}) was not replaced within 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    go.send(()).expect("the feeder waits");
    let status = loop {
        if let Some(st) = g.0.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(spare as i32), Signal::SIGKILL);
            panic!("the run froze with its sync spare stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    feeder.join().expect("the feeder");
    let mut out = Vec::new();
    let mut err = String::new();
    use std::io::Read as _;
    g.0.stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("stdout");
    g.0.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(status.success(), "{status}: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
    let text = std::fs::read_to_string(&log).expect("the harness's log");
    assert!(
        text.matches("spare synced").count() >= 2,
        "no new spare synced after the stopped one:\n{text}"
    );
}
