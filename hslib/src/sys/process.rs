//! `fork(2)`, pipes, raw reads and `_exit(2)` for the fork snapshot: everything a fork child
//! of a threaded process calls is async-signal-safe (no allocation, no locks).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// Which side of a fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The child.
    Child,
    /// The parent, with the child's pid.
    Parent(Pid),
}

/// Forks the process.
///
/// # Safety
/// In a process with more than one thread the child may only do async-signal-safe work
/// until it calls [`exit_now`]: no allocation, no locks (no `println!`, no `tracing`), only
/// raw system calls such as [`read_full`] and `write(2)`.
pub unsafe fn fork() -> Result<Forked, Errno> {
    // SAFETY: the caller keeps the child to async-signal-safe work, as documented above.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => Ok(Forked::Child),
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// A pipe whose ends are closed on exec: `(read end, write end)`.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

/// Reads until `buf` is full or the writer closes; returns the bytes read. Retries on
/// `EINTR`. Async-signal-safe.
pub fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes all of `buf`, retrying on `EINTR`.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends the process at once with `code`, running no destructors or exit handlers (what a
/// fork child must do). Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor but `keep_a` and `keep_b` (`close_range(2)`). Async-signal-safe:
/// a fork child uses it to let go of everything the parent had open (listening sockets above
/// all, which must not outlive the parent).
pub fn close_all_except(keep_a: i32, keep_b: i32) {
    let (lo, hi) = (i64::from(keep_a.min(keep_b)), i64::from(keep_a.max(keep_b)));
    for (first, last) in [(0, lo - 1), (lo + 1, hi - 1), (hi + 1, i64::from(u32::MAX))] {
        if first >= 0 && first <= last {
            // SAFETY: close_range only closes descriptors; the child uses none of them again.
            unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// Waits for child `pid` to end (retrying on `EINTR`).
pub fn wait_child(pid: Pid) -> Result<ChildEnd, Errno> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ChildEnd::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ChildEnd::Signaled(sig as i32)),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A descriptor for process `pid` (`pidfd_open(2)`): signals sent through it reach that
/// process or nobody, never a later process that reuses the number.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Sends SIGKILL through a pidfd; `ESRCH` when the process has ended.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a null siginfo and no flags has no memory preconditions.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    Errno::result(r).map(drop)
}

/// Puts the calling thread in `SCHED_BATCH`: the scheduler no longer lets its wake-ups
/// preempt the thread that woke it. The link's threads use it so that handing them a
/// checkpoint does not stall the application behind them.
pub fn batch_this_thread() -> Result<(), Errno> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    Errno::result(r).map(drop)
}

/// The raw number of a descriptor, for handing to a fork child through a pipe.
pub fn raw(fd: BorrowedFd<'_>) -> i32 {
    fd.as_raw_fd()
}
