//! A program running on a pseudo-terminal, seen through a `vt100` screen: send keys, poll
//! for screen conditions with a deadline, answer the terminal queries a real terminal would.

use std::io::Write as _;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::Termios;
use nix::unistd::Pid;

use crate::pty::{Pty, PtyError};

/// How long one poll of the master waits at most, so deadlines are checked often.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// What went wrong while driving a program on a pseudo-terminal.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Setting up or using the pty failed.
    #[error(transparent)]
    Pty(#[from] PtyError),
    /// A size of zero rows or columns was asked for.
    #[error("a terminal of {rows}x{cols} cannot exist")]
    ZeroSize {
        /// Rows asked for.
        rows: u16,
        /// Columns asked for.
        cols: u16,
    },
    /// Reading the master failed.
    #[error("reading the pty master failed: {0}")]
    Read(nix::Error),
    /// Writing the master failed.
    #[error("writing {len} bytes to the pty master failed: {source}")]
    Write {
        /// Bytes we tried to write.
        len: usize,
        /// The OS error.
        source: nix::Error,
    },
    /// Polling the master failed.
    #[error("polling the pty master failed: {0}")]
    Poll(nix::Error),
    /// Checking or reaping the child failed.
    #[error("waiting for child {pid} failed: {source}")]
    Wait {
        /// The child's pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sending a signal to the child failed.
    #[error("sending {signal} to child {pid} failed: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The child's pid.
        pid: u32,
        /// The OS error.
        source: nix::Error,
    },
    /// The program exited, and its output is all read, before a condition held.
    #[error("the program exited ({status:?}) before {what}; screen:\n{screen}")]
    Exited {
        /// What was waited for.
        what: String,
        /// The exit status.
        status: Option<ExitStatus>,
        /// The screen's text at the end.
        screen: String,
    },
    /// A condition did not hold before its deadline; the screen is attached for diagnosis.
    #[error("timed out after {waited:?} waiting for {what}; exited: {exited:?}; screen:\n{screen}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The child's exit status if it had exited.
        exited: Option<ExitStatus>,
        /// The screen's text at the deadline.
        screen: String,
    },
}

/// Answers the queries a terminal emulator answers, in stream order, from the screen's state at
/// the moment the query is parsed.
#[derive(Debug, Default)]
struct Responder {
    replies: Vec<u8>,
}

impl vt100::Callbacks for Responder {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied();
        match (i1, c, first) {
            // Cursor position report (DSR 6), 1-based.
            (None, 'n', Some(6)) => {
                let (row, col) = screen.cursor_position();
                // Writing to a Vec cannot fail.
                let _ = write!(self.replies, "\x1b[{};{}R", row + 1, col + 1);
            }
            // Device status (DSR 5): "OK".
            (None, 'n', Some(5)) => self.replies.extend_from_slice(b"\x1b[0n"),
            // Primary device attributes: a VT100 with advanced video.
            (None, 'c', None | Some(0)) => self.replies.extend_from_slice(b"\x1b[?1;2c"),
            _ => {}
        }
    }
}

