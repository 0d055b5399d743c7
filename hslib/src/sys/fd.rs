//! System calls on file descriptors given by number, for the metadata registry: the
//! application owns the descriptors, the library only inspects them and, on restore, puts
//! new ones at the numbers the application expects.
//!
//! Passing a number that is not open is memory-safe: the kernel answers `EBADF`.

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::SockaddrStorage;

/// `fstat(2)` of `fd`.
pub fn fstat(fd: RawFd) -> Result<libc::stat, Errno> {
    // SAFETY: all-zero is a valid `stat` to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the call.
    Errno::result(unsafe { libc::fstat(fd, &raw mut st) })?;
    Ok(st)
}

/// The file status flags (`fcntl(F_GETFL)`): access mode, `O_APPEND`, `O_NONBLOCK`, ...
pub fn status_flags(fd: RawFd) -> Result<i32, Errno> {
    // SAFETY: F_GETFL takes no argument and touches no memory of ours.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Whether `fd` is close-on-exec (`fcntl(F_GETFD)`).
pub fn cloexec(fd: RawFd) -> Result<bool, Errno> {
    // SAFETY: F_GETFD takes no argument and touches no memory of ours.
    let flags = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// The current file offset (`lseek(fd, 0, SEEK_CUR)`); no allocation.
pub fn offset(fd: RawFd) -> Result<u64, Errno> {
    // SAFETY: lseek touches no memory of ours.
    let off = Errno::result(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) })?;
    u64::try_from(off).map_err(|_| Errno::EOVERFLOW)
}

/// Moves the file offset of `fd` to `offset` (`SEEK_SET`).
pub fn seek_to(fd: RawFd, offset: u64) -> Result<(), Errno> {
    let off = libc::off_t::try_from(offset).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: lseek touches no memory of ours.
    Errno::result(unsafe { libc::lseek(fd, off, libc::SEEK_SET) })?;
    Ok(())
}

/// An integer socket option (`getsockopt(fd, level, name)`).
pub fn sockopt_int(fd: RawFd, level: i32, name: i32) -> Result<i32, Errno> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers and `len` is `value`'s size.
    Errno::result(unsafe {
        libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len)
    })?;
    Ok(value)
}

/// The socket's local address (`getsockname(2)`).
pub fn sock_name(fd: RawFd) -> Result<SockaddrStorage, Errno> {
    nix::sys::socket::getsockname(fd)
}

/// The socket's peer address (`getpeername(2)`).
pub fn peer_name(fd: RawFd) -> Result<SockaddrStorage, Errno> {
    nix::sys::socket::getpeername(fd)
}

/// Puts `file` at descriptor number `target`, replacing whatever `target` was (`dup3(2)`),
/// and closes `file`'s own number. The new descriptor belongs to whoever registered
/// `target`; the library keeps no handle to it.
pub fn place_at(file: OwnedFd, target: RawFd, cloexec: bool) -> Result<(), Errno> {
    let fd_flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
    let oflags = if cloexec { libc::O_CLOEXEC } else { 0 };
    let raw = file.into_raw_fd();
    if raw == target {
        // SAFETY: F_SETFD takes an integer and touches no memory of ours.
        return Errno::result(unsafe { libc::fcntl(raw, libc::F_SETFD, fd_flags) }).map(drop);
    }
    // SAFETY: dup3 touches no memory of ours; replacing `target` is the caller's request.
    let res = Errno::result(unsafe { libc::dup3(raw, target, oflags) });
    // SAFETY: `raw` came from an OwnedFd we consumed, so nobody else closes it.
    unsafe { libc::close(raw) };
    res.map(drop)
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty touches no memory of ours.
    unsafe { libc::isatty(fd) == 1 }
}

/// Sets an integer socket option (`setsockopt(fd, level, name, &value)`).
pub fn set_sockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> Result<(), Errno> {
    let value: libc::c_int = value;
    // SAFETY: `value` is a readable c_int and the length passed is its size.
    Errno::result(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Writes all of `buf` to descriptor number `fd` (one the process was given by number, such
/// as a supervisor's report pipe), retrying after signals.
pub fn write_all_raw(fd: RawFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a readable slice of `buf.len()` bytes; a number that is not open
        // is answered with EBADF.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n as usize..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads at most `buf.len()` bytes from descriptor number `fd` (one the process was given by
/// number, such as a supervisor's order pipe), retrying after signals; 0 at end of file.
pub fn read_raw(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: `buf` is a writable slice of `buf.len()` bytes; a number that is not open
        // is answered with EBADF.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(n) => return Ok(n as usize),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}
