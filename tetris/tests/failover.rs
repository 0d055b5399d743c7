//! Primary and spare as two processes over a Unix socket: the primary is SIGKILLed and the
//! spare, whose stream ends without the primary's goodbye, promotes itself and plays on from
//! the primary's last committed checkpoint. The spare's terminal stays untouched until then.
//!
//! Both games run in sync mode, so a state the primary shows (or holds, once it waits for
//! input) is one the spare has acknowledged: what the spare must continue from is known
//! exactly. The states are compared byte for byte, read from each process's memory at the
//! region's address (the same in every process of the binary).

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::screen::{blocks_at, piece_cells};
use common::{
    LEVEL, SEED, after_inputs, args, consumed, game_in, resumed, script, socket_dir,
    tetris_with_status,
};
use hotspare_tests::{Session, keys, vt100};
use nix::sys::signal::Signal;
use nix::sys::termios::LocalFlags;
use tempfile::TempDir;
use tetris::rules::{self, Input, Mode};
use tetris::scores::SEE_SCORES_PROMPT;
use tetris::state::DEFAULT_KEYS;

const DEADLINE: Duration = Duration::from_secs(30);
const HELP: &str = "j - left  k - rotate  l - right  <space> - drop  p - pause  q - quit  n - down";
const PAUSED: &str = "                      paused - press RETURN to continue";
/// The interactive games' seed.
const PLAY_SEED: u64 = 7;

/// An interactive game on a pty at level 1 in `role`, its status line going to `status`.
fn interactive(dir: &Path, socks: &Path, role: &str, status: &Path) -> Command {
    let seed = PLAY_SEED.to_string();
    let scores = dir.join("scores");
    let mut cmd = tetris_with_status(
        &args(&[&"--seed", &seed, &"-l", &"1", &"--scores-file", &scores]),
        status,
    );
    cmd.env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("TETRIS_SCORES")
        .env("HS_ROLE", role)
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", socks)
        .env("HS_SOCKET_NAME", "x")
        .env("HS_MODE", "sync");
    cmd
}

/// The well's walls and floor on 80x24, in reverse video on the alternate screen.
fn well_is_drawn(screen: &vt100::Screen) -> bool {
    let rev = |r: u16, c: u16| screen.cell(r, c).is_some_and(vt100::Cell::inverse);
    screen.alternate_screen()
        && (0..20).all(|r| rev(r, 27) && rev(r, 28) && rev(r, 49) && rev(r, 50))
        && (27..51).all(|c| rev(20, c))
}

fn line_22(screen: &vt100::Screen) -> Option<String> {
    screen
        .contents()
        .lines()
        .nth(22)
        .map(|l| l.trim_end().to_owned())
}

/// The well and the help line (as tetris/tests/e2e.rs checks them).
fn board_is_drawn(screen: &vt100::Screen) -> bool {
    well_is_drawn(screen) && line_22(screen).as_deref() == Some(HELP)
}

/// The well and the pause message instead of the help line.
fn paused_is_shown(screen: &vt100::Screen) -> bool {
    well_is_drawn(screen) && line_22(screen).as_deref() == Some(PAUSED)
}

/// Reads whatever the program wrote so far, without waiting for more.
fn drain(s: &mut Session) {
    while s.pump(Duration::ZERO).expect("reading the pty") {}
}

