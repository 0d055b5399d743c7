//! `sigaction(2)` for the signal registry: installing application handlers and reading a
//! signal's current disposition.

use nix::errno::Errno;

/// A handler's entry point as `sigaction` takes it.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// `void handler(int)`.
    Plain(extern "C" fn(libc::c_int)),
    /// `void handler(int, siginfo_t *, void *)`, installed with `SA_SIGINFO`.
    Info(extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)),
}

/// Installs `entry` for `signal` with `flags` (without `SA_SIGINFO`, which `entry` decides)
/// and the signals of `mask` blocked while it runs.
///
/// # Safety
/// `entry` must be async-signal-safe: it can interrupt any code of the process, including
/// the allocator and code holding locks.
pub unsafe fn install(
    signal: i32,
    entry: Entry,
    flags: libc::c_int,
    mask: &[i32],
) -> Result<(), Errno> {
    // SAFETY: all-zero is a valid sigaction (SIG_DFL, empty mask, no flags) to fill in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    let (handler, info) = match entry {
        Entry::Plain(f) => (f as extern "C" fn(_) as libc::sighandler_t, 0),
        Entry::Info(f) => (
            f as extern "C" fn(_, _, _) as libc::sighandler_t,
            libc::SA_SIGINFO,
        ),
    };
    act.sa_sigaction = handler;
    act.sa_flags = (flags & !libc::SA_SIGINFO) | info;
    // SAFETY: `act.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&raw mut act.sa_mask) };
    for &s in mask {
        // SAFETY: `act.sa_mask` is an initialised sigset_t; a bad number gives EINVAL.
        Errno::result(unsafe { libc::sigaddset(&raw mut act.sa_mask, s) })?;
    }
    // SAFETY: `act` is fully initialised; the handler's async-signal-safety is the caller's
    // promise (this function's contract).
    Errno::result(unsafe { libc::sigaction(signal, &raw const act, std::ptr::null_mut()) })?;
    Ok(())
}

/// Resets `signal` to its default action.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub fn set_default(signal: i32) -> Result<(), Errno> {
    // SAFETY: all-zero is SIG_DFL with an empty mask and no flags.
    let act: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `act` is a valid action; the default action runs no code of ours.
    Errno::result(unsafe { libc::sigaction(signal, &raw const act, std::ptr::null_mut()) })?;
    Ok(())
}

/// A signal's current disposition.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// The handler address, or `SIG_DFL` / `SIG_IGN`.
    pub handler: libc::sighandler_t,
    /// The `sa_flags`.
    pub flags: libc::c_int,
    /// The signals (1..=64) blocked while the handler runs.
    pub mask: Vec<i32>,
}

/// Reads `signal`'s current disposition without changing it.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub fn query(signal: i32) -> Result<Disposition, Errno> {
    // SAFETY: all-zero is a valid sigaction to be overwritten.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is a valid out-pointer.
    Errno::result(unsafe { libc::sigaction(signal, std::ptr::null(), &raw mut old) })?;
    let mut mask = Vec::new();
    for s in 1..=64 {
        // SAFETY: `old.sa_mask` was filled in by the kernel; out-of-range numbers give -1.
        if unsafe { libc::sigismember(&raw const old.sa_mask, s) } == 1 {
            mask.push(s);
        }
    }
    Ok(Disposition {
        handler: old.sa_sigaction,
        flags: old.sa_flags,
        mask,
    })
}
