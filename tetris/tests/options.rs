//! The real binary's command-line errors: BSD's messages on stderr, exit status 1.

use std::os::unix::ffi::OsStrExt as _;
use std::process::{Command, Output};

const USAGE: &str = "usage: tetris [-bps] [-k keys] [-l level] [--help]\n";

fn tetris(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_tetris"))
        .args(args)
        // Never touch the real high-score file, even if an option error were missed.
        .env("TETRIS_SCORES", dir.path().join("scores"))
        .env("XDG_DATA_HOME", dir.path())
        .output()
        .expect("run tetris")
}

fn assert_fails_with(args: &[&str], stderr: &str) {
    let out = tetris(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), stderr, "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn bad_level_says_level_must_be_from_1_to_9() {
    for bad in ["0", "10", "-1", "x", "2x", ""] {
        assert_fails_with(&["-l", bad], "tetris: level must be from 1 to 9\n");
    }
    assert_fails_with(&["-l0"], "tetris: level must be from 1 to 9\n");
}

#[test]
fn duplicate_keys_are_refused() {
    assert_fails_with(
        &["-k", "jjl pqn"],
        "tetris: duplicate command keys specified.\n",
    );
    assert_fails_with(
        &["-k", "abcdea"],
        "tetris: duplicate command keys specified.\n",
    );
}

#[test]
fn six_distinct_keys_including_n_are_accepted_as_bsdgames_accepts_them() {
    // No down key with six keys: `n` is free. Shown with -s, which plays nothing.
    let out = tetris(&["-k", "jkn pq", "-s"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = tetris(&[
        "-k",
        "jkn pq",
        "--headless",
        "--seed",
        "1",
        "--script",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn keys_with_a_newline_or_a_non_ascii_byte_are_refused_clearly() {
    assert_fails_with(
        &["-k", "jkl\npq"],
        "tetris: command keys must be ASCII characters other than newline and return, \
         not \"jkl\\\\npq\"\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .arg("-k")
        .arg(std::ffi::OsStr::from_bytes(b"jkl\xffpq"))
        .env("TETRIS_SCORES", dir.path().join("scores"))
        .output()
        .expect("run tetris");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tetris: command keys must be ASCII characters other than newline and return, \
         not \"jkl\\\\xffpq\"\n"
    );
}

#[test]
fn wrong_key_count_prints_usage() {
    for keys in ["", "abcde", "abcdefgh"] {
        assert_fails_with(&["-k", keys], USAGE);
    }
}

#[test]
fn unknown_options_are_named_as_getopt_names_them_before_the_usage() {
    assert_fails_with(&["-x"], &format!("tetris: invalid option -- 'x'\n{USAGE}"));
    assert_fails_with(&["-h"], &format!("tetris: invalid option -- 'h'\n{USAGE}"));
    assert_fails_with(
        &["--bogus"],
        &format!("tetris: unrecognized option '--bogus'\n{USAGE}"),
    );
    assert_fails_with(
        &["-l"],
        &format!("tetris: option requires an argument -- 'l'\n{USAGE}"),
    );
    assert_fails_with(
        &["--resume"],
        &format!("tetris: option '--resume' requires an argument\n{USAGE}"),
    );
}

#[test]
fn an_extra_argument_prints_the_usage_alone() {
    assert_fails_with(&["extra"], USAGE);
    assert_fails_with(&["-l", "3", "extra"], USAGE);
}

#[test]
fn version_goes_to_stdout_with_status_0() {
    let out = tetris(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tetris (hotspare) {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn bad_seed_is_refused() {
    assert_fails_with(
        &["--headless", "--seed", "abc"],
        "tetris: seed must be a number from 0 to 18446744073709551615, not \"abc\"\n",
    );
}

#[test]
fn help_goes_to_stdout_with_status_0() {
    let out = tetris(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "-k",
        "-l",
        "--seed",
        "--headless",
        "--script",
        "--scores-file",
    ] {
        assert!(text.contains(needle), "help mentions {needle}: {text}");
    }
    assert!(out.stderr.is_empty());
}

#[test]
fn show_scores_exits_0_with_an_empty_table() {
    let out = tetris(&["-s"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\n\t\t\t    Tetris High Scores\n"
    );
}

#[test]
fn dash_s_is_acted_on_where_getopt_meets_it() {
    // As in BSD (and Debian's tetris-bsd): `-s -x` shows the scores, `-x -s` is a usage error.
    let out = tetris(&["-s", "-x"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\n\t\t\t    Tetris High Scores\n"
    );
    assert_fails_with(
        &["-x", "-s"],
        &format!("tetris: invalid option -- 'x'\n{USAGE}"),
    );
    assert_fails_with(&["-l", "0", "-s"], "tetris: level must be from 1 to 9\n");
}
