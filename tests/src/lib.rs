//! End-to-end test support shared across the workspace: run a real binary on a
//! pseudo-terminal and read its screen with `vt100`.
//!
//! [`Session`] starts a program on its own pty (as its controlling terminal, in a new
//! session, so ^C and ^Z reach it as signals), answers the queries a terminal answers (cursor
//! position, device status and attributes), and offers [`Session::wait_for`]: poll until a
//! screen condition holds, with a deadline, never sleep-and-hope. [`pty`] is the
//! pseudo-terminal underneath, [`keys`] the byte sequences of special keys.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use hotspare_tests::{Session, keys};
//!
//! let mut cmd = Command::new("/usr/bin/env");
//! cmd.arg("bash").env("TERM", "xterm-256color");
//! let mut s = Session::spawn(cmd, 24, 80)?;
//! s.send(b"echo hi\r")?;
//! s.wait_for("hi echoed", Duration::from_secs(10), |screen| {
//!     screen.contents().contains("\nhi")
//! })?;
//! let before = s.initial_termios().clone();
//! s.send(keys::CTRL_C)?;
//! s.send(b"exit\r")?;
//! let status = s.wait_exit(Duration::from_secs(10))?;
//! assert!(status.success());
//! assert_eq!(s.termios()?, before);
//! # Ok::<(), hotspare_tests::SessionError>(())
//! ```

pub mod keys;
pub mod pty;
pub mod session;

pub use session::{Session, SessionError};
pub use vt100;
