//! A stream to nowhere: writes succeed and are discarded, reads see end of stream. For
//! measuring the cost of producing a checkpoint without the cost of moving it.

use std::io::{self, Read, Write};
use std::time::Duration;

use super::Endpoint;

/// Discards everything written; reads nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullEndpoint {
    written: u64,
}

impl NullEndpoint {
    /// A new sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes discarded so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Read for NullEndpoint {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for NullEndpoint {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Endpoint for NullEndpoint {
    fn describe(&self) -> String {
        "null".to_owned()
    }

    fn set_read_timeout(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(Self::new()))
    }

    fn shutdown(&self) -> io::Result<()> {
        Ok(())
    }

    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    fn acks(&self) -> bool {
        false
    }
}