fn kill_primary(primary: &mut Session) {
    primary
        .signal(Signal::SIGKILL)
        .expect("SIGKILL the primary");
    let status = primary.wait_exit(DEADLINE).expect("the primary dies");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_promoted_spare_continues_the_primarys_last_checkpoint_paused_with_its_fall_timer() {
    let dir = TempDir::new().unwrap();
    let socks = socket_dir(dir.path());
    let (p_status, s_status) = (dir.path().join("p-status"), dir.path().join("s-status"));
    let mut spare =
        Session::spawn(interactive(dir.path(), &socks, "spare", &s_status), 24, 80).unwrap();
    let mut primary = Session::spawn(
        interactive(dir.path(), &socks, "primary", &p_status),
        24,
        80,
    )
    .unwrap();
    primary
        .wait_for("the primary's board", DEADLINE, board_is_drawn)
        .unwrap();

    // Two moves left and one fall, in whichever order the clock allows: the piece is then
    // one row down, two columns left, and the fall timer has been re-armed (sped up) twice.
    primary.send(b"jj").unwrap();
    let mut want = rules::new_game(PLAY_SEED, 1, DEFAULT_KEYS, false);
    for input in [Input::Key(b'j'), Input::Key(b'j'), Input::Timer] {
        rules::step(&mut want, input, Mode::Interactive);
    }
    let cells = piece_cells(&want);
    primary
        .wait_for("the piece moved and fallen one row", DEADLINE, |sc| {
            blocks_at(sc, &cells)
        })
        .unwrap();
    primary.send(b"p").unwrap();
    primary
        .wait_for("the pause message", DEADLINE, paused_is_shown)
        .unwrap();

    // Paused, the primary waits for a key and changes nothing: its memory is its last
    // checkpoint, which sync mode had the spare acknowledge before the screen showed it.
    let last = game_in(primary.pid()).expect("the primary's state");
    assert!(last.is_valid_header());
    assert!(last.is_paused());
    assert!(last.inputs >= 4, "j, j, at least one fall, p: {last:?}");
    let first_arm = 1_000_000 - 1_000_000 / 3000;
    assert!(
        last.fallrate_us <= first_arm - first_arm / 3000,
        "the timer was re-armed after a fall: {last:?}"
    );
    assert!(last.timer_left_us > 0 && last.timer_left_us <= last.fallrate_us);

    drain(&mut spare);
    assert!(spare.output().is_empty(), "the spare wrote to its terminal");
    kill_primary(&mut primary);

    spare
        .wait_for("the promoted spare's paused board", DEADLINE, |sc| {
            paused_is_shown(sc) && blocks_at(sc, &piece_cells(&last))
        })
        .unwrap();
    let took_over = game_in(spare.pid()).expect("the spare's state");
    assert_eq!(
        took_over, last,
        "the promoted spare's state differs from the primary's last checkpoint"
    );
    let (checkpoint, inputs, epoch) = resumed(&s_status).expect("the spare's resumed line");
    assert_eq!(inputs, last.inputs);
    // One checkpoint per input after the first, and one more if the spare connected after
    // the first (a new spare asks an idle primary for a checkpoint).
    assert!(
        checkpoint == last.inputs + 1 || checkpoint == last.inputs + 2,
        "checkpoint {checkpoint} for {} inputs",
        last.inputs
    );
    assert_eq!(epoch, 2);
    assert_eq!(
        std::fs::read_to_string(&p_status).unwrap(),
        "",
        "a fresh primary is not resumed"
    );

    // The key that ends the pause is obeyed: q quits the promoted game.
    spare.send(b"q").unwrap();
    spare.wait_for_text(SEE_SCORES_PROMPT, DEADLINE).unwrap();
    spare.send(b"\n").unwrap();
    let status = spare.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        spare.contents().contains("Your score:"),
        "{}",
        spare.contents()
    );
}

#[test]
fn the_spares_terminal_is_untouched_until_it_is_promoted() {
    let dir = TempDir::new().unwrap();
    let socks = socket_dir(dir.path());
    let status = dir.path().join("status");
    let mut spare =
        Session::spawn(interactive(dir.path(), &socks, "spare", &status), 24, 80).unwrap();
    let mut primary =
        Session::spawn(interactive(dir.path(), &socks, "primary", &status), 24, 80).unwrap();
    primary
        .wait_for("the primary's board", DEADLINE, board_is_drawn)
        .unwrap();
    primary.send(b"kll").unwrap();
    let mut want = rules::new_game(PLAY_SEED, 1, DEFAULT_KEYS, false);
    for k in b"kll" {
        rules::step(&mut want, Input::Key(*k), Mode::Interactive);
    }
    let cells = piece_cells(&want);
    // Where the piece is after the keys, fallen or not: the same column and shape.
    primary
        .wait_for("the piece turned and moved right", DEADLINE, |sc| {
            (0..3).any(|down| {
                let shifted: Vec<_> = cells.iter().map(|&(r, c)| (r + down, c)).collect();
                blocks_at(sc, &shifted)
            })
        })
        .unwrap();

    // The spare has acknowledged those checkpoints (sync mode), so it has long been running:
    // its terminal must be exactly as it was given.
    drain(&mut spare);
    assert!(
        spare.output().is_empty(),
        "the spare wrote {:?}",
        spare.output_text()
    );
    assert_eq!(&spare.termios().unwrap(), spare.initial_termios());
    assert!(!spare.screen().alternate_screen());
    assert!(spare.exit_status().is_none(), "the spare is still there");

    kill_primary(&mut primary);
    spare
        .wait_for("the promoted spare's board", DEADLINE, board_is_drawn)
        .unwrap();
    let game = spare.termios().unwrap();
    assert!(!game.local_flags.contains(LocalFlags::ICANON), "game mode");
    assert!(!game.local_flags.contains(LocalFlags::ECHO), "game mode");

    // And it puts the terminal back when its game ends.
    spare.send(keys::CTRL_C).unwrap();
    let status = spare.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(&spare.termios().unwrap(), spare.initial_termios());
    assert!(!spare.screen().alternate_screen());
    assert!(!spare.screen().hide_cursor());
}

