//! End-to-end test support shared across the workspace: run a real binary on a
//! pseudo-terminal and read its screen with `vt100`.
//!
//! [`Session`] starts a program on its own pty (as its controlling terminal, in a new
//! session), answers the queries a terminal answers (cursor position, device status and
//! attributes), and offers [`Session::wait_for`]: poll until a screen condition holds, with a
//! deadline, never sleep-and-hope. [`pty`] is the pseudo-terminal underneath, [`keys`] the
//! byte sequences of special keys.

pub mod keys;
pub mod pty;
pub mod session;

pub use session::{Session, SessionError};
pub use vt100;
