//! The signals the interactive game reacts to, turned into pending bits plus a wake-up pipe
//! so the input wait notices them at once.
//!
//! The handler only sets a bit in an atomic and writes one byte to a non-blocking pipe (both
//! async-signal-safe, errno preserved); the game loop does the real work. Dropping
//! [`Signals`] puts the previous dispositions back, so the process behaves as before (a ^C
//! after the game kills it as usual) and the game can install them again later.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// What went wrong while installing the handlers or stopping the process.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Another [`Signals`] is installed (the handler state is process-wide).
    #[error("signal handlers are already installed by this process")]
    AlreadyInstalled,
    /// The self-pipe could not be created.
    #[error("creating the signal wake-up pipe failed: {0}")]
    Pipe(nix::Error),
    /// `sigaction` failed.
    #[error("installing a handler for {signal} failed: {source}")]
    Install {
        /// The signal.
        signal: Signal,
        /// The OS error.
        source: nix::Error,
    },
    /// Stopping the process (the default action of SIGTSTP) failed.
    #[error("stopping the process with SIGSTOP failed: {0}")]
    Stop(nix::Error),
}

/// A signal the game loop has to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caught {
    /// SIGINT: restore the terminal, exit 0, no score saved (BSD `onintr`).
    Interrupt,
    /// SIGTERM or SIGHUP: restore the terminal and exit as that signal would.
    Terminate(Signal),
    /// SIGTSTP: restore the terminal, stop; on continue, set it up again and redraw.
    Suspend,
    /// SIGCONT: we were stopped (perhaps by someone else): set the terminal up and redraw.
    Continue,
    /// SIGWINCH: the window changed size; redraw.
    Resize,
}

/// The watched signals, in the priority order [`Signals::take`] reports them; the index is
/// the signal's bit in [`PENDING`].
const WATCHED: [(Signal, Caught); 6] = [
    (Signal::SIGINT, Caught::Interrupt),
    (Signal::SIGTERM, Caught::Terminate(Signal::SIGTERM)),
    (Signal::SIGHUP, Caught::Terminate(Signal::SIGHUP)),
    (Signal::SIGTSTP, Caught::Suspend),
    (Signal::SIGCONT, Caught::Continue),
    (Signal::SIGWINCH, Caught::Resize),
];

/// Bit `i` set: `WATCHED[i]` arrived and was not taken yet.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// The wake-up pipe's write end while installed, else -1.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// One installation at a time: the two statics above are process-wide.
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signo: libc::c_int) {
    let saved = Errno::last_raw();
    if let Some(i) = WATCHED.iter().position(|&(s, _)| s as libc::c_int == signo) {
        PENDING.fetch_or(1 << i, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 0u8;
        // SAFETY: write(2) is async-signal-safe; `fd` is the non-blocking write end of the
        // pipe, open while WAKE_FD holds it (Drop restores the handlers before closing it);
        // the buffer is one live byte. A full pipe (EAGAIN) is fine: a wake-up is pending.
        let _ = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
    Errno::set_raw(saved);
}

/// The installed handlers; dropping this restores the previous dispositions.
#[derive(Debug)]
pub struct Signals {
    previous: Vec<(Signal, SigAction)>,
    wake_read: OwnedFd,
    // Closed only after the handlers are gone (see Drop).
    _wake_write: OwnedFd,
}

impl Signals {
    /// Installs handlers for SIGINT, SIGTERM, SIGHUP, SIGTSTP, SIGCONT and SIGWINCH.
    pub fn install() -> Result<Self, SignalError> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(SignalError::AlreadyInstalled);
        }
        let (wake_read, wake_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        {
            Ok(pair) => pair,
            Err(e) => {
                INSTALLED.store(false, Ordering::SeqCst);
                return Err(SignalError::Pipe(e));
            }
        };
        PENDING.store(0, Ordering::SeqCst);
        WAKE_FD.store(wake_write.as_raw_fd(), Ordering::SeqCst);
        let mut signals = Self {
            previous: Vec::new(),
            wake_read,
            _wake_write: wake_write,
        };
        // SA_RESTART keeps unrelated blocking calls going; the loop wakes through the pipe.
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for (signal, _) in WATCHED {
            // SAFETY: `on_signal` is async-signal-safe (atomics and write(2) only, errno
            // preserved) and touches no state that the interrupted code could hold locked.
            let old = unsafe { sigaction(signal, &action) }
                .map_err(|source| SignalError::Install { signal, source })?;
            // On error, `signals` drops here and restores what was already replaced.
            signals.previous.push((signal, old));
        }
        Ok(signals)
    }

    /// Readable when a signal has arrived: poll it together with the terminal.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }

    /// Takes the signals that arrived since the last call, in priority order.
    pub fn take(&self) -> Vec<Caught> {
        let mut buf = [0u8; 64];
        // Empty the pipe; it is non-blocking, so EAGAIN ends the loop.
        while matches!(nix::unistd::read(&self.wake_read, &mut buf), Ok(n) if n > 0) {}
        let bits = PENDING.swap(0, Ordering::SeqCst);
        WATCHED
            .iter()
            .enumerate()
            .filter(|&(i, _)| bits & (1 << i) != 0)
            .map(|(_, &(_, caught))| caught)
            .collect()
    }
}

/// Stops the process as SIGTSTP's default action would; returns once continued.
pub fn stop_self() -> Result<(), SignalError> {
    nix::sys::signal::raise(Signal::SIGSTOP).map_err(SignalError::Stop)
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..).rev() {
            // SAFETY: `old` is the disposition sigaction reported for this signal, so putting
            // it back restores exactly what the process had before `install`.
            let _ = unsafe { sigaction(signal, &old) };
        }
        WAKE_FD.store(-1, Ordering::SeqCst);
        INSTALLED.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test only: the handlers are process-wide, so tests must not install them in parallel.
    #[test]
    fn raised_signals_are_reported_once_in_priority_order_and_dispositions_restored() {
        assert!(matches!(current(Signal::SIGWINCH), SigHandler::SigDfl));
        let signals = Signals::install().unwrap();
        assert!(matches!(current(Signal::SIGWINCH), SigHandler::Handler(_)));
        assert!(matches!(
            Signals::install(),
            Err(SignalError::AlreadyInstalled)
        ));
        nix::sys::signal::raise(Signal::SIGWINCH).unwrap();
        nix::sys::signal::raise(Signal::SIGINT).unwrap();
        let mut fds = [nix::poll::PollFd::new(
            signals.wake_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(
            nix::poll::poll(&mut fds, 0u8).unwrap(),
            1,
            "the pipe wakes the loop"
        );
        assert_eq!(signals.take(), vec![Caught::Interrupt, Caught::Resize]);
        assert_eq!(signals.take(), vec![]);
        drop(signals);
        assert!(matches!(current(Signal::SIGWINCH), SigHandler::SigDfl));
        // Installing again works once the first is gone.
        drop(Signals::install().unwrap());
    }

    fn current(signal: Signal) -> SigHandler {
        let probe = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: swapping in the default and straight back; SIGWINCH's default is "ignore",
        // so nothing can go wrong in between.
        let old = unsafe { sigaction(signal, &probe) }.unwrap();
        // SAFETY: as above, restoring what was there.
        unsafe { sigaction(signal, &old) }.unwrap();
        old.handler()
    }
}
