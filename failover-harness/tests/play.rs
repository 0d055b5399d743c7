//! `failover-harness play` end to end on a pseudo-terminal read with vt100: the game comes
//! up with a status row; play, pause, axe: the same board and score, and play on; axe three
//! times in a row (the key, and `failover-harness axe` from elsewhere); kill the spare
//! instead: the primary goes on and a new spare appears; the user's terminal is put back
//! whichever way the session ends.
//!
//! Nothing waits for time to pass: every step polls the screen or the session's status with
//! a deadline. Games run at level 1 and are paused before anything is compared, so the fall
//! timer cannot change what is asserted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{harness, output};
use hotspare_tests::{Session, vt100};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(60);
const ROWS: u16 = 25;
const COLS: u16 = 80;
const AXE: &[u8] = b"\x18";
const PAUSED: &str = "paused - press RETURN to continue";

/// A private runtime directory for the sessions of one test, and a place for scores.
struct Dirs {
    _tmp: TempDir,
    runtime: PathBuf,
    scores: PathBuf,
    /// The sessions' TMPDIR: where their private directories go.
    tmp: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = TempDir::new().expect("tempdir");
    let runtime = tmp.path().join("rt");
    std::fs::create_dir(&runtime).expect("mkdir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let scores = tmp.path().join("scores");
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).expect("mkdir");
    Dirs {
        _tmp: tmp,
        runtime,
        scores,
        tmp: tmpdir,
    }
}

fn play(d: &Dirs, extra: &[&str]) -> Session {
    let mut cmd = harness();
    cmd.args(["play", "--seed", "7", "-l", "1", "--scores-file"])
        .arg(&d.scores)
        .args(extra)
        .env("HOTSPARE_HARNESS_DIR", &d.runtime)
        .env("TMPDIR", &d.tmp)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("TETRIS_SCORES");
    Session::spawn(cmd, ROWS, COLS).expect("the harness starts on a pty")
}

