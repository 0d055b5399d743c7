//! The harness's only `unsafe`: pidfds, what a game process does between `fork` and `exec`
//! (its own session, its pseudo-terminal as controlling terminal, the status descriptor kept
//! open), window sizes, and the signal self-pipe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arranges for `command`'s child to keep the descriptors `keep` open across `exec` (they
/// are close-on-exec in the harness, so no other child inherits them) and, with
/// `own_terminal`, to
/// run in a new session whose controlling terminal is its stdin (a pty slave), so the
/// terminal's signals and SIGWINCH reach it.
pub fn prepare_child(command: &mut Command, keep: Vec<RawFd>, own_terminal: bool) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(libc::pid_t::MAX);
    let setup = move || -> io::Result<()> {
        // A game must not outlive the harness that logs its input: SIGKILL it when the
        // harness (the thread that forked it) dies, however it dies.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        Errno::result(rc).map_err(io::Error::from)?;
        // The harness may have died between the fork and the line above: then no death
        // signal will ever come, and the child must not go on as an orphan.
        // SAFETY: getppid takes nothing and cannot fail.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if own_terminal {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); fd 0 is the pty
            // slave std has put there.
            let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            Errno::result(rc).map_err(io::Error::from)?;
        }
        for &fd in &keep {
            // SAFETY: F_SETFD with 0 only clears this descriptor's close-on-exec flag in the
            // child (the parent's copy keeps it).
            let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            Errno::result(rc).map_err(io::Error::from)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe work is
    // allowed: it makes raw system calls, allocates nothing (it only reads the vector it
    // owns) and takes no lock (an error from a raw OS error number allocates nothing either).
    unsafe {
        command.pre_exec(setup);
    }
}

/// A terminal's size in rows and columns (`TIOCGWINSZ`).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to a
    // live value of that type for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut size) };
    Errno::result(rc).map_err(io::Error::from)?;
    Ok((size.ws_row, size.ws_col))
}

/// Sets a pseudo-terminal's size (`TIOCSWINSZ`): its foreground process group gets SIGWINCH.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to a live,
    // initialised value for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
    Errno::result(rc).map(drop).map_err(io::Error::from)
}

/// The write end of the signal self-pipe, for the handler (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let byte = u8::try_from(signal).unwrap_or(0);
    // errno is thread-local: keep the interrupted code's value.
    let saved = Errno::last_raw();
    // SAFETY: write(2) is async-signal-safe; the buffer is one byte on this stack frame. A
    // full pipe (EAGAIN) already holds a wake-up, so the result is ignored.
    unsafe {
        libc::write(fd, (&raw const byte).cast(), 1);
    }
    Errno::set_raw(saved);
}

/// Routes `signals` to a pipe: each delivery writes the signal's number as one byte to it;
/// returns the read end (non-blocking). Once per process.
pub fn signal_pipe(signals: &[Signal]) -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let previous = SIGNAL_PIPE.swap(write.as_raw_fd(), Ordering::AcqRel);
    if previous >= 0 {
        SIGNAL_PIPE.store(previous, Ordering::Release);
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the signal pipe is already installed",
        ));
    }
    // The handler writes to this descriptor for the rest of the process's life.
    std::mem::forget(write);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &signal in signals {
        // SAFETY: the handler only reads an atomic and calls write(2), both
        // async-signal-safe, and preserves errno.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(read)
}
