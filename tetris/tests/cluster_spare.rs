//! A cluster spare's exit statuses (hslib's `HS_PROMOTE_FD`): the tetris binary as a spare
//! whose primary never answers ends with status 0 and prints nothing when its agent closes
//! the order descriptor, and with status 3 and a message when the order is refused.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

const DEADLINE: Duration = Duration::from_secs(30);

/// A spare of a primary nobody runs (a unix socket in an empty private directory), its
/// orders read from a pipe: runs it, writes `order` (then closes the pipe), returns (exit
/// code, stdout, stderr).
fn spare_ordered(order: &[u8]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let socks = dir.path().join("socks");
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| panic!("pipe: {e}"));
    fcntl(&read, FcntlArg::F_SETFD(FdFlag::empty()))
        .unwrap_or_else(|e| panic!("clearing close-on-exec: {e}"));
    let child = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .args(["--headless", "--seed", "1"])
        .env("HS_ROLE", "spare")
        .env("HS_TRANSPORT", "unix")
        .env("HS_SOCKET_DIR", &socks)
        .env("HS_SOCKET_NAME", "nobody")
        .env("HS_PROMOTE_FD", read.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting tetris: {e}"));
    drop::<OwnedFd>(read);
    if !order.is_empty() {
        nix::unistd::write(&write, order).unwrap_or_else(|e| panic!("ordering: {e}"));
    }
    drop(write);
    let started = Instant::now();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for tetris: {e}"));
    assert!(
        started.elapsed() < DEADLINE,
        "tetris took {:?}",
        started.elapsed()
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_spare_let_go_without_an_order_exits_0_silently() {
    let (code, stdout, stderr) = spare_ordered(b"");
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""));
}

#[test]
fn a_refused_order_exits_3_with_a_message() {
    for (order, why) in [
        (&b"promote 7\n"[..], "holds no whole checkpoint"),
        (b"take over\n", "not an order"),
    ] {
        let (code, stdout, stderr) = spare_ordered(order);
        assert_eq!(code, Some(3), "{why}: {stderr}");
        assert!(stderr.starts_with("tetris: promote order"), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
        assert_eq!(stdout, "", "a refused spare printed");
    }
}
