//! `failover-harness run` whose games are SIGKILLed by something else than the harness, at
//! random moments, while it is still writing input: the engine, not the kill plan, decides
//! what a death means. A dead primary is failed over and the rest of the script goes to the
//! promoted game (the output is the uninterrupted game's); a dead spare is replaced; a death
//! that leaves no spare holding a checkpoint ends the run with a plain "the game is lost" and
//! a non-zero status, never a zero exit with a truncated game. The script is streamed: one
//! that never ends is played as it comes.

mod common;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Guard, children, file, harness, pair, reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tetris::rng::SplitMix64;

/// Inputs enough that the harness is still writing them for a few seconds: more than a
/// pipe holds (64 KiB), so a primary dies while the harness writes to it.
const LONG: usize = 100_000;

/// A script of `len` inputs that keeps a game going for long: moves and rotations, and a
/// timer expiry only now and then, so the well fills slowly.
fn long_script(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| match rng.below(2000) {
            0 => b'.',
            n => b"jkl"[(n % 3) as usize],
        })
        .collect()
}

struct Ran {
    success: bool,
    stdout: Vec<u8>,
    stderr: String,
    kills: u32,
}

/// Inputs fed per [`PACE`]: the script reaches the harness over about two seconds however
/// fast the games are, so the kills land while the harness is still writing input.
const CHUNK: usize = 1000;
/// See [`CHUNK`].
const PACE: Duration = Duration::from_millis(20);

/// Feeds `script` into a new FIFO at `fifo`, [`CHUNK`] inputs per [`PACE`], then closes it.
fn paced_fifo(fifo: &Path, script: Vec<u8>) -> std::thread::JoinHandle<()> {
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let fifo = fifo.to_owned();
    std::thread::spawn(move || {
        // Blocks until the harness opens the script.
        let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
            return;
        };
        for chunk in script.chunks(CHUNK) {
            // The run may have ended (a lost game): the rest has no reader.
            if w.write_all(chunk).is_err() {
                return;
            }
            std::thread::sleep(PACE);
        }
    })
}

/// Runs `run` on `script`, fed at a pace through a FIFO, and, until it ends, calls `pick`
/// every 40-200 ms (drawn from `seed`) to choose a pid to SIGKILL.
fn run_with_kills(
    dir: &Path,
    seed: u64,
    script: &Path,
    mut pick: impl FnMut(u32, &Path, &mut SplitMix64) -> Option<u32>,
) -> Ran {
    let log = dir.join(format!("harness-{seed}.log"));
    let _ = std::fs::remove_file(&log);
    let fifo = dir.join(format!("fifo-{seed}"));
    let _ = std::fs::remove_file(&fifo);
    let feeder = paced_fifo(&fifo, std::fs::read(script).expect("the script"));
    let mut cmd = harness();
    cmd.args(["run", "--seed", &seed.to_string(), "--script"])
        .arg(&fifo)
        .env("FAILOVER_HARNESS_LOG", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().expect("the harness starts"));
    let (stdout, stderr) = readers(&mut g);
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut kills = 0;
    let deadline = Instant::now() + common::DEADLINE;
    let mut next = Instant::now() + Duration::from_millis(40 + rng.below(160));
    let status = loop {
        if let Some(st) = g.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "the run did not end");
        if Instant::now() >= next
            && let Some(pid) = pick(g.0.id(), &log, &mut rng)
        {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                kills += 1;
            }
            next = Instant::now() + Duration::from_millis(40 + rng.below(160));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Unblocks a feeder still waiting for a reader (the run ended before it opened the FIFO).
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    let _ = feeder.join();
    Ran {
        success: status.success(),
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
        kills,
    }
}

type Reader<T> = std::thread::JoinHandle<T>;

fn readers(g: &mut Guard) -> (Reader<Vec<u8>>, Reader<String>) {
    use std::io::Read as _;
    let mut out = g.0.stdout.take().expect("stdout");
    let mut err = g.0.stderr.take().expect("stderr");
    (
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    )
}

