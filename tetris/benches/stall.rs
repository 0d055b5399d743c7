//! Per-move checkpoint stall of the real game with a spare attached over a Unix socket.
//!
//! `cargo bench -p tetris --bench stall` runs the `tetris` binary headless as primary (with
//! `--stats`) and as spare, feeds the primary a script of moves (left, rotate, right: each one
//! changes the state and is checkpointed, none locks a piece, so the game never ends), and
//! prints the stall percentiles the game measured around `checkpoint()`, for async and sync
//! mode and the copy and fork strategies, a few trials each so the noise shows.
//!
//! `TETRIS_STALL_INPUTS` sets the moves per trial (default 20000), `TETRIS_STALL_TRIALS` the
//! trials (default 3). This is a measurement, not a test: it asserts nothing.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const TETRIS: &str = env!("CARGO_BIN_EXE_tetris");

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child that is killed and reaped if the trial gives up on it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, role: &str, mode: &str, strategy: &str, stats: &Path) -> Reaped {
    let mut cmd = Command::new(TETRIS);
    cmd.args(["--headless", "--seed", "1", "--stats"])
        .arg(stats)
        .env("HS_ROLE", role)
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", dir)
        .env("HS_SOCKET_NAME", "stall")
        .env("HS_MODE", mode)
        .env("HS_STRATEGY", strategy)
        .stdin(if role == "primary" {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null());
    match cmd.spawn() {
        Ok(child) => Reaped(child),
        Err(e) => panic!("cannot start tetris as {role}: {e}"),
    }
}

/// The primary's stats, and how the spare ended (it should end quietly after the goodbye).
fn trial(mode: &str, strategy: &str, inputs: usize) -> Result<(Value, String), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socks = dir.path().join("sock");
    std::fs::create_dir(&socks).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let stats = dir.path().join("stats.json");
    let spare_stats = dir.path().join("spare-stats.json");
    let mut primary = spawn(&socks, "primary", mode, strategy, &stats);
    let mut spare = spawn(&socks, "spare", mode, strategy, &spare_stats);
    // An async primary does not wait for its spare: give it time to connect, so every move
    // measured is shipped (the bytes in the result show whether they were).
    std::thread::sleep(Duration::from_millis(500));
    let script: Vec<u8> = b"jlk".iter().copied().cycle().take(inputs).collect();
    let mut stdin = primary.0.stdin.take().ok_or("no stdin")?;
    stdin.write_all(&script).map_err(|e| e.to_string())?;
    drop(stdin);
    let status = primary.0.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("primary: {status}"));
    }
    let spare_end = match spare.0.wait() {
        Ok(s) if s.success() && !spare_stats.exists() => "quiet".to_owned(),
        // A spare that wrote stats ran the game: it took over although the primary ended.
        Ok(s) if s.success() => "took over".to_owned(),
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    let text = std::fs::read_to_string(&stats).map_err(|e| e.to_string())?;
    let v = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok((v, spare_end))
}

fn main() {
    let inputs = env_number("TETRIS_STALL_INPUTS", 20_000);
    let trials = env_number("TETRIS_STALL_TRIALS", 3);
    println!("per-move stall (us) with a spare over a Unix socket, {inputs} moves per trial");
    println!(
        "{:<6} {:<5} {:>5} {:>11} {:>12} {:>9} {:>9} {:>9}  spare",
        "mode", "strat", "trial", "checkpoints", "pages sent", "p50", "p99", "max"
    );
    for (mode, strategy) in [("async", "copy"), ("async", "fork"), ("sync", "copy")] {
        for t in 1..=trials {
            match trial(mode, strategy, inputs) {
                Ok((v, spare_end)) => println!(
                    "{mode:<6} {strategy:<5} {t:>5} {:>11} {:>12} {:>9} {:>9} {:>9}  {spare_end}",
                    v["checkpoints"],
                    v["bytes"].as_u64().unwrap_or(0) / 4096,
                    v["stall_us"]["p50"],
                    v["stall_us"]["p99"],
                    v["stall_us"]["max"],
                ),
                Err(e) => println!("{mode:<6} {strategy:<5} {t:>5} failed: {e}"),
            }
        }
    }
}
