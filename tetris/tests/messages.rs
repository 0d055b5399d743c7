//! What a user reads when the real binary cannot start a game: the file and what is wrong
//! with it, said once (no cause repeated, no `(os error N)`, no library words), exit status
//! 1, and the terminal left as it was. Also a finished game's log, which resuming leaves
//! alone.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hotspare_tests::Session;
use tempfile::TempDir;
use tetris::scores::SEE_SCORES_PROMPT;

const DEADLINE: Duration = Duration::from_secs(30);

/// `tetris ARGS` with no `HS_*` or scores variable inherited and the high scores in `dir`.
fn tetris(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tetris"));
    cmd.args(args)
        .env("TETRIS_SCORES", dir.join("scores"))
        .env("XDG_DATA_HOME", dir)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs to the end with stdin on /dev/null (or `stdin`), output captured.
fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("tetris runs to its end")
}

/// Exit status 1, nothing on stdout, exactly `line` (and a newline) on stderr.
fn assert_refused_with(out: &Output, line: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("{line}\n"));
}

#[test]
fn resuming_a_missing_log_names_it_once() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.log");
    let out = output(tetris(
        dir.path(),
        &["--resume", &missing.to_string_lossy()],
    ));
    assert_refused_with(
        &out,
        &format!(
            "tetris: cannot resume from {}: there is no such file",
            missing.display()
        ),
    );
}

#[test]
fn resuming_a_directory_says_it_is_one() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    let out = output(tetris(dir.path(), &["--resume", &path]));
    assert_refused_with(
        &out,
        &format!("tetris: cannot resume from {path}: it is a directory, not a checkpoint log"),
    );
}

#[test]
fn resuming_a_fifo_without_a_writer_is_refused_at_once_not_blocked_on() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let mut child = tetris(dir.path(), &["--resume", &fifo.to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tetris");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tetris still blocked on the FIFO after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("tetris output");
    assert_refused_with(
        &out,
        &format!(
            "tetris: cannot resume from {}: it is not a regular file, so not a checkpoint log",
            fifo.display()
        ),
    );
}

#[test]
fn a_checkpoint_log_in_a_missing_directory_names_the_directory_once() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("no/such/dir/x.log");
    let out = output(tetris(
        dir.path(),
        &[
            "--headless",
            "--script",
            "/dev/null",
            "--checkpoint-file",
            &log.to_string_lossy(),
        ],
    ));
    assert_refused_with(
        &out,
        &format!(
            "tetris: cannot write the checkpoint log {}: there is no directory {}",
            log.display(),
            log.parent().unwrap().display()
        ),
    );
    assert!(!dir.path().join("no").exists(), "no directory was created");
}

#[test]
fn a_scores_file_that_is_a_directory_is_named_with_the_os_reason_once() {
    let dir = TempDir::new().unwrap();
    let scores = dir.path().join("scores-dir");
    std::fs::create_dir(&scores).unwrap();
    let out = output(tetris(
        dir.path(),
        &["-s", "--scores-file", &scores.to_string_lossy()],
    ));
    assert_refused_with(
        &out,
        &format!("tetris: cannot read {}: Is a directory", scores.display()),
    );
}

#[test]
fn standard_input_not_a_terminal_is_said_once_without_library_words() {
    let dir = TempDir::new().unwrap();
    let out = output(tetris(dir.path(), &[]));
    assert_refused_with(
        &out,
        "tetris: tcgetattr() fails: standard input is not a terminal (--headless plays a \
         script without one)",
    );
}

#[test]
fn a_spare_without_a_transport_is_told_what_to_set() {
    let dir = TempDir::new().unwrap();
    let mut cmd = tetris(dir.path(), &["--headless"]);
    cmd.env("HS_ROLE", "spare");
    let out = output(cmd);
    assert_refused_with(
        &out,
        "tetris: a spare needs HS_TRANSPORT=unix or tcp to reach its primary",
    );
}