#[test]
fn a_primary_killed_from_outside_while_input_is_written_is_failed_over_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let seed = 1u64;
    let s = long_script(seed, LONG);
    let path = file(dir.path(), &format!("long-{seed}"), &s);
    let want = reference(&[&"--seed", &seed.to_string(), &"--script", &path]);
    // The primary, whenever the log says its spare holds a checkpoint, until the script
    // has ended: a game that has finished says goodbye to its spare before it prints its
    // result, and a kill in between loses the result (the run says so and fails).
    let ran = run_with_kills(dir.path(), seed, &path, |_, log, _| match pair(log) {
        (Some(p), true) => Some(p),
        _ => None,
    });
    let log = std::fs::read_to_string(dir.path().join(format!("harness-{seed}.log")))
        .expect("the harness's log");
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        ran.success,
        "seed {seed}: {}\nthe log's end:\n{}",
        ran.stderr,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&want),
        "seed {seed}: after {} kills",
        ran.kills
    );
    assert!(
        ran.kills >= 2,
        "seed {seed}: the run was over too soon to kill"
    );
    eprintln!(
        "seed {seed}: {} kills, {} failovers, {} writes found the primary gone",
        ran.kills,
        log.matches("the spare took over").count(),
        log.matches("no longer reads its input").count()
    );
}

#[test]
fn games_killed_from_outside_at_random_resume_exactly_or_say_the_game_is_lost() {
    let dir = TempDir::new().expect("tempdir");
    let mut exact = 0;
    for seed in [3u64, 4, 5] {
        let s = long_script(seed, LONG);
        let path = file(dir.path(), &format!("any-{seed}"), &s);
        let want = reference(&[&"--seed", &seed.to_string(), &"--script", &path]);
        // Any game, primary or spare, synced or not; every third chance, at most four times
        // a run (more and closer kills lose nearly every game: a primary killed while its new
        // spare is still syncing is a lost game, which is what the else branch checks).
        let mut chance = 0;
        let mut killed = 0;
        let ran = run_with_kills(dir.path(), seed, &path, |harness, _, rng| {
            chance += 1;
            if chance % 3 != 0 || killed >= 4 {
                return None;
            }
            let kids = children(harness);
            if kids.is_empty() {
                return None;
            }
            killed += 1;
            Some(kids[rng.below(kids.len() as u64) as usize])
        });
        if ran.success {
            assert_eq!(
                String::from_utf8_lossy(&ran.stdout),
                String::from_utf8_lossy(&want),
                "seed {seed}: after {} kills",
                ran.kills
            );
            exact += 1;
        } else {
            assert!(ran.stdout.is_empty(), "seed {seed}: {:?}", ran.stdout);
            assert!(
                ran.stderr.contains("the game is lost"),
                "seed {seed}: {}",
                ran.stderr
            );
        }
    }
    assert!(exact > 0, "no run survived its kills");
}

#[test]
fn both_games_killed_at_once_end_the_run_with_the_game_lost() {
    let dir = TempDir::new().expect("tempdir");
    let path = file(dir.path(), "both", &long_script(6, LONG));
    let mut done = false;
    let ran = run_with_kills(dir.path(), 6, &path, |harness, log, _| {
        let kids = children(harness);
        if done || kids.len() < 2 || !pair(log).1 {
            return None;
        }
        done = true;
        // The spare first, then (returned) the primary.
        let (primary, _) = pair(log);
        let spare = kids.iter().copied().find(|&k| Some(k) != primary)?;
        kill(Pid::from_raw(spare as i32), Signal::SIGKILL).ok()?;
        primary
    });
    assert!(!ran.success, "the run succeeded: {:?}", ran.stdout);
    assert!(ran.stdout.is_empty(), "{:?}", ran.stdout);
    assert!(ran.stderr.contains("the game is lost"), "{}", ran.stderr);
    assert_eq!(
        ran.stderr.matches("failover-harness:").count(),
        1,
        "one message: {}",
        ran.stderr
    );
}

#[test]
fn a_script_that_never_ends_is_played_as_it_comes_until_the_game_quits() {
    let dir = TempDir::new().expect("tempdir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let inputs = b"jjk l.\n.kq".to_vec();
    let want = reference(&[
        &"--seed",
        &"8",
        &"--script",
        &file(dir.path(), "q", &inputs),
    ]);
    let mut cmd: Command = harness();
    cmd.args(["run", "--seed", "8", "--script"])
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guard(cmd.spawn().expect("the harness starts"));
    let (stdout, stderr) = readers(&mut g);
    // The writer stays open (and writes more after the quit): the script never ends.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    writer.write_all(&inputs).expect("write the script");
    let deadline = Instant::now() + common::DEADLINE;
    let status = loop {
        if let Some(st) = g.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the run waited for the script's end"
        );
        let _ = writer.write_all(b"jjj");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(writer);
    let (out, err) = (
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr"),
    );
    assert!(status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
}
