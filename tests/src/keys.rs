//! Bytes a terminal sends for keys that are not plain characters (xterm, normal cursor mode).

/// Ctrl-C: the terminal's interrupt character (SIGINT when ISIG is on).
pub const CTRL_C: &[u8] = b"\x03";
/// Ctrl-Z: the terminal's suspend character (SIGTSTP when ISIG is on).
pub const CTRL_Z: &[u8] = b"\x1a";
/// Ctrl-L: redraw, by convention.
pub const CTRL_L: &[u8] = b"\x0c";
/// Return.
pub const ENTER: &[u8] = b"\r";
/// Cursor up.
pub const UP: &[u8] = b"\x1b[A";
/// Cursor down.
pub const DOWN: &[u8] = b"\x1b[B";
/// Cursor right.
pub const RIGHT: &[u8] = b"\x1b[C";
/// Cursor left.
pub const LEFT: &[u8] = b"\x1b[D";