/// A headless child with piped stdin and stdout; `strategy` is `copy` or `fork`, optionally
/// followed by `/` and the tracker to force (the game's default is `full`).
fn headless(dir: &Path, socks: &Path, role: &str, strategy: &str, status: &Path) -> Child {
    let (strategy, tracker) = strategy.split_once('/').unwrap_or((strategy, ""));
    let (seed, level) = (SEED.to_string(), LEVEL.to_string());
    let mut cmd = tetris_with_status(
        &args(&[&"--headless", &"--seed", &seed, &"-l", &level]),
        status,
    );
    cmd.env("HS_ROLE", role)
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", socks)
        .env("HS_SOCKET_NAME", "x")
        .env("HS_MODE", "sync")
        .env("HS_STRATEGY", strategy)
        .env("HS_TRACKER", tracker)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("spawn tetris")
}

/// The failover harness's way: feed the primary, kill it, read the promoted spare's resumed
/// line, replay what it has not consumed; the spare's JSON is the uninterrupted game's.
fn headless_failover(strategy: &str, cut: usize) {
    let dir = TempDir::new().expect("headless failover step");
    let socks = socket_dir(dir.path());
    let script = script();
    let plain = tetris::headless::to_json(&tetris::headless::run_script(
        &common::options(),
        SEED,
        &script,
    ));
    let (p_status, s_status) = (dir.path().join("p-status"), dir.path().join("s-status"));
    let mut spare = headless(dir.path(), &socks, "spare", strategy, &s_status);
    let mut primary = headless(dir.path(), &socks, "primary", strategy, &p_status);
    let mut to_primary = primary.stdin.take().expect("headless failover step");
    to_primary
        .write_all(&script[..cut])
        .expect("headless failover step");
    let sent = consumed(&script[..cut]);
    let pid = primary.id();
    wait_until("the primary to consume what was sent", || {
        game_in(pid).filter(|g| g.inputs == sent)
    });
    primary.kill().expect("headless failover step");
    primary.wait().expect("headless failover step");
    drop(to_primary);

    let (_, inputs, epoch) = wait_until("the spare's resumed line", || resumed(&s_status));
    assert_eq!(epoch, 2);
    // Sync mode: every input the primary consumed was acknowledged before it read the next;
    // the kill may land between applying the last one and its acknowledged checkpoint.
    assert!(
        inputs == sent || inputs + 1 == sent,
        "{strategy}, cut {cut}: the spare holds {inputs} inputs, {sent} were consumed"
    );
    let mut to_spare = spare.stdin.take().expect("headless failover step");
    to_spare
        .write_all(after_inputs(&script, inputs))
        .expect("headless failover step");
    drop(to_spare);
    let mut out = String::new();
    spare
        .stdout
        .take()
        .expect("headless failover step")
        .read_to_string(&mut out)
        .expect("headless failover step");
    let status = spare.wait().expect("headless failover step");
    let mut err = String::new();
    spare
        .stderr
        .take()
        .expect("headless failover step")
        .read_to_string(&mut err)
        .expect("headless failover step");
    assert!(status.success(), "{strategy}, cut {cut}: {status} {err}");
    assert_eq!(out, format!("{plain}\n"), "{strategy}, cut {cut}");
}

#[test]
fn a_headless_spare_takes_over_and_the_replayed_rest_ends_the_same_copy() {
    for cut in [1, 200, 480] {
        headless_failover("copy", cut);
    }
    headless_failover("copy/uffd", 250);
}

#[test]
fn a_headless_spare_takes_over_and_the_replayed_rest_ends_the_same_fork() {
    for cut in [1, 333] {
        headless_failover("fork", cut);
    }
    headless_failover("fork/uffd", 99);
}

