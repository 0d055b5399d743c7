//! The endpoint of both socket transports: a connected stream socket (Unix or TCP) and the
//! name of its peer. The two differ only in how they connect, listen and authenticate.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Endpoint;

/// What [`SocketEndpoint`] needs of a connected stream socket.
pub trait StreamSocket: Read + Write + AsFd + Send + Sized + 'static {
    /// Another handle on the same socket.
    fn try_clone(&self) -> io::Result<Self>;
    /// Bounds how long a read may block (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Shuts down one or both directions.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl StreamSocket for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl StreamSocket for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// A connected socket between a primary and a spare.
#[derive(Debug)]
pub struct SocketEndpoint<S> {
    stream: S,
    /// "unix:/run/...", "tcp:127.0.0.1:7000".
    peer: String,
}

impl<S: StreamSocket> SocketEndpoint<S> {
    /// `stream`, connected to the peer named `peer` in messages.
    pub(crate) fn new(stream: S, peer: String) -> Self {
        Self { stream, peer }
    }

    /// The socket.
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

impl<S: StreamSocket> Read for SocketEndpoint<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<S: StreamSocket> Write for SocketEndpoint<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl<S: StreamSocket> Endpoint for SocketEndpoint<S> {
    fn describe(&self) -> String {
        self.peer.clone()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(Self {
            stream: self.stream.try_clone()?,
            peer: self.peer.clone(),
        }))
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.as_fd())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    fn shutdown(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Both)
    }
}
