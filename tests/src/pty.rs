//! A pseudo-terminal pair and spawning a process with its slave as the controlling terminal.
//!
//! The only module of this crate with `unsafe`: the window-size ioctl and the code that runs
//! in the child between `fork` and `exec`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::termios::{Termios, tcgetattr};

/// What went wrong while opening, sizing or spawning on a pseudo-terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// `openpty(3)` failed.
    #[error("openpty({rows}x{cols}) failed: {source}")]
    Open {
        /// Rows asked for.
        rows: u16,
        /// Columns asked for.
        cols: u16,
        /// The OS error.
        source: nix::Error,
    },
    /// Setting close-on-exec on one of the pty fds failed.
    #[error("fcntl(F_SETFD, FD_CLOEXEC) on pty fd {fd} failed: {source}")]
    Cloexec {
        /// The fd.
        fd: i32,
        /// The OS error.
        source: nix::Error,
    },
    /// `ioctl(TIOCSWINSZ)` failed.
    #[error("TIOCSWINSZ to {rows}x{cols} failed: {source}")]
    Resize {
        /// Rows asked for.
        rows: u16,
        /// Columns asked for.
        cols: u16,
        /// The OS error.
        source: nix::Error,
    },
    /// `tcgetattr` on the slave failed.
    #[error("tcgetattr on the pty slave failed: {0}")]
    Termios(nix::Error),
    /// Duplicating the slave fd for the child's stdio failed.
    #[error("dup of the pty slave failed: {0}")]
    Dup(std::io::Error),
    /// Starting the program failed.
    #[error("spawning {program:?} on the pty failed: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A master/slave pseudo-terminal pair.
///
/// The slave stays open here for the pair's lifetime: the termios can then be read after the
/// child exits, and reads on the master never fail with `EIO` before the last output is read.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pseudo-terminal of `rows` x `cols` with the system's default termios.
    pub fn open(rows: u16, cols: u16) -> Result<Self, PtyError> {
        let size = winsize(rows, cols);
        let pair = openpty(&size, None).map_err(|source| PtyError::Open { rows, cols, source })?;
        for fd in [&pair.master, &pair.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|source| {
                PtyError::Cloexec {
                    fd: fd.as_raw_fd(),
                    source,
                }
            })?;
        }
        Ok(Self {
            master: pair.master,
            slave: pair.slave,
        })
    }

    /// The master side: what a terminal emulator reads the program's output from.
    pub fn master(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn set_size(&self, rows: u16, cols: u16) -> Result<(), PtyError> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to a
        // live, initialised value for the duration of the call; the fd is open (owned by self).
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
        nix::errno::Errno::result(rc)
            .map(drop)
            .map_err(|source| PtyError::Resize { rows, cols, source })
    }

    /// The terminal's current termios (the slave's; the master shares it).
    pub fn termios(&self) -> Result<Termios, PtyError> {
        tcgetattr(&self.slave).map_err(PtyError::Termios)
    }

    /// Starts `command` with the slave as its stdin, stdout, stderr and controlling terminal,
    /// in a new session (so the terminal's signals, ^C and ^Z, go to it).
    pub fn spawn(&self, mut command: Command) -> Result<Child, PtyError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let stdio = || -> Result<Stdio, PtyError> {
            Ok(Stdio::from(self.slave.try_clone().map_err(PtyError::Dup)?))
        };
        command.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
        // SAFETY: `child_setup` runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: it makes two raw syscalls and allocates nothing.
        unsafe {
            command.pre_exec(child_setup);
        }
        let child = command
            .spawn()
            .map_err(|source| PtyError::Spawn { program, source })?;
        // `command` (holding the child's copies of the slave) is dropped here.
        Ok(child)
    }
}

/// In the child before exec: a new session whose controlling terminal is the pty slave, which
/// std has already placed on fd 0.
fn child_setup() -> std::io::Result<()> {
    nix::unistd::setsid().map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); fd 0 is open (the slave).
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}
