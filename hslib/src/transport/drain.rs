//! A stream into a socket pair whose other end a thread reads and discards: the paper's
//! "pipe with a reader", for benchmarks that must pay for really writing the bytes (a fork
//! child writes to it like to a spare's socket) without a spare's work on the same cores.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Endpoint;

/// The writing end; the reader thread ends when it is dropped.
#[derive(Debug)]
pub struct DrainEndpoint {
    stream: UnixStream,
    drained: Arc<AtomicU64>,
}

impl DrainEndpoint {
    /// A socket pair and the thread that drains it.
    pub fn new() -> io::Result<Self> {
        let (stream, mut reader) = UnixStream::pair()?;
        let drained = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&drained);
        std::thread::Builder::new()
            .name("hs-drain".to_owned())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            count.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(Self { stream, drained })
    }

    /// Bytes the reader has taken so far.
    pub fn drained(&self) -> u64 {
        self.drained.load(Ordering::Relaxed)
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
            drained: Arc::clone(&self.drained),
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
