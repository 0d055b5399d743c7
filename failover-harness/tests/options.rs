//! The harness's command lines: game options are checked by tetris's own parser before any
//! game starts (its message, once); an option given twice takes its last value, as in
//! tetris; no trials are refused; a kill point past the script's end is warned about; `play
//! --hosts` refuses the single-machine options it cannot honour; a suspicion window under
//! 10 ms is refused.

mod common;

use common::{file, harness, output};
use tempfile::TempDir;

/// What `failover-harness ARGS` prints on stderr, and whether it succeeded.
fn stderr_of(args: &[&str]) -> (bool, String) {
    let mut cmd = harness();
    cmd.args(args);
    let out = output(cmd);
    (out.status.success(), out.stderr)
}

#[test]
fn bad_game_options_are_refused_with_tetris_own_message_once_before_any_game() {
    let dir = TempDir::new().expect("tempdir");
    for bad in [
        &["-l", "0"][..],
        &["-l", "10"],
        &["-k", "jkl"],
        &["-k", "jjl pqn"],
        &["-l", "3", "-l", "0"],
    ] {
        let (_, want) = stderr_of(&[&["game", "--"][..], bad].concat());
        assert!(
            want.starts_with("tetris: ") || want.starts_with("usage: tetris"),
            "{bad:?}: {want:?}"
        );
        // No session: a game started would need a terminal; the refusal comes first.
        let mut cmd = harness();
        cmd.arg("play")
            .args(bad)
            .env("HOTSPARE_HARNESS_DIR", dir.path())
            .env("TMPDIR", dir.path());
        let out = output(cmd);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert_eq!(out.stderr, want, "play {bad:?}");
        let script = file(dir.path(), "s", b"jjl");
        let (ok, said) = stderr_of(
            &[
                &[
                    "run",
                    "--seed",
                    "1",
                    "--script",
                    script.to_str().expect("utf-8"),
                ][..],
                bad,
            ]
            .concat(),
        );
        assert!(!ok, "run {bad:?} was accepted");
        assert_eq!(said, want, "run {bad:?}");
    }
}

#[test]
fn a_repeated_option_takes_its_last_value_as_in_tetris() {
    let dir = TempDir::new().expect("tempdir");
    let script = file(dir.path(), "s", b"jj lq");
    let mut cmd = harness();
    cmd.args(["run", "--seed", "5", "-l", "0", "-l", "3", "--script"])
        .arg(&script);
    let out = output(cmd);
    assert!(out.status.success(), "{}", out.stderr);
    let want = common::reference(&[&"--seed", &"5", &"-l", &"3", &"--script", &script]);
    assert_eq!(out.stdout, want);
}

#[test]
fn no_trials_are_refused_and_a_kill_point_past_the_script_is_warned_about() {
    let (ok, said) = stderr_of(&["bench-failover", "--trials", "0"]);
    assert!(!ok);
    assert!(said.contains("--trials"), "{said}");
    let dir = TempDir::new().expect("tempdir");
    let script = file(dir.path(), "s", &b"jkl .".repeat(4)[..19]);
    let mut cmd = harness();
    cmd.args(["run", "--seed", "1", "--kill-after", "3,100", "--script"])
        .arg(&script);
    let out = output(cmd);
    // The result is the uninterrupted game's all the same; the kill that could not happen
    // is said.
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        common::reference(&[&"--seed", &"1", &"--script", &script])
    );
    assert!(
        out.stderr
            .contains("warning: --kill-after 100: the script has only 19 inputs"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("--kill-after 3"), "{}", out.stderr);
}

#[test]
fn play_hosts_refuses_the_single_machine_options_it_cannot_honour() {
    for (option, value) in [
        ("--scores-file", Some("/tmp/scores")),
        ("--sync", None),
        ("--async", None),
        ("--transport", Some("tcp")),
        ("--chaos", Some("1")),
        ("--events", Some("/tmp/events")),
        ("--hang-ms", Some("100")),
    ] {
        let mut args = vec!["play", "--hosts", option];
        args.extend(value);
        let (ok, said) = stderr_of(&args);
        assert!(!ok, "play --hosts {option} was taken");
        assert!(
            said.contains(option) && said.contains("--hosts") && said.contains("cannot be used"),
            "play --hosts {option}: {said}"
        );
    }
}

#[test]
fn a_suspicion_window_under_10_ms_is_refused_by_the_agent_the_client_and_play_hosts() {
    let common = ["--etcd", "http://127.0.0.1:1", "--session", "s"];
    for args in [
        &["client", "--key-file", "/nonexistent", "--suspect-ms", "5"][..],
        &[
            "agent",
            "--name",
            "a",
            "--listen",
            "127.0.0.1:7000",
            "--key-file",
            "/nonexistent",
            "--suspect-ms",
            "0",
        ],
    ] {
        let all = [&args[..1], &common[..], &args[1..]].concat();
        let (ok, said) = stderr_of(&all);
        assert!(!ok, "{all:?} was taken");
        assert!(said.contains("--suspect-ms"), "{all:?}: {said}");
    }
    let (ok, said) = stderr_of(&["play", "--hosts", "--suspect-ms", "9"]);
    assert!(!ok && said.contains("--suspect-ms"), "play --hosts: {said}");
}

#[test]
fn an_error_names_its_cause_once() {
    // A key file that is not there: the key file's error quotes the OS error, which is also
    // its source; the message says it once.
    let (ok, said) = stderr_of(&[
        "agent",
        "--etcd",
        "http://127.0.0.1:1",
        "--session",
        "s",
        "--name",
        "a",
        "--listen",
        "127.0.0.1:7000",
        "--key-file",
        "/nonexistent/key",
    ]);
    assert!(!ok, "{said}");
    assert_eq!(
        said.trim_end(),
        "failover-harness: key file /nonexistent/key: No such file or directory"
    );
}