#[test]
fn a_spare_whose_primary_finishes_the_game_exits_quietly() {
    let dir = TempDir::new().expect("tempdir");
    let socks = socket_dir(dir.path());
    let script = script();
    let plain = tetris::headless::to_json(&tetris::headless::run_script(
        &common::options(),
        SEED,
        &script,
    ));
    let (p_status, s_status) = (dir.path().join("p-status"), dir.path().join("s-status"));
    let spare = headless(dir.path(), &socks, "spare", "copy", &s_status);
    let mut primary = headless(dir.path(), &socks, "primary", "copy", &p_status);
    let mut to_primary = primary.stdin.take().expect("piped stdin");
    to_primary.write_all(&script).expect("feeding the primary");
    drop(to_primary);
    let done = primary.wait_with_output().expect("the primary's output");
    assert!(done.status.success(), "{done:?}");
    assert_eq!(String::from_utf8_lossy(&done.stdout), format!("{plain}\n"));
    let spare = spare.wait_with_output().expect("the spare's output");
    assert!(spare.status.success(), "{spare:?}");
    assert!(spare.stdout.is_empty(), "the spare played: {spare:?}");
    assert!(spare.stderr.is_empty(), "{spare:?}");
    assert_eq!(std::fs::read_to_string(&s_status).expect("status"), "");
}

/// A headless primary's `--stats` file, like its result line, is written before it tells its
/// spare goodbye: a primary killed between its goodbye and its exit (an axe that came as the
/// game ended, which lets no spare take over) still leaves them. The spare here is the test:
/// it acks every checkpoint and, the moment it reads the goodbye, stops the primary and looks.
#[test]
fn a_headless_primary_writes_its_stats_before_it_lets_its_spare_go() {
    use hslib::replica::{Replica, ReplicaConfig};
    use hslib::transport::{Endpoint as _, unix};
    use hslib::wire::{self, FrameKind};

    let dir = TempDir::new().expect("tempdir");
    let socks = socket_dir(dir.path());
    let stats = dir.path().join("stats.json");
    let (seed, level) = (SEED.to_string(), LEVEL.to_string());
    let mut primary = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .args(["--headless", "--seed", &seed, "-l", &level, "--stats"])
        .arg(&stats)
        .env("HS_ROLE", "primary")
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", &socks)
        .env("HS_SOCKET_NAME", "x")
        .env("HS_MODE", "sync")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the primary");
    let pid = nix::unistd::Pid::from_raw(primary.id() as i32);
    let started = Instant::now();
    let mut ep = loop {
        match unix::connect(&socks, "x") {
            Ok(ep) => break ep,
            Err(e) => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "no primary to connect to: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    ep.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut to_primary = primary.stdin.take().expect("piped stdin");
    to_primary
        .write_all(&script())
        .expect("feeding the primary");
    drop(to_primary);
    let mut replica = Replica::new(ReplicaConfig::default());
    loop {
        let frame = wire::read_frame(&mut ep)
            .expect("a frame")
            .expect("the primary's goodbye before its stream ends");
        let kind = frame.header.kind;
        if let Some(ack) = replica.accept(frame).expect("a valid frame") {
            let (epoch, sequence) = replica.take_ack_slot().expect("a session");
            wire::write_ack(&mut ep, epoch, sequence, &ack).expect("ack");
        }
        if kind == FrameKind::Goodbye {
            break;
        }
    }
    nix::sys::signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP the primary");
    let written = std::fs::read_to_string(&stats);
    nix::sys::signal::kill(pid, Signal::SIGCONT).expect("SIGCONT the primary");
    let done = primary.wait_with_output().expect("the primary's end");
    assert!(done.status.success(), "{done:?}");
    let text = written.expect("the stats file, written before the goodbye");
    let line: serde_json::Value = serde_json::from_str(&text).expect("the stats are JSON");
    let checkpoints = line["checkpoints"].as_u64().expect("checkpoints");
    let held = replica.checkpoint().expect("the spare holds a checkpoint");
    // Every move's checkpoint is counted; hslib's own first one, of the game before any
    // move, may not be one the game timed.
    assert!(
        checkpoints > 0 && held.saturating_sub(checkpoints) <= 1,
        "the stats count {checkpoints} checkpoints, the spare holds number {held}: {text}"
    );
    assert!(line["bytes"].as_u64().is_some_and(|b| b >= 4096), "{text}");
}