/// `failover-harness ARGS` against the test's runtime directory.
fn client(d: &Dirs, args: &[&str]) -> common::Output {
    let mut cmd = harness();
    cmd.args(args).env("HOTSPARE_HARNESS_DIR", &d.runtime);
    output(cmd)
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Status {
    primary_pid: u32,
    spare_pid: u32,
    epoch: u64,
    failovers: u64,
    checkpoints: u64,
    spare_deaths: u64,
    last_rto_ms: Option<f64>,
    lag: u64,
    stall_last_us: f64,
    stall_p99_us: f64,
    mode: String,
    transport: String,
}

fn status(d: &Dirs) -> Status {
    let out = client(d, &["status", "--json"]);
    assert!(out.status.success(), "status failed: {}", out.stderr);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    // The contract's five keys first and in order, then the rest.
    let keys: Vec<&str> = text
        .trim_start_matches('{')
        .split(',')
        .filter_map(|kv| kv.split_once("\":"))
        .map(|(k, _)| k.trim_start_matches('"'))
        .collect();
    assert_eq!(
        keys,
        [
            "primary_pid",
            "spare_pid",
            "epoch",
            "failovers",
            "checkpoints",
            "spare_deaths",
            "last_rto_ms",
            "lag",
            "stall_last_us",
            "stall_p99_us",
            "mode",
            "transport",
        ],
        "{text}"
    );
    serde_json::from_str(&text).expect("the status object")
}

fn row(screen: &vt100::Screen, r: u16) -> String {
    screen
        .contents()
        .lines()
        .nth(usize::from(r))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// The game's part of the screen (rows 0-23): each cell's text and whether it is inverse.
fn game_screen(screen: &vt100::Screen) -> Vec<(String, bool)> {
    let mut cells = Vec::new();
    for r in 0..ROWS - 1 {
        for c in 0..COLS {
            let cell = screen.cell(r, c);
            // A cell never written and one written with a space look the same.
            let text = cell.map(|x| x.contents().to_owned()).unwrap_or_default();
            cells.push((
                if text.is_empty() {
                    " ".to_owned()
                } else {
                    text
                },
                cell.is_some_and(vt100::Cell::inverse),
            ));
        }
    }
    cells
}

fn board_is_drawn(screen: &vt100::Screen) -> bool {
    let rev = |r: u16, c: u16| screen.cell(r, c).is_some_and(vt100::Cell::inverse);
    screen.alternate_screen()
        && (0..20).all(|r| rev(r, 27) && rev(r, 28) && rev(r, 49) && rev(r, 50))
        && (27..51).all(|c| rev(20, c))
}

fn score(screen: &vt100::Screen) -> Option<u32> {
    row(screen, 0)
        .strip_prefix("Score: ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn status_row(screen: &vt100::Screen) -> String {
    row(screen, ROWS - 1)
}

/// The status row (80 columns: its short form) says the spare holds a checkpoint and
/// `failovers` happened.
fn protected(screen: &vt100::Screen, failovers: u64) -> bool {
    protected_row(&status_row(screen), failovers)
}

fn protected_row(s: &str, failovers: u64) -> bool {
    s.starts_with("^X axe|")
        && (s.contains(&format!("|failovers {failovers}|"))
            || s.contains(&format!("|failovers {failovers} (")))
        && !s.contains("syncing")
        && !s.contains("|S -|")
        && !s.contains("FAILING OVER")
}

fn wait(s: &mut Session, what: &str, cond: impl FnMut(&vt100::Screen) -> bool) {
    s.wait_for(what, DEADLINE, cond)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Polls `f` until it gives a value, pumping the session meanwhile.
fn until<T>(s: &mut Session, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        let _ = s.pump(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
}

/// Starts a session and waits until the game is drawn and its spare protects it.
fn started(d: &Dirs) -> Session {
    let mut s = play(d, &[]);
    wait(&mut s, "the board and a synced spare", |sc| {
        board_is_drawn(sc) && protected(sc, 0)
    });
    s
}

/// Moves and drops a piece, waits for the points, pauses; returns the paused screen.
fn play_and_pause(s: &mut Session) -> Vec<(String, bool)> {
    s.send(b"jj ").expect("typing on the terminal");
    wait(s, "points for the drop", |sc| {
        score(sc).is_some_and(|p| p > 0)
    });
    s.send(b"p").expect("typing on the terminal");
    wait(s, "the pause message", |sc| row(sc, 22).contains(PAUSED));
    game_screen(s.screen())
}

/// Axes with the key and waits for the takeover: failover `n` done, a new spare synced, the
/// same paused screen.
fn axe_and_check(s: &mut Session, d: &Dirs, n: u64, paused: &[(String, bool)]) -> Status {
    let before = status(d);
    s.send(AXE).expect("typing on the terminal");
    wait(s, &format!("failover {n} and a synced spare"), |sc| {
        protected(sc, n)
    });
    same_game(s, paused);
    let after = status(d);
    assert_eq!(after.failovers, n);
    assert_eq!(after.primary_pid, before.spare_pid, "the spare took over");
    assert!(!alive(before.primary_pid), "the old primary is dead");
    assert!(
        after.spare_pid != 0 && after.spare_pid != before.spare_pid,
        "a new spare"
    );
    assert!(after.epoch > before.epoch, "{before:?} -> {after:?}");
    after
}

/// Waits for the game's screen to be `want` again; on a timeout, says which cells differ.
fn same_game(s: &mut Session, want: &[(String, bool)]) {
    if s.wait_for("the same paused game on the screen", DEADLINE, |sc| {
        game_screen(sc) == want
    })
    .is_err()
    {
        let got = game_screen(s.screen());
        let diff: Vec<String> = got
            .iter()
            .zip(want)
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .map(|(i, (g, w))| {
                format!(
                    "row {} col {}: {g:?} != {w:?}",
                    i / usize::from(COLS),
                    i % usize::from(COLS)
                )
            })
            .collect();
        panic!(
            "the game's screen differs:\n{}\n{}",
            diff.join("\n"),
            s.contents()
        );
    }
}

fn quit(s: &mut Session) {
    s.send(b"q").expect("typing on the terminal");
    wait(s, "the scores prompt", |sc| {
        sc.contents().contains(tetris::scores::SEE_SCORES_PROMPT)
    });
    s.send(b"\r").expect("typing on the terminal");
    let st = s.wait_exit(DEADLINE).expect("the harness exits");
    assert!(st.success(), "{st:?}: {}", s.contents());
    assert_eq!(&s.termios().expect("termios"), s.initial_termios());
}

#[test]
fn play_pause_axe_same_board_and_score_play_on() {
    let d = dirs();
    let mut s = started(&d);
    let first = status(&d);
    assert_eq!((first.failovers, first.epoch), (0, 1));
    let row0 = status_row(s.screen());
    assert!(
        row0.contains(&format!(
            "|P {}|S {}|ep 1|",
            first.primary_pid, first.spare_pid
        )),
        "{row0}"
    );
    let paused = play_and_pause(&mut s);
    let points = score(s.screen()).expect("a score");
    axe_and_check(&mut s, &d, 1, &paused);
    assert_eq!(score(s.screen()), Some(points));
    // Play on: a key ends the pause and moves; a drop scores again.
    s.send(b"l").expect("typing on the terminal");
    wait(&mut s, "the pause over", |sc| !row(sc, 22).contains(PAUSED));
    s.send(b" ").expect("typing on the terminal");
    wait(&mut s, "more points", |sc| {
        score(sc).is_some_and(|p| p > points)
    });
    quit(&mut s);
}

#[test]
fn axe_three_times_in_a_row_with_the_key_and_from_another_terminal() {
    let d = dirs();
    let mut s = started(&d);
    let paused = play_and_pause(&mut s);
    axe_and_check(&mut s, &d, 1, &paused);
    axe_and_check(&mut s, &d, 2, &paused);
    // The third from another terminal.
    let before = status(&d);
    let out = client(&d, &["axe"]);
    assert!(out.status.success(), "axe failed: {}", out.stderr);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains(&before.primary_pid.to_string()), "{said}");
    wait(&mut s, "failover 3", |sc| protected(sc, 3));
    same_game(&mut s, &paused);
    let after = status(&d);
    assert_eq!((after.failovers, after.primary_pid), (3, before.spare_pid));
    quit(&mut s);
}

#[test]
fn a_killed_spare_is_replaced_and_the_primary_goes_on() {
    let d = dirs();
    let mut s = started(&d);
    let paused = play_and_pause(&mut s);
    let before = status(&d);
    kill(Pid::from_raw(before.spare_pid as i32), Signal::SIGKILL).expect("kill the spare");
    let after = until(&mut s, "a new spare", || {
        let st = status(&d);
        (st.spare_pid != 0 && st.spare_pid != before.spare_pid).then_some(st)
    });
    assert_eq!(after.primary_pid, before.primary_pid, "the primary goes on");
    assert_eq!((after.failovers, after.spare_deaths), (0, 1));
    assert_eq!(before.spare_deaths, 0);
    wait(&mut s, "the new spare synced", |sc| {
        protected(sc, 0)
            && status_row(sc).contains(&format!("|S {}|", after.spare_pid))
            && status_row(sc).contains("|sd 1|")
    });
    assert_eq!(game_screen(s.screen()), paused, "the game did not move");
    // And the new spare takes over when the primary is axed.
    let took = axe_and_check(&mut s, &d, 1, &paused);
    assert_eq!(took.primary_pid, after.spare_pid);
    quit(&mut s);
}

#[test]
fn axe_and_status_with_no_session_say_so() {
    let d = dirs();
    for args in [&["axe"][..], &["status", "--json"][..]] {
        let out = client(&d, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            out.stderr
                .contains("no failover-harness session is running"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
}

/// Ends a session `how`, checks the terminal is back as it was, the alternate screen left,
/// and no game left behind.
/// Returns what the screen showed at the end.
fn ends_restored(how: impl FnOnce(&mut Session, &Dirs, &Status), want_success: bool) -> String {
    let d = dirs();
    let mut s = started(&d);
    let st = status(&d);
    how(&mut s, &d, &st);
    let exit = s.wait_exit(DEADLINE).expect("the harness exits");
    assert_eq!(exit.success(), want_success, "{exit:?}: {}", s.contents());
    assert_eq!(&s.termios().expect("termios"), s.initial_termios());
    assert!(
        !s.screen().alternate_screen(),
        "the alternate screen is left"
    );
    assert!(!s.screen().hide_cursor(), "the cursor is shown");
    let left: Vec<_> = std::fs::read_dir(&d.tmp)
        .expect("the sessions' TMPDIR")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the session left {left:?}");
    let deadline = Instant::now() + DEADLINE;
    while alive(st.primary_pid) || alive(st.spare_pid) {
        assert!(Instant::now() < deadline, "games outlived the session");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.contents()
}

#[test]
fn the_terminal_is_restored_after_ctrl_c() {
    ends_restored(|s, _, _| s.send(b"\x03").unwrap(), true);
}

#[test]
fn ctrl_c_typed_while_a_failover_is_under_way_still_ends_the_session() {
    // The axe and ^C in one read: the ^C meets a primary already killed, and goes to the
    // promoted game the moment it says it resumed. Its handlers must be in by then: SIGINT's
    // default action killed it in about one run in six, and with no synced spare yet the
    // game was lost.
    ends_restored(|s, _, _| s.send(b"\x18\x03").unwrap(), true);
}

#[test]
fn the_terminal_is_restored_when_both_games_are_killed_and_the_loss_is_said_plainly() {
    let said = ends_restored(
        |_, _, st| {
            kill(Pid::from_raw(st.spare_pid as i32), Signal::SIGKILL).expect("kill");
            kill(Pid::from_raw(st.primary_pid as i32), Signal::SIGKILL).expect("kill");
        },
        false,
    );
    // The message may wrap on the 80 columns: read it as one line.
    let text = said.replace('\n', "");
    let message = text
        .split("failover-harness: ")
        .last()
        .unwrap_or_default()
        .trim_end();
    assert!(
        message.starts_with("both games were killed") && message.ends_with("the game is lost"),
        "{said}"
    );
}

#[test]
fn the_terminal_is_restored_when_the_harness_is_terminated() {
    ends_restored(|s, _, _| s.signal(Signal::SIGTERM).unwrap(), false);
}

#[test]
fn the_terminal_is_restored_when_the_harness_is_hung_up() {
    ends_restored(|s, _, _| s.signal(Signal::SIGHUP).unwrap(), false);
}

#[test]
fn the_terminal_is_restored_after_a_harness_panic() {
    let d = dirs();
    let mut cmd = harness();
    cmd.args(["play", "--seed", "7", "-l", "1", "--scores-file"])
        .arg(&d.scores)
        .env("HOTSPARE_HARNESS_DIR", &d.runtime)
        .env("TERM", "xterm-256color")
        .env("FAILOVER_HARNESS_PANIC_AFTER", "1");
    let mut s = Session::spawn(cmd, ROWS, COLS).expect("spawn");
    let exit = s.wait_exit(DEADLINE).expect("the harness exits");
    assert!(!exit.success());
    assert!(s.contents().contains("panicked"), "{}", s.contents());
    assert_eq!(&s.termios().expect("termios"), s.initial_termios());
    assert!(!s.screen().alternate_screen());
}

#[test]
fn a_too_small_terminal_is_refused_and_left_as_it_was() {
    let d = dirs();
    let mut cmd = harness();
    cmd.args(["play", "--scores-file"])
        .arg(&d.scores)
        .env("HOTSPARE_HARNESS_DIR", &d.runtime);
    let mut s = Session::spawn(cmd, 23, 80).expect("spawn");
    let exit = s.wait_exit(DEADLINE).expect("exit");
    assert!(!exit.success());
    assert!(s.contents().contains("at least 40x24"), "{}", s.contents());
    assert_eq!(&s.termios().expect("termios"), s.initial_termios());
}

#[test]
fn a_resize_reaches_the_game_and_its_spare() {
    let d = dirs();
    let mut s = started(&d);
    s.send(b"p").expect("typing on the terminal");
    wait(&mut s, "the pause message", |sc| {
        row(sc, 22).contains(PAUSED)
    });
    // 31x100: the games get 30x100, where the well is centred at column 37 from row 3.
    s.resize(31, 100).unwrap();
    let recentred = |sc: &vt100::Screen| {
        let rev = |r: u16, c: u16| sc.cell(r, c).is_some_and(vt100::Cell::inverse);
        (3..23).all(|r| rev(r, 37) && rev(r, 38) && rev(r, 59) && rev(r, 60)) && !rev(5, 27)
    };
    let bottom_row_protected = |sc: &vt100::Screen, n: u64| protected_row(&row(sc, 30), n);
    wait(
        &mut s,
        "the well re-centred and the status row at the bottom",
        |sc| recentred(sc) && bottom_row_protected(sc, 0),
    );
    s.send(AXE).expect("typing on the terminal");
    wait(&mut s, "the promoted spare's well, at the new size", |sc| {
        recentred(sc) && bottom_row_protected(sc, 1) && row(sc, 28).contains(PAUSED)
    });
    quit(&mut s);
}

#[test]
fn chaos_axes_the_primary_again_and_again() {
    let d = dirs();
    let mut s = play(&d, &["--chaos", "0.3"]);
    wait(&mut s, "the board", board_is_drawn);
    let paused = play_and_pause(&mut s);
    let first = status(&d);
    wait(&mut s, "three more failovers", |sc| {
        let r = status_row(sc);
        (first.failovers + 3..first.failovers + 100)
            .any(|n| r.contains(&format!("|failovers {n} (")))
    });
    same_game(&mut s, &paused);
    let after = status(&d);
    assert!(
        after.failovers >= first.failovers + 3,
        "{first:?} -> {after:?}"
    );
    assert!(after.epoch > first.epoch);
    s.send(b"q").expect("typing on the terminal");
    wait(&mut s, "the scores prompt", |sc| {
        sc.contents().contains(tetris::scores::SEE_SCORES_PROMPT)
    });
    s.send(b"\r").expect("typing on the terminal");
    let st = s.wait_exit(DEADLINE).expect("the harness exits");
    assert!(st.success(), "{st:?}: {}", s.contents());
}

/// The game state in the memory of process `pid` (the region is at the same address in every
/// process); `None` while it is not mapped.
fn game_in(pid: u32) -> Option<tetris::state::GameState> {
    use std::os::unix::fs::FileExt as _;
    use zerocopy::FromBytes as _;
    let addr = tetris::worker::state_address().ok()?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; size_of::<tetris::state::GameState>()];
    mem.read_exact_at(&mut buf, addr as u64).ok()?;
    tetris::state::GameState::read_from_bytes(&buf).ok()
}

#[test]
fn keys_typed_around_failovers_are_neither_lost_nor_doubled() {
    let d = dirs();
    let mut s = started(&d);
    s.send(b"p").expect("typing on the terminal");
    wait(&mut s, "the pause message", |sc| {
        row(sc, 22).contains(PAUSED)
    });
    let st = status(&d);
    let before = until(&mut s, "the paused state", || {
        game_in(st.primary_pid).filter(|g| g.is_paused())
    });
    // While paused each `p` is consumed (one input, one byte) and the game stays paused and
    // its fall timer frozen: the count tells exactly what reached the game. Keys go before,
    // right after and during each failover; the second axe comes during the first failover.
    let mut typed = 0u64;
    for burst in [&b"pp\x18pp"[..], b"p\x18p\x18ppp", b"\x18pppp"] {
        s.send(burst).expect("typing on the terminal");
        typed += burst.iter().filter(|&&b| b == b'p').count() as u64;
    }
    let want_inputs = before.inputs + typed;
    let want_bytes = before.tty_bytes + typed;
    // Axes asked for while one is pending are one axe: two or three failovers.
    let deadline = Instant::now() + DEADLINE;
    let (st, g) = loop {
        let st = status(&d);
        let settled = st.failovers >= 2
            && protected(s.screen(), st.failovers)
            && !status_row(s.screen()).contains("axe waits");
        if let Some(g) = game_in(st.primary_pid).filter(|g| settled && g.tty_bytes >= want_bytes) {
            break (st, g);
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {st:?}\n{}",
            s.contents()
        );
        let _ = s.pump(Duration::from_millis(20));
    };
    assert_eq!(
        (g.inputs, g.tty_bytes),
        (want_inputs, want_bytes),
        "after {} failovers",
        st.failovers
    );
    assert!(g.is_paused());
    assert_eq!(
        (g.board, g.pos, g.points),
        (before.board, before.pos, before.points)
    );
    quit(&mut s);
}

#[test]
fn axe_at_the_score_screen_says_at_once_that_the_game_has_ended() {
    let d = dirs();
    let mut s = started(&d);
    s.send(b"q").expect("typing on the terminal");
    wait(&mut s, "the scores prompt", |sc| {
        sc.contents().contains(tetris::scores::SEE_SCORES_PROMPT)
    });
    // The primary tells its spare goodbye as the game ends; the status shows that spare gone.
    until(&mut s, "the spare gone", || {
        (status(&d).spare_pid == 0).then_some(())
    });
    let out = client(&d, &["axe"]);
    assert!(!out.status.success(), "an axe of an ended game succeeded");
    assert!(out.stderr.contains("the game has ended"), "{}", out.stderr);
    s.send(b"\r").expect("typing on the terminal");
    let st = s.wait_exit(DEADLINE).expect("the harness exits");
    assert!(st.success(), "{st:?}: {}", s.contents());
}

#[test]
fn status_right_after_an_axe_shows_the_new_primary_and_the_session_counters() {
    let d = dirs();
    let mut s = started(&d);
    play_and_pause(&mut s);
    let before = until(&mut s, "stats with a stall", || {
        let st = status(&d);
        (st.checkpoints > 0 && st.stall_p99_us > 0.0).then_some(st)
    });
    assert_eq!(
        (before.mode.as_str(), before.transport.as_str()),
        ("async", "unix")
    );
    assert_eq!(before.last_rto_ms, None);
    let out = client(&d, &["axe"]);
    assert!(out.status.success(), "axe failed: {}", out.stderr);
    let after = status(&d);
    assert_eq!(
        after.primary_pid, before.spare_pid,
        "{before:?} -> {after:?}"
    );
    assert!(after.epoch > before.epoch, "{before:?} -> {after:?}");
    assert_eq!(after.failovers, 1);
    // The session's counters, not the new process's.
    assert!(
        after.checkpoints >= before.checkpoints,
        "{before:?} -> {after:?}"
    );
    assert!(after.stall_p99_us > 0.0, "{after:?}");
    wait(&mut s, "a synced spare", |sc| protected(sc, 1));
    let later = status(&d);
    assert!(later.last_rto_ms.is_some_and(|ms| ms > 0.0), "{later:?}");
    let row = status_row(s.screen());
    assert!(!row.contains("|ckpt 0|"), "{row}");
    quit(&mut s);
}

#[test]
fn the_events_of_a_failover_are_kept_shown_by_status_and_written_to_a_file() {
    let d = dirs();
    let file = d.tmp.with_file_name("events.log");
    let mut s = play(&d, &["--events", file.to_str().expect("utf-8")]);
    wait(&mut s, "the board and a synced spare", |sc| {
        board_is_drawn(sc) && protected(sc, 0)
    });
    let first = status(&d);
    s.send(AXE).expect("typing on the terminal");
    wait(&mut s, "failover 1 and a synced spare", |sc| {
        protected(sc, 1)
    });
    let second = status(&d);
    let out = client(&d, &["status", "--events"]);
    assert!(out.status.success(), "{}", out.stderr);
    let shown = String::from_utf8(out.stdout).expect("utf-8");
    let want = [
        format!("session started: primary {}", first.primary_pid),
        format!("spare {} synced", first.spare_pid),
        format!("axe: primary {} SIGKILLed", first.primary_pid),
        format!("primary {} seen dead", first.primary_pid),
        format!("spare {} promoted: epoch 2", first.spare_pid),
        format!("spare {} started", second.spare_pid),
        format!("spare {} synced", second.spare_pid),
    ];
    let mut at = 0;
    for w in &want {
        let found = shown[at..]
            .find(w.as_str())
            .unwrap_or_else(|| panic!("no {w:?} after byte {at} in:\n{shown}"));
        at += found + w.len();
    }
    // The recovery time ends at the promoted game's first byte: before or after the new
    // spare is started.
    let dead = shown.find("seen dead").expect("the death");
    assert!(shown[dead..].contains("recovery time"), "{shown}");
    quit(&mut s);
    let written = std::fs::read_to_string(&file).expect("the events file");
    assert!(
        written.starts_with(shown.lines().next().unwrap_or("?")),
        "{written}"
    );
    assert!(
        written
            .trim_end()
            .ends_with("session ended: the game finished"),
        "{written}"
    );
}

#[test]
fn the_score_prompt_echoes_what_is_typed_as_in_tetris_alone() {
    let d = dirs();
    let mut s = started(&d);
    s.send(b"q").expect("typing on the terminal");
    wait(&mut s, "the scores prompt", |sc| {
        sc.contents().contains(tetris::scores::SEE_SCORES_PROMPT)
    });
    s.send(b"xyz").expect("typing on the terminal");
    // As the game alone shows it: below the prompt, where its line ends.
    wait(&mut s, "the keys echoed below the prompt", |sc| {
        let text = sc.contents();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .windows(2)
            .any(|w| w[0].contains(tetris::scores::SEE_SCORES_PROMPT) && w[1].trim_end() == "xyz")
    });
    s.send(b"\r").expect("typing on the terminal");
    let st = s.wait_exit(DEADLINE).expect("the harness exits");
    assert!(st.success(), "{st:?}: {}", s.contents());
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "T")
    })
}

#[test]
fn ctrl_z_suspends_the_session_with_the_terminal_back_and_fg_redraws() {
    let d = dirs();
    let mut s = started(&d);
    let paused = play_and_pause(&mut s);
    let st = status(&d);
    let harness = s.pid();
    s.send(b"\x1a").expect("typing on the terminal");
    wait(&mut s, "the session stopped and the screen back", |sc| {
        stopped(harness) && stopped(st.primary_pid) && !sc.alternate_screen()
    });
    assert_eq!(&s.termios().expect("termios"), s.initial_termios());
    // `fg`: the shell continues the harness; the game is drawn again, the same.
    kill(Pid::from_raw(harness as i32), Signal::SIGCONT).expect("SIGCONT");
    wait(&mut s, "the game redrawn", |sc| {
        board_is_drawn(sc) && protected(sc, 0)
    });
    same_game(&mut s, &paused);
    assert!(!stopped(st.primary_pid));
    assert_ne!(
        &s.termios().expect("termios"),
        s.initial_termios(),
        "raw again"
    );
    quit(&mut s);
}

/// Board rows `rows` as the screen shows them: true where a block (`[`) is drawn in columns
/// 1-10 (the game's screen is the top 24 rows, laid out as tetris on 80x24).
fn screen_cells(screen: &vt100::Screen, rows: std::ops::RangeInclusive<usize>) -> Vec<bool> {
    let mut cells = Vec::new();
    for row in rows {
        for col in 1..=10 {
            let cell = screen.cell((row - 1) as u16, (2 * col + 27) as u16);
            cells.push(cell.is_some_and(|c| c.contents() == "["));
        }
    }
    cells
}

/// The same for a board.
fn board_cells(board: &[u8], rows: std::ops::RangeInclusive<usize>) -> Vec<bool> {
    rows.flat_map(|row| (1..=10).map(move |col| board[row * tetris::state::B_COLS + col] != 0))
        .collect()
}

#[test]
fn an_axe_in_the_line_clear_pause_keeps_the_pause_and_drops_the_keys_typed_in_it() {
    use tetris::rules::{self, Input, Mode};
    // On seed 5 at level 1 these three pieces fill board row 20 (tetris/tests/e2e.rs); the
    // row is then shown cleared for one fall rate and closed up for another (about 2 s).
    const PIECES: [&[u8]; 3] = [b"kkjjjjj ", b"kk ", b"lll "];
    let mut state = rules::new_game(5, 1, tetris::state::DEFAULT_KEYS, false);
    let mut locked = vec![state.board];
    let mut frames = Vec::new();
    for keys in PIECES {
        for &k in keys {
            rules::step(&mut state, Input::Key(k), Mode::Interactive);
        }
        let mut with_piece = state.board;
        rules::place(&mut with_piece, state.curshape, state.pos, true);
        frames = tetris::play::elide_frames(&with_piece);
        rules::step(&mut state, Input::Timer, Mode::Interactive);
        locked.push(state.board);
    }
    assert_eq!(frames.len(), 2, "the last piece clears one row");
    // The piece dealt after the pause, where it stands before any key moves it.
    let mut dealt = [0u8; tetris::state::B_SIZE];
    rules::place(&mut dealt, state.curshape, state.pos, true);

    let d = dirs();
    let mut s = play(&d, &["--seed", "5"]);
    wait(&mut s, "the board and a synced spare", |sc| {
        board_is_drawn(sc) && protected(sc, 0)
    });
    for (i, keys) in PIECES.iter().enumerate() {
        wait(&mut s, &format!("piece {i} dealt"), |sc| {
            screen_cells(sc, 5..=20) == board_cells(&locked[i], 5..=20)
                && screen_cells(sc, 1..=4).contains(&true)
        });
        s.send(keys).expect("typing on the terminal");
    }
    wait(&mut s, "the full row shown cleared", |sc| {
        screen_cells(sc, 1..=20) == board_cells(&frames[0], 1..=20)
    });
    let shown = Instant::now();
    let out = client(&d, &["axe"]);
    assert!(out.status.success(), "axe failed: {}", out.stderr);
    // Typed while the promoted game is still in the pause: dropped, as the primary would
    // have dropped them (and not replayed as moves of the next piece).
    s.send(b"jjj").expect("typing on the terminal");
    let typed = shown.elapsed();
    assert!(
        typed < Duration::from_millis(1500),
        "the axe and the keys took {typed:?}: the pause (about 2 s) may be over, so this run \
         proves nothing"
    );
    wait(&mut s, "the next piece after the pause", |sc| {
        screen_cells(sc, 5..=20) == board_cells(&locked[3], 5..=20)
            && screen_cells(sc, 1..=4).contains(&true)
    });
    // Pause (typed after the pause, so it counts): once the game shows it, every key
    // before it has been dealt with, dropped or played.
    s.send(b"p").expect("typing on the terminal");
    wait(&mut s, "the game paused", |sc| {
        sc.contents().contains(PAUSED)
    });
    // The columns the falling piece covers (a fall meanwhile moves it down, not sideways).
    let columns = |cells: Vec<bool>| -> Vec<usize> {
        (0..10)
            .filter(|c| cells.chunks(10).any(|row| row[*c]))
            .collect()
    };
    assert_eq!(
        columns(screen_cells(s.screen(), 1..=6)),
        columns(board_cells(&dealt, 1..=6)),
        "keys typed during the pause moved the next piece"
    );
    assert_eq!(status(&d).failovers, 1);
    s.send(b"q").expect("typing on the terminal");
}
