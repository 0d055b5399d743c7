//! A panic in game mode restores the terminal before the panic message is printed.
//!
//! The panicking side runs in a child process on a pseudo-terminal: this test binary again,
//! running only the ignored `child_enters_game_mode_and_panics`.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::process::Command;
use std::time::Duration;

use hotspare_tests::Session;
use nix::sys::termios::LocalFlags;
use tetris::terminal::{self, GameMode};

const CHILD_ENV: &str = "TETRIS_E2E_PANIC_CHILD";
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
#[ignore = "the child half of panic_in_game_mode_restores_the_terminal_first"]
fn child_enters_game_mode_and_panics() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    terminal::install_panic_hook();
    let stdin = std::io::stdin();
    let _mode = GameMode::enter(stdin.as_fd()).unwrap();
    print!("in game mode");
    std::io::stdout().flush().unwrap();
    // Wait for the parent to have seen game mode.
    let mut byte = [0u8; 1];
    let _ = std::io::stdin().read(&mut byte);
    panic!("deliberate panic in game mode");
}

#[test]
fn panic_in_game_mode_restores_the_terminal_first() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_enters_game_mode_and_panics",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env("TERM", "xterm-256color")
    .env("RUST_BACKTRACE", "0");
    let mut s = Session::spawn(cmd, 24, 80).unwrap();
    s.wait_for("game mode", DEADLINE, |sc| {
        sc.alternate_screen() && sc.contents().contains("in game mode")
    })
    .unwrap();
    assert!(
        !s.termios()
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON)
    );
    s.send(b"x").unwrap();
    let status = s.wait_exit(DEADLINE).unwrap();
    assert_ne!(status.code(), Some(0), "the child test panicked");
    assert_eq!(&s.termios().unwrap(), s.initial_termios());
    assert!(!s.screen().alternate_screen());
    assert!(!s.screen().hide_cursor());
    // Printed after the restore, so on the main screen where the user can read it.
    assert!(
        s.contents().contains("deliberate panic in game mode"),
        "{}",
        s.contents()
    );
}