#[test]
fn term_dumb_aborts_before_touching_the_terminal() {
    let dir = TempDir::new().unwrap();
    let mut cmd = tetris(dir.path(), &["--seed", "1"]);
    cmd.env("TERM", "dumb");
    let mut s = Session::spawn(cmd, 24, 80).expect("tetris on a pty");
    let status = s.wait_exit(DEADLINE).expect("tetris exits");
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        s.output_text(),
        "tetris: cannot clear screen: TERM=dumb cannot move the cursor (--headless plays \
         without a screen)\r\n",
        "nothing but the message was written"
    );
    assert_eq!(&s.termios().expect("tcgetattr"), s.initial_termios());
}

/// Plays a game on a pty logging to `log` and quits it with `q`; returns the scores file's
/// bytes after the game.
fn play_and_quit(dir: &Path, log: &Path) -> Vec<u8> {
    let cmd = tetris(
        dir,
        &[
            "--seed",
            "7",
            "-l",
            "1",
            "--checkpoint-file",
            &log.to_string_lossy(),
        ],
    );
    let mut s = Session::spawn(cmd, 24, 80).expect("tetris on a pty");
    s.wait_for_text("Score: 0", DEADLINE).expect("the game");
    s.send(b" q").expect("drop and quit");
    s.wait_for_text(SEE_SCORES_PROMPT, DEADLINE)
        .expect("the scores prompt");
    s.send(b"\n").expect("answer the prompt");
    let status = s.wait_exit(DEADLINE).expect("exit after the table");
    assert_eq!(status.code(), Some(0), "{}", s.contents());
    std::fs::read(dir.join("scores")).expect("the score was saved")
}

#[test]
fn resuming_a_game_that_ended_says_so_and_records_nothing_twice() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("game.log");
    let scores = play_and_quit(dir.path(), &log);
    let logged = std::fs::read(&log).expect("the log");
    for _ in 0..2 {
        let cmd = tetris(dir.path(), &["--resume", &log.to_string_lossy()]);
        let mut s = Session::spawn(cmd, 24, 80).expect("tetris on a pty");
        let status = s.wait_exit(DEADLINE).expect("tetris exits");
        assert_eq!(status.code(), Some(1), "{}", s.contents());
        let text = s.output_text();
        assert!(
            text.starts_with("tetris: this game has ended: score ")
                && text.ends_with(&format!(
                    " x level 1); the log {} is left as it is\r\n",
                    log.display()
                )),
            "{text:?}"
        );
        assert!(!text.contains(SEE_SCORES_PROMPT), "{text:?}");
        assert_eq!(&s.termios().expect("tcgetattr"), s.initial_termios());
        assert_eq!(std::fs::read(&log).expect("the log"), logged, "log grew");
        assert_eq!(
            std::fs::read(dir.path().join("scores")).expect("scores"),
            scores,
            "the score was saved again"
        );
    }
}

#[test]
fn a_script_that_is_a_directory_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    let out = output(tetris(dir.path(), &["--headless", "--script", &path]));
    assert_refused_with(
        &out,
        &format!("tetris: cannot read script {path}: it is a directory"),
    );
}

#[test]
fn a_resumed_game_is_scored_at_its_own_level_not_the_default() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("game.log");
    let log_arg = log.to_string_lossy().into_owned();
    let cmd = tetris(
        dir.path(),
        &["--seed", "7", "-l", "3", "--checkpoint-file", &log_arg],
    );
    let mut s = Session::spawn(cmd, 24, 80).expect("tetris on a pty");
    s.wait_for_text("Score: 0", DEADLINE).expect("the game");
    // Control-C ends the game unfinished, without a score.
    s.send(hotspare_tests::keys::CTRL_C).expect("interrupt");
    assert_eq!(s.wait_exit(DEADLINE).expect("exit").code(), Some(0));

    let mut s = Session::spawn(tetris(dir.path(), &["--resume", &log_arg]), 24, 80)
        .expect("tetris on a pty");
    s.wait_for_text("Score: 0", DEADLINE)
        .expect("the resumed game");
    s.send(b"q").expect("quit");
    s.wait_for_text(SEE_SCORES_PROMPT, DEADLINE)
        .expect("the scores prompt");
    s.send(b"\n").expect("answer the prompt");
    assert_eq!(s.wait_exit(DEADLINE).expect("exit").code(), Some(0));
    let text = s.contents();
    assert!(text.contains("x  level 3  ="), "{text}");
    assert!(
        text.contains(" on 3)"),
        "the table's entry is at level 3: {text}"
    );
}
