//! The pty driver against small shell programs whose behaviour is known.

use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::time::Duration;

use hotspare_tests::{Session, keys};
use nix::sys::termios::LocalFlags;

const DEADLINE: Duration = Duration::from_secs(20);

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).env("TERM", "xterm");
    cmd
}

#[test]
fn output_reaches_the_screen_and_the_exit_code_is_reported() {
    let mut s = Session::spawn(sh("printf 'hello\\r\\nworld'; exit 3"), 24, 80).unwrap();
    s.wait_for_text("world", DEADLINE).unwrap();
    assert_eq!(s.row_text(0), "hello");
    assert_eq!(s.row_text(1), "world");
    assert_eq!(s.wait_exit(DEADLINE).unwrap().code(), Some(3));
}

#[test]
fn cursor_position_query_is_answered_from_the_screen() {
    // The program prints 3 characters then asks where the cursor is: row 1, column 4.
    let script = "stty -echo -icanon min 1; printf 'xyz\\033[6n'; \
                  r=$(dd bs=1 count=6 2>/dev/null | od -An -c | tr -d ' '); \
                  printf '\\r\\nreply:%s\\r\\n' \"$r\"";
    let mut s = Session::spawn(sh(script), 24, 80).unwrap();
    s.wait_for_text("reply:", DEADLINE).unwrap();
    s.wait_exit(DEADLINE).unwrap();
    assert_eq!(s.row_text(1), "reply:033[1;4R");
}

#[test]
fn resize_is_seen_by_the_program() {
    let mut s = Session::spawn(sh("stty size; read x; stty size"), 24, 80).unwrap();
    s.wait_for_text("24 80", DEADLINE).unwrap();
    s.resize(30, 100).unwrap();
    s.send(keys::ENTER).unwrap();
    s.wait_for_text("30 100", DEADLINE).unwrap();
    let (rows, cols) = s.screen().size();
    assert_eq!((rows.get(), cols.get()), (30, 100));
}

#[test]
fn termios_shows_the_programs_mode_changes() {
    let mut s = Session::spawn(
        sh("echo start; read x; stty -echo; echo quiet; read y"),
        24,
        80,
    )
    .unwrap();
    s.wait_for_text("start", DEADLINE).unwrap();
    assert!(s.termios().unwrap().local_flags.contains(LocalFlags::ECHO));
    s.send(b"\r").unwrap();
    s.wait_for_text("quiet", DEADLINE).unwrap();
    assert!(!s.termios().unwrap().local_flags.contains(LocalFlags::ECHO));
}

#[test]
fn ctrl_c_is_sigint_from_the_controlling_terminal() {
    let mut s = Session::spawn(sh("echo ready; exec sleep 60"), 24, 80).unwrap();
    s.wait_for_text("ready", DEADLINE).unwrap();
    s.send(keys::CTRL_C).unwrap();
    let status = s.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT));
}

#[test]
fn wait_for_times_out_with_the_screen_attached() {
    let mut s = Session::spawn(sh("echo nothing-else; exec sleep 60"), 24, 80).unwrap();
    s.wait_for_text("nothing-else", DEADLINE).unwrap();
    let err = s
        .wait_for_text("never", Duration::from_millis(100))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing-else"), "{err}");
}

#[test]
fn wait_for_fails_at_once_when_the_program_exits_first() {
    let mut s = Session::spawn(sh("echo bye"), 24, 80).unwrap();
    let err = s.wait_for_text("never", DEADLINE).unwrap_err();
    assert!(
        matches!(err, hotspare_tests::SessionError::Exited { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bye"), "{err}");
}