/// A child process on its own pseudo-terminal, with the terminal's screen parsed by `vt100`.
///
/// Dropping a session kills the child (SIGKILL) if it is still running and reaps it.
pub struct Session {
    pty: Pty,
    child: Child,
    parser: vt100::Parser<Responder>,
    output: Vec<u8>,
    status: Option<ExitStatus>,
    started: Instant,
    initial_termios: Termios,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .field("output_len", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens a `rows` x `cols` pseudo-terminal and starts `command` on it.
    ///
    /// Set the command's environment (e.g. `TERM`) before; its stdio is replaced by the pty.
    pub fn spawn(command: Command, rows: u16, cols: u16) -> Result<Self, SessionError> {
        let (Some(nz_rows), Some(nz_cols)) = (
            std::num::NonZeroU16::new(rows),
            std::num::NonZeroU16::new(cols),
        ) else {
            return Err(SessionError::ZeroSize { rows, cols });
        };
        let pty = Pty::open(rows, cols)?;
        let initial_termios = pty.termios()?;
        let child = pty.spawn(command)?;
        Ok(Self {
            pty,
            child,
            parser: vt100::Parser::new_with_callbacks(nz_rows, nz_cols, 0, Responder::default()),
            output: Vec::new(),
            status: None,
            started: Instant::now(),
            initial_termios,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The terminal's screen as the program drew it so far.
    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }

    /// The screen's text, rows joined by newlines, trailing blanks trimmed.
    pub fn contents(&self) -> String {
        self.parser.screen().contents()
    }

    /// One screen row's text, trailing blanks trimmed (empty past the last row).
    pub fn row_text(&self, row: u16) -> String {
        let (_, cols) = self.parser.screen().size();
        self.parser
            .screen()
            .rows(0, cols.get())
            .nth(usize::from(row))
            .unwrap_or_default()
    }

    /// Every byte the program wrote to the terminal so far.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// The program's output so far as text (lossy UTF-8), escape sequences included.
    pub fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// The terminal's current termios.
    pub fn termios(&self) -> Result<Termios, SessionError> {
        Ok(self.pty.termios()?)
    }

    /// The terminal's termios before the program started: what it must restore.
    pub fn initial_termios(&self) -> &Termios {
        &self.initial_termios
    }

    /// The exit status, once [`Session::pump`] or a wait has seen the child exit.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Types `bytes` on the terminal's keyboard.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            match nix::unistd::write(self.pty.master(), rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(SessionError::Write {
                        len: bytes.len(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Resizes the terminal (the program gets SIGWINCH) and the parsed screen.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), SessionError> {
        let (Some(nz_rows), Some(nz_cols)) = (
            std::num::NonZeroU16::new(rows),
            std::num::NonZeroU16::new(cols),
        ) else {
            return Err(SessionError::ZeroSize { rows, cols });
        };
        self.pty.set_size(rows, cols)?;
        self.parser.set_size(nz_rows, nz_cols);
        Ok(())
    }

    /// Sends `signal` to the child process.
    pub fn signal(&self, signal: Signal) -> Result<(), SessionError> {
        let pid = self.child.id();
        let raw = i32::try_from(pid).unwrap_or(i32::MAX);
        kill(Pid::from_raw(raw), signal).map_err(|source| SessionError::Signal {
            signal,
            pid,
            source,
        })
    }

    /// Reads whatever output arrives within `timeout` (less if some arrives sooner), feeds it
    /// to the screen, answers terminal queries, and notes whether the child has exited.
    /// Returns true when some output was read.
    pub fn pump(&mut self, timeout: Duration) -> Result<bool, SessionError> {
        self.check_exit()?;
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.pty.master(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(SessionError::Poll(e)),
        }
        let mut buf = [0u8; 8192];
        let n = match nix::unistd::read(self.pty.master(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => return Ok(false),
            // The slave side is held open by the Pty, so EIO means no more output ever.
            Err(Errno::EIO) => return Ok(false),
            Err(e) => return Err(SessionError::Read(e)),
        };
        self.output.extend_from_slice(&buf[..n]);
        self.parser.process(&buf[..n]);
        let replies = std::mem::take(&mut self.parser.callbacks_mut().replies);
        if !replies.is_empty() {
            self.send(&replies)?;
        }
        Ok(n > 0)
    }

    fn check_exit(&mut self) -> Result<(), SessionError> {
        if self.status.is_none() {
            let pid = self.child.id();
            self.status = self
                .child
                .try_wait()
                .map_err(|source| SessionError::Wait { pid, source })?;
        }
        Ok(())
    }

    /// Polls until `cond` holds on the screen, or fails after `timeout` with the screen
    /// attached. `what` names the condition in the error.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&vt100::Screen) -> bool,
    ) -> Result<(), SessionError> {
        self.wait_until(what, timeout, |s| cond(s.screen()))
    }

    /// Polls until the screen's text contains `text`.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<(), SessionError> {
        self.wait_for(&format!("{text:?} on the screen"), timeout, |s| {
            s.contents().contains(text)
        })
    }

    /// Polls until the raw output (escape sequences included) contains `needle`.
    pub fn wait_for_output(
        &mut self,
        needle: &[u8],
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let what = format!("{:?} in the output", String::from_utf8_lossy(needle));
        self.wait_until(&what, timeout, |s| {
            s.output.windows(needle.len().max(1)).any(|w| w == needle)
        })
    }

    /// Polls until the child has exited and all its output is read; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, SessionError> {
        self.wait_until("the program to exit", timeout, |s| s.status.is_some())?;
        // Drain what was written before the exit.
        while self.pump(Duration::ZERO)? {}
        match self.status {
            Some(status) => Ok(status),
            None => Err(self.timeout_error("the program to exit", Instant::now())),
        }
    }

    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<(), SessionError> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            if cond(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error(what, start));
            }
            let exited_before = self.status.is_some();
            let read = self.pump(POLL_SLICE.min(deadline - now))?;
            // Exited and nothing more to read: the condition can no longer change.
            if exited_before && !read && !cond(self) {
                return Err(SessionError::Exited {
                    what: what.to_owned(),
                    status: self.status,
                    screen: self.contents(),
                });
            }
        }
    }

    fn timeout_error(&self, what: &str, start: Instant) -> SessionError {
        SessionError::Timeout {
            what: what.to_owned(),
            waited: start.elapsed(),
            exited: self.status,
            screen: self.contents(),
        }
    }

    /// Time since the program was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // Best effort: the child may exit between the check and the kill.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
