//! Per-move checkpoint stall of the real game with a spare attached over a Unix socket, in
//! sync, async and lazy mode, back to back and at a person's pace, each as a ratio to its
//! floor measured in the same run.
//!
//! `cargo bench -p tetris --bench stall` runs the `tetris` binary headless as primary (with
//! `--stats`) and as spare, feeds the primary a script of moves (left, rotate, right: each one
//! changes the state and is checkpointed, none locks a piece, so the game never ends) either
//! all at once (back to back) or one every `--gap-us` microseconds, and prints the stall
//! percentiles the game measured around `checkpoint()`.
//!
//! The floors are measured in this process just before each trial round, at the same pace
//! (the same pause between two measurements as between two moves):
//!
//! - **hand-off** (async and lazy mode's floor): copy 4 KiB and wake a thread asleep on a
//!   futex (a `Condvar`), timed on the waker's side;
//! - **sync round trip** (sync mode's): `write(2)` of 4 KiB into a Unix socket that another
//!   process (this bench re-run as its peer) drains, and its 1-byte answer.
//!
//! These are `hs-bench floors`'s own measurements (`hs_bench::floors`): this executable
//! answers `floor-peer drain-ack` as the sync floor's peer.
//!
//! Targets (issue 12): sync p50 <= 1.5x the sync round trip; async p50 <= 1.0x the hand-off
//! and p99 <= 3x its p50; lazy p50 <= 0.25x the hand-off.
//!
//! Options (after `--`): `--gap-us N` runs that pace only (default: back to back, then
//! 50000); `--trials N` (default 5); `--modes sync,async,lazy`. Environment:
//! `TETRIS_STALL_INPUTS` moves per back-to-back trial (default 10000),
//! `TETRIS_STALL_PACED_INPUTS` per paced trial (default 150). This is a measurement, not a
//! test: it asserts nothing.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hs_bench::floors::{self, FloorOptions};
use serde_json::Value;

const TETRIS: &str = env!("CARGO_BIN_EXE_tetris");
const PAGE: usize = 4096;

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

fn spawn(dir: &Path, role: &str, mode: &str, stats: &Path) -> Result<Reaped, String> {
    let mut cmd = Command::new(TETRIS);
    cmd.args(["--headless", "--seed", "1", "--stats"])
        .arg(stats)
        .env("HS_ROLE", role)
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", dir)
        .env("HS_SOCKET_NAME", "stall")
        .env("HS_MODE", mode)
        .env("HS_STRATEGY", "copy")
        .stdin(if role == "primary" {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null());
    cmd.spawn()
        .map(Reaped)
        .map_err(|e| format!("cannot start tetris as {role}: {e}"))
}

/// One game: the primary's stats (`checkpoints`, `bytes`, `stall_us`).
fn trial(mode: &str, inputs: usize, gap: Duration) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socks = dir.path().join("sock");
    std::fs::create_dir(&socks).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let stats = dir.path().join("stats.json");
    let spare_stats = dir.path().join("spare-stats.json");
    let mut primary = spawn(&socks, "primary", mode, &stats)?;
    let mut spare = spawn(&socks, "spare", mode, &spare_stats)?;
    // An async primary does not wait for its spare: give it time to connect, so every move
    // measured is shipped (the bytes in the result show whether they were).
    std::thread::sleep(Duration::from_millis(500));
    let script: Vec<u8> = b"jlk".iter().copied().cycle().take(inputs).collect();
    let mut stdin = primary.0.stdin.take().ok_or("no stdin")?;
    if gap.is_zero() {
        stdin.write_all(&script).map_err(|e| e.to_string())?;
    } else {
        for b in &script {
            stdin.write_all(&[*b]).map_err(|e| e.to_string())?;
            std::thread::sleep(gap);
        }
    }
    drop(stdin);
    let status = primary.0.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("primary: {status}"));
    }
    match spare.0.wait() {
        Ok(s) if s.success() && !spare_stats.exists() => {}
        // A spare that wrote stats ran the game: it took over although the primary ended.
        Ok(s) if s.success() => return Err("the spare took over".to_owned()),
        Ok(s) => return Err(format!("spare: {s}")),
        Err(e) => return Err(e.to_string()),
    }
    let text = std::fs::read_to_string(&stats).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// A mode's floor and its target ratio for the p50.
fn target(mode: &str) -> (&'static str, f64) {
    match mode {
        "sync" => ("sync round trip", 1.5),
        "lazy" => ("hand-off", 0.25),
        _ => ("hand-off", 1.0),
    }
}

