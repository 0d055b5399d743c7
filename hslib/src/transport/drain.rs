//! A stream into a socket pair whose other end a child process reads and discards: the
//! paper's "pipe with a reader", for benchmarks that must pay for really writing the bytes (a
//! fork child writes to it like to a spare's socket) without a spare's work on the same
//! cores. The reader is a process, not a thread, as the paper's was: a thread would share
//! this process's address space, and every write-protecting scan would then have to shoot
//! down its TLB entries on the other core.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::unistd::Pid;

use super::Endpoint;
use crate::sys::process::{self, Forked};

/// The writing end; the reader process ends when it is dropped (and is reaped then).
#[derive(Debug)]
pub struct DrainEndpoint {
    stream: UnixStream,
    reader: Option<Pid>,
}

impl DrainEndpoint {
    /// A socket pair and the process that drains it.
    pub fn new() -> io::Result<Self> {
        let (stream, reader) = UnixStream::pair()?;
        // SAFETY: the child only reads into a stack buffer with read(2) and calls _exit.
        match unsafe { process::fork() }.map_err(io::Error::from)? {
            Forked::Child => {
                let keep = process::raw(AsFd::as_fd(&reader));
                process::close_all_except(keep, keep);
                let mut buf = [0u8; 64 << 10];
                while let Ok(n) = process::read_full(AsFd::as_fd(&reader), &mut buf) {
                    if n < buf.len() {
                        break;
                    }
                }
                process::exit_now(0)
            }
            Forked::Parent(pid) => Ok(Self {
                stream,
                reader: Some(pid),
            }),
        }
    }
}

impl Drop for DrainEndpoint {
    fn drop(&mut self) {
        if let Some(pid) = self.reader.take() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            let _ = process::wait_child(pid);
        }
    }
}

impl Read for DrainEndpoint {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for DrainEndpoint {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Endpoint for DrainEndpoint {
    fn describe(&self) -> String {
        "drain".to_owned()
    }

    fn set_read_timeout(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(Self {
            stream: self.stream.try_clone()?,
            reader: None,
        }))
    }

    fn shutdown(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Both)
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(AsFd::as_fd(&self.stream))
    }

    fn acks(&self) -> bool {
        false
    }
}
