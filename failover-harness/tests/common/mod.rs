//! What the harness's tests share: the binary under a kill-on-drop guard with deadlines, the
//! uninterrupted game to compare with, and generated scripts.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tetris::rng::SplitMix64;

/// The bound on any one harness run in these tests.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The harness binary, with no `HS_*` or logging variables inherited.
pub fn harness() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_failover-harness"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HS_") || k.starts_with("TETRIS_") || k == "FAILOVER_HARNESS_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child that is SIGKILLed and reaped if the test lets go of it (a failed assertion).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` to its end (stdin closed), failing the test after [`DEADLINE`].
pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard(cmd.spawn().expect("the command starts"));
    let mut stdout = guard.0.stdout.take().expect("stdout");
    let mut stderr = guard.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `tetris --headless` (the harness's `game` subcommand is the game's own command) for
/// `args`: the uninterrupted game's output.
pub fn reference(args: &[&dyn AsRef<OsStr>]) -> Vec<u8> {
    let mut cmd = harness();
    cmd.arg("game").arg("--").arg("--headless");
    for a in args {
        cmd.arg(a);
    }
    let out = output(cmd);
    assert!(
        out.status.success(),
        "the reference game failed: {}",
        out.stderr
    );
    out.stdout
}

/// A script of `len` inputs drawn from `seed`: moves, rotations, downs, drops and timer
/// expiries, with newlines sprinkled in (they are not inputs).
pub fn script(seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"jjkkllnn..... \n";
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write a test file");
    p
}

/// What the harness's log says of the pair now: the primary's pid and whether the spare
/// holds a checkpoint (none once the primary's input has ended).
pub fn pair(log: &Path) -> (Option<u32>, bool) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let pid = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse::<u32>().ok())
    };
    let (mut primary, mut synced) = (None, false);
    if text.contains("the primary's input ends") {
        return (None, false);
    }
    for line in text.lines() {
        if line.contains("game started") && line.contains("role=Primary") {
            primary = pid(line);
        } else if line.contains("the spare took over") {
            primary = pid(line);
            synced = false;
        } else if line.contains("spare synced") {
            synced = true;
        } else if line.contains("spare started")
            || line.contains("the primary ended")
            || line.contains("the spare ended")
        {
            synced = false;
        }
    }
    (primary, synced)
}

/// The harness's children that are alive (not zombies).
pub fn children(harness: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{harness}/task")) else {
        return all;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all.retain(|&p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z")))
    });
    all
}

/// A `Result`'s value, or the test's panic with the error.
pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the cluster tests can run here (root for network namespaces, an etcd binary);
/// if not, says why (and the tests skip, unless `.ci/run`'s variables make that a failure
/// inside the checks themselves).
pub fn cluster_prerequisites() -> bool {
    for check in [
        hotspare_cluster::netns::available_for_tests,
        hotspare_cluster::server::available_for_tests,
    ] {
        if let Err(why) = check() {
            eprintln!("skipped: {why}");
            return false;
        }
    }
    true
}