/// One trial's figures.
struct Row {
    p50: f64,
    p99: f64,
    floor: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("floor-peer") {
        let mode = args.get(1).map_or("", String::as_str);
        if let Err(e) = floors::run_peer(mode) {
            eprintln!("floor peer: {e}");
            std::process::exit(1);
        }
        return;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let gaps: Vec<u64> = match value("--gap-us").and_then(|v| v.parse().ok()) {
        Some(g) => vec![g],
        None => vec![0, 50_000],
    };
    let trials: usize = value("--trials").and_then(|v| v.parse().ok()).unwrap_or(5);
    let modes_arg = value("--modes").unwrap_or_else(|| "sync,async,lazy".to_owned());
    let modes: Vec<&str> = modes_arg.split(',').collect();
    for &gap_us in &gaps {
        let gap = Duration::from_micros(gap_us);
        let (inputs, floor_samples) = if gap.is_zero() {
            (env_number("TETRIS_STALL_INPUTS", 10_000), 2000)
        } else {
            (env_number("TETRIS_STALL_PACED_INPUTS", 150), 100)
        };
        println!(
            "\nper-move stall (us), spare over a Unix socket, {inputs} moves per trial, {}",
            if gap.is_zero() {
                "back to back".to_owned()
            } else {
                format!("one move every {gap_us} us")
            }
        );
        println!(
            "{:<6} {:>5} {:>9} {:>9} {:>8} {:>10} {:>8} {:>8}",
            "mode", "trial", "p50", "p99", "p99/p50", "floor p50", "x floor", "pages"
        );
        let mut rows: Vec<(String, Row)> = Vec::new();
        for t in 1..=trials {
            let opts = FloorOptions {
                region_bytes: 4 * PAGE,
                dirty_pct: 100,
                gap,
                samples: floor_samples,
            };
            let (handoff, sync) = match floors::handoff_floor(&opts)
                .and_then(|h| Ok((h, floors::sync_floor(&opts)?)))
            {
                Ok(f) => f,
                Err(e) => {
                    println!("floors failed: {e}");
                    continue;
                }
            };
            println!(
                "floors: hand-off p50 {:.2} p99 {:.2}; sync round trip p50 {:.2} p99 {:.2}",
                handoff.p50_us, handoff.p99_us, sync.p50_us, sync.p99_us
            );
            for &mode in &modes {
                let floor = if mode == "sync" { sync } else { handoff };
                match trial(mode, inputs, gap) {
                    Ok(v) => {
                        let p50 = v["stall_us"]["p50"].as_f64().unwrap_or(0.0);
                        let p99 = v["stall_us"]["p99"].as_f64().unwrap_or(0.0);
                        println!(
                            "{mode:<6} {t:>5} {p50:>9.2} {p99:>9.2} {:>8.1} {:>10.2} {:>8.2} {:>8}",
                            p99 / p50.max(1e-9),
                            floor.p50_us,
                            p50 / floor.p50_us.max(1e-9),
                            v["bytes"].as_u64().unwrap_or(0) / PAGE as u64,
                        );
                        rows.push((
                            mode.to_owned(),
                            Row {
                                p50,
                                p99,
                                floor: floor.p50_us,
                            },
                        ));
                    }
                    Err(e) => println!("{mode:<6} {t:>5} failed: {e}"),
                }
            }
        }
        println!("summary (median over trials [min-max]; target met in how many):");
        for &mode in &modes {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|(m, _)| m == mode)
                .map(|(_, r)| r)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (floor_name, want) = target(mode);
            let mut ratio: Vec<f64> = mine.iter().map(|r| r.p50 / r.floor.max(1e-9)).collect();
            let mut tail: Vec<f64> = mine.iter().map(|r| r.p99 / r.p50.max(1e-9)).collect();
            let mut p50: Vec<f64> = mine.iter().map(|r| r.p50).collect();
            let met = ratio.iter().filter(|&&x| x <= want).count();
            let tail_met = tail.iter().filter(|&&x| x <= 3.0).count();
            let lo = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            let (r_lo, r_hi, t_lo, t_hi) = (lo(&ratio), hi(&ratio), lo(&tail), hi(&tail));
            println!(
                "{mode:<6} p50 {:.2} us; p50/{floor_name} {:.2}x [{r_lo:.2}-{r_hi:.2}] \
                 (target <= {want}x: {met}/{n}); p99/p50 {:.1} [{t_lo:.1}-{t_hi:.1}] (<= 3: {tail_met}/{n})",
                median(&mut p50),
                median(&mut ratio),
                median(&mut tail),
                n = mine.len(),
            );
        }
    }
}
