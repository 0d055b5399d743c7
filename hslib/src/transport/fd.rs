//! An output straight onto a file descriptor with `write(2)`/`writev(2)` and nothing else: no
//! buffering, no allocation, no locks. This is what a fork child may use to finish a checkpoint
//! with a copy of the parent's [`crate::wire::CheckpointWriter`] (async-signal-safe).

use std::io::{self, IoSlice, Write};
use std::os::fd::BorrowedFd;

/// Writes to a borrowed descriptor (a socket, pipe or file the parent opened).
#[derive(Debug, Clone, Copy)]
pub struct FdWriter<'fd> {
    fd: BorrowedFd<'fd>,
}

impl<'fd> FdWriter<'fd> {
    /// A writer on `fd`.
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        Self { fd }
    }
}

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // `Errno` converts to an OS error without allocating.
        nix::unistd::write(self.fd, buf).map_err(io::Error::from)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        nix::sys::uio::writev(self.fd, bufs).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
