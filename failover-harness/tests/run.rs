//! `failover-harness run`: a headless game with a primary and a spare, the primary SIGKILLed
//! right after chosen inputs were sent, must print byte for byte what the uninterrupted
//! `tetris --headless` prints: no input lost, none applied twice. Over Unix sockets and TCP,
//! many seeds, scripts and kill points; kills before the spare holds anything; games that end
//! before their script does.

mod common;

use std::path::Path;

use common::{file, harness, output, reference, script};
use tempfile::TempDir;

/// Runs the harness and the reference for the same game; asserts the outputs are equal and
/// returns the harness's `--stats` line, parsed.
fn same_as_uninterrupted(
    dir: &Path,
    seed: u64,
    level: u32,
    script_bytes: &[u8],
    extra: &[&str],
) -> serde_json::Value {
    let script = file(dir, &format!("script-{seed}"), script_bytes);
    let stats = dir.join(format!("stats-{seed}"));
    let (seed_s, level_s) = (seed.to_string(), level.to_string());
    let want = reference(&[&"--seed", &seed_s, &"-l", &level_s, &"--script", &script]);
    // The harness's and the games' logs, shown if the run fails: a rare failure is
    // understood from what they say, not rerun until it shows again.
    let log = dir.join(format!("harness-{seed}.log"));
    let games_log = dir.join(format!("games-{seed}.log"));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&games_log);
    let mut cmd = harness();
    cmd.args(["run", "--seed", &seed_s, "-l", &level_s, "--script"])
        .arg(&script)
        .arg("--stats")
        .arg(&stats)
        .args(extra)
        .env("FAILOVER_HARNESS_LOG", &log)
        .env("TETRIS_LOG", &games_log);
    let out = output(cmd);
    assert!(
        out.status.success(),
        "seed {seed} {extra:?}: the harness failed: {}\n--- the harness's log:\n{}\n--- the games' log:\n{}",
        out.stderr,
        tail(&log),
        tail(&games_log)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want),
        "seed {seed} {extra:?}: the output differs from the uninterrupted game's"
    );
    let text = std::fs::read_to_string(&stats).expect("the stats file");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    serde_json::from_str(&text).expect("the stats line is JSON")
}

/// The last lines of a log file (or why there are none).
fn tail(path: &Path) -> String {
    const LINES: usize = 80;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LINES)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

fn failovers(stats: &serde_json::Value) -> u64 {
    let n = stats["failovers"].as_u64().expect("failovers");
    let rto = stats["rto_ms"].as_array().expect("rto_ms");
    assert_eq!(rto.len() as u64, n, "one rto per failover: {stats}");
    assert!(
        rto.iter().all(|v| v.as_f64().is_some_and(|ms| ms >= 0.0)),
        "{stats}"
    );
    n
}

fn inputs_of(script: &[u8]) -> usize {
    script
        .iter()
        .filter(|b| !matches!(b, b'\n' | b'\r'))
        .count()
}

#[test]
fn kills_after_inputs_over_unix_across_seeds_resume_exactly() {
    let dir = TempDir::new().expect("tempdir");
    for seed in 0..12u64 {
        let s = script(seed, 60 + 25 * seed as usize);
        let n = inputs_of(&s);
        // Early, middle, near the end, the very end, and beyond the script.
        let points = [1, n / 3, n / 2 + 1, n - 1, n, n + 5];
        let list: Vec<String> = points.iter().map(ToString::to_string).collect();
        let level = 1 + (seed % 9) as u32;
        let stats = same_as_uninterrupted(
            dir.path(),
            seed,
            level,
            &s,
            &["--kill-after", &list.join(",")],
        );
        // Every point within the script kills a primary, unless the game ended before it.
        let want = reference(&[
            &"--seed",
            &seed.to_string(),
            &"-l",
            &level.to_string(),
            &"--script",
            &file(dir.path(), "again", &s),
        ]);
        let over = String::from_utf8_lossy(&want).contains("\"game_over\":true");
        let n = failovers(&stats);
        assert!(n == 5 || (over && n < 5), "seed {seed}: {stats}");
        assert!(
            stats["checkpoints"].as_u64().is_some(),
            "the game's stats: {stats}"
        );
    }
}

#[test]
fn a_kill_after_every_input_of_a_short_game() {
    let dir = TempDir::new().expect("tempdir");
    let s = b"jj\nk.l n. .\nkk..".to_vec();
    let n = inputs_of(&s);
    let all: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let stats = same_as_uninterrupted(dir.path(), 42, 3, &s, &["--kill-after", &all.join(",")]);
    assert_eq!(failovers(&stats) as usize, n);
}

#[test]
fn random_kill_points_over_tcp() {
    let dir = TempDir::new().expect("tempdir");
    for seed in 20..26u64 {
        let s = script(seed, 150);
        let kill_seed = (seed * 7919).to_string();
        let stats = same_as_uninterrupted(
            dir.path(),
            seed,
            2,
            &s,
            &[
                "--transport",
                "tcp",
                "--kill-random",
                "4",
                "--kill-seed",
                &kill_seed,
            ],
        );
        assert_eq!(failovers(&stats), 4, "seed {seed}");
    }
}

