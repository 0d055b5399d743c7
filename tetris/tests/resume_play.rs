//! An interactive game checkpointed to a log, interrupted, and resumed with `--resume` on a new
//! terminal: the new process sets up its own screen, shows the same paused game (state equal
//! byte for byte, read from each process's memory) and plays on.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::screen::score_on_screen;
use common::{args, game_in, resumed, tetris_with_status};
use hotspare_tests::{Session, keys, vt100};
use tempfile::TempDir;
use tetris::scores::SEE_SCORES_PROMPT;

const DEADLINE: Duration = Duration::from_secs(30);
const PAUSED: &str = "                      paused - press RETURN to continue";

fn tetris(dir: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let scores = dir.join("scores");
    let mut a = args(&[&"--scores-file", &scores]);
    a.extend(args(extra));
    let mut cmd = tetris_with_status(&a, &dir.join("status"));
    cmd.env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("TETRIS_SCORES");
    cmd
}

fn paused_is_shown(screen: &vt100::Screen) -> bool {
    let rev = |r: u16, c: u16| screen.cell(r, c).is_some_and(vt100::Cell::inverse);
    screen.alternate_screen()
        && (0..20).all(|r| rev(r, 27) && rev(r, 50))
        && screen.contents().lines().nth(22).map(str::trim_end) == Some(PAUSED)
}

#[test]
fn an_interrupted_game_resumed_from_its_log_goes_on_where_it_was() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("game.log");
    let mut first = Session::spawn(
        tetris(
            dir.path(),
            &[&"--seed", &"7", &"-l", &"1", &"--checkpoint-file", &log],
        ),
        24,
        80,
    )
    .unwrap();
    first
        .wait_for("the board", DEADLINE, |sc| score_on_screen(sc) == Some(0))
        .unwrap();
    first.send(b"jj ").unwrap();
    first
        .wait_for("points for the drop", DEADLINE, |sc| {
            score_on_screen(sc).is_some_and(|n| n > 0)
        })
        .unwrap();
    first.send(b"p").unwrap();
    first
        .wait_for("the pause", DEADLINE, paused_is_shown)
        .unwrap();
    let before = game_in(first.pid()).expect("the first game's state");
    assert!(before.is_paused() && before.points > 0);
    first.send(keys::CTRL_C).unwrap();
    assert_eq!(first.wait_exit(DEADLINE).unwrap().code(), Some(0));
    assert!(!dir.path().join("scores").exists(), "^C saves no score");

    let mut second = Session::spawn(tetris(dir.path(), &[&"--resume", &log]), 24, 80).unwrap();
    second
        .wait_for("the resumed game, paused", DEADLINE, |sc| {
            paused_is_shown(sc) && score_on_screen(sc) == Some(before.points)
        })
        .unwrap();
    let after = game_in(second.pid()).expect("the resumed game's state");
    assert_eq!(
        after, before,
        "the resumed state differs from the last checkpoint"
    );
    // On a terminal the resumed line follows the first frame (before the first input).
    let until = std::time::Instant::now() + DEADLINE;
    let (checkpoint, inputs, epoch) = loop {
        if let Some(r) = resumed(&dir.path().join("status")) {
            break r;
        }
        assert!(std::time::Instant::now() < until, "no resumed line");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((inputs, epoch), (before.inputs, 2));
    assert!(checkpoint > inputs, "{checkpoint} {inputs}");

    second.send(b"q").unwrap();
    second.wait_for_text(SEE_SCORES_PROMPT, DEADLINE).unwrap();
    second.send(b"\n").unwrap();
    assert_eq!(second.wait_exit(DEADLINE).unwrap().code(), Some(0));
    assert!(second.contents().contains("Your score:"));
    assert_eq!(&second.termios().unwrap(), second.initial_termios());
}