#[test]
fn random_kill_points_are_the_same_for_the_same_seed_and_sync_mode_agrees() {
    let dir = TempDir::new().expect("tempdir");
    let s = script(99, 120);
    let args = ["--kill-random", "6", "--kill-seed", "5", "--sync"];
    let a = same_as_uninterrupted(dir.path(), 99, 4, &s, &args);
    let b = same_as_uninterrupted(dir.path(), 99, 4, &s, &args);
    assert_eq!((failovers(&a), failovers(&b)), (6, 6));
}

#[test]
fn fork_snapshots_killed_in_the_middle_of_a_checkpoint_resume_exactly() {
    // With fork snapshots a child process writes each checkpoint while the game goes on: a
    // kill right after an input often lands while one is being written.
    let dir = TempDir::new().expect("tempdir");
    for seed in 40..44u64 {
        let s = script(seed, 120);
        let script_path = file(dir.path(), &format!("fork-{seed}"), &s);
        let seed_s = seed.to_string();
        let want = reference(&[&"--seed", &seed_s, &"--script", &script_path]);
        let mut cmd = harness();
        cmd.args(["run", "--seed", &seed_s, "--script"])
            .arg(&script_path)
            .args(["--kill-random", "6", "--kill-seed", &seed_s])
            .env("HS_STRATEGY", "fork");
        let out = output(cmd);
        assert!(out.status.success(), "seed {seed}: {}", out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&want),
            "seed {seed}"
        );
    }
}

#[test]
fn a_kill_before_the_first_input_waits_for_the_spares_checkpoint_and_resumes_exactly() {
    let dir = TempDir::new().expect("tempdir");
    let s = script(7, 80);
    let log = dir.path().join("harness.log");
    let script_path = file(dir.path(), "s", &s);
    let want = reference(&[&"--seed", &"7", &"--script", &script_path]);
    // Kill point 0 comes before the first input, before the spare could be synchronised:
    // the axe waits for its checkpoint; then right after the first input, and later on.
    let mut cmd = harness();
    cmd.args(["run", "--seed", "7", "--script"])
        .arg(&script_path)
        .args(["--kill-after", "0,1,40"])
        .env("FAILOVER_HARNESS_LOG", &log);
    let out = output(cmd);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, want);
    let log = std::fs::read_to_string(&log).expect("the harness's log");
    assert_eq!(log.matches("the spare took over").count(), 3, "{log}");
    // The spare held a checkpoint before the first axe fell.
    let synced = log.find("spare synced").expect("a sync");
    let axed = log.find("axed the primary").expect("an axe");
    assert!(synced < axed, "{log}");
}

#[test]
fn a_game_that_ends_before_its_script_is_not_fed_further() {
    let dir = TempDir::new().expect("tempdir");
    // Quit in the middle: kills after the quit find a finished game (or its spare).
    let mut quit = script(3, 40);
    quit.push(b'q');
    quit.extend(script(4, 40));
    let q = inputs_of(&quit[..41]);
    for points in [
        format!("{q}"),
        format!("{},{}", q - 1, q + 1),
        format!("{}", q + 10),
    ] {
        let stats = same_as_uninterrupted(dir.path(), 3, 2, &quit, &["--kill-after", &points]);
        failovers(&stats);
    }
    // Drops and timer expiries until the well is full: game over well before the end.
    let over = b" .".repeat(200);
    let stats = same_as_uninterrupted(dir.path(), 11, 5, &over, &["--kill-after", "30,60,350"]);
    failovers(&stats);
    let want = String::from_utf8(reference(&[
        &"--seed",
        &"11",
        &"-l",
        &"5",
        &"--script",
        &file(dir.path(), "over", &over),
    ]))
    .expect("utf-8");
    assert!(want.contains("\"game_over\":true"), "{want}");
}

#[test]
fn bad_arguments_are_refused() {
    let out = output({
        let mut c = harness();
        c.args(["run", "--seed", "1", "--script", "/nonexistent/script"]);
        c
    });
    assert!(!out.status.success());
    assert!(out.stderr.contains("cannot read script"), "{}", out.stderr);
    let out = output({
        let mut c = harness();
        c.args(["run", "--seed", "1", "--script", "x", "--kill-random", "3"]);
        c
    });
    assert!(!out.status.success());
    assert!(out.stderr.contains("--kill-seed"), "{}", out.stderr);
    // Random points are drawn over the script's length: an endless stream has none.
    let out = output({
        let mut c = harness();
        c.args(["run", "--seed", "1", "--script", "/dev/zero"])
            .args(["--kill-random", "3", "--kill-seed", "1"]);
        c
    });
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("/dev/zero is not a regular file"),
        "{}",
        out.stderr
    );
}
