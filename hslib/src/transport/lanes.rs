//! A Unix connection's answers on a socket of their own.
//!
//! A Unix stream socket wakes every thread asleep on it when its peer takes in what it
//! wrote, whatever that thread waits for. On one socket carrying both directions, a primary
//! asleep waiting for an ack would wake when the spare read the checkpoint, and the spare
//! asleep waiting for the next checkpoint would wake when the primary read the ack. Polling
//! for input before each read avoids the sleeps for nothing, at the price of a system call
//! per read.
//!
//! So the side that connects (a spare) makes a socket pair at once, keeps one end to write
//! its answers on, and sends the other end over the connection, attached to one byte
//! ([`PREAMBLE`]). The side that accepted (a primary) finds it at its first read, and reads
//! the answers there from then on. Each socket then carries one direction: nobody sleeps
//! where the other side's reads wake, and a sync checkpoint is one `write` and one `read`
//! on either side. A peer that sends no such byte (anything that is not hotspare's own
//! connector) is read on the one socket, as before.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::sys::passfd;

/// The byte the answers' socket comes attached to: never the first byte of a frame (frames
/// start with the magic `HSCP`).
pub const PREAMBLE: u8 = 0xA5;

/// How this side uses the answers' socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// The acceptor reads the answers there.
    Read,
    /// The connector writes them there.
    Write,
}

/// The answers' socket of one connection, shared by every handle on it.
#[derive(Debug)]
pub(super) struct Lanes {
    back: OnceLock<(UnixStream, Way)>,
    /// The next read of the connection may bring the answers' socket (an acceptor before
    /// its first read).
    awaiting: AtomicBool,
    /// Orders installing the socket against shutting the connection down and setting its
    /// modes: what is installed after a shutdown is shut down too.
    settings: Mutex<Settings>,
}

/// What was asked of the connection before the answers' socket arrived.
#[derive(Debug, Default)]
struct Settings {
    shut: bool,
    read_timeout: Option<Duration>,
    nonblocking: bool,
}

/// What the first read of an acceptor came to.
pub(super) enum First {
    /// Bytes of the stream itself (the peer sends no answers' socket), or its end.
    Data(usize),
    /// The answers' socket arrived: read again.
    Installed,
}

impl Lanes {
    /// One socket for both directions (TCP; a wrapped socket pair).
    pub(super) fn single() -> Self {
        Self::with(None, false)
    }

    /// The acceptor's side: the answers' socket may come with the first byte.
    pub(super) fn awaiting() -> Self {
        Self::with(None, true)
    }

    /// The connector's side: makes the answers' socket and sends its other end over
    /// `stream`, the connection just made.
    pub(super) fn offer(stream: &UnixStream) -> io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        passfd::send_fd(stream.as_fd(), PREAMBLE, theirs.as_fd()).map_err(io::Error::from)?;
        Ok(Self::with(Some((ours, Way::Write)), false))
    }

    fn with(back: Option<(UnixStream, Way)>, awaiting: bool) -> Self {
        let lock = OnceLock::new();
        if let Some(b) = back {
            let _ = lock.set(b);
        }
        Self {
            back: lock,
            awaiting: AtomicBool::new(awaiting),
            settings: Mutex::new(Settings::default()),
        }
    }

    /// Whether the answers travel on a socket of their own.
    pub(super) fn split(&self) -> bool {
        self.back.get().is_some()
    }

    /// The socket this side reads the answers from, once it is known.
    pub(super) fn reader(&self) -> Option<&UnixStream> {
        match self.back.get() {
            Some((s, Way::Read)) => Some(s),
            _ => None,
        }
    }

    /// The socket this side writes its answers to.
    pub(super) fn writer(&self) -> Option<&UnixStream> {
        match self.back.get() {
            Some((s, Way::Write)) => Some(s),
            _ => None,
        }
    }

    /// Whether the next read of the connection must look for the answers' socket.
    pub(super) fn is_awaiting(&self) -> bool {
        self.awaiting.load(Ordering::Acquire)
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The acceptor's first read of `main`, into `buf`: takes in the answers' socket if it
    /// comes (with the timeout and blocking mode set on the connection so far).
    pub(super) fn first_read(&self, main: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<First> {
        if buf.is_empty() {
            return Ok(First::Data(0));
        }
        let (n, fd) = passfd::recv_with_fd(main, buf).map_err(io::Error::from)?;
        self.awaiting.store(false, Ordering::Release);
        match fd {
            Some(fd) if n == 1 && buf[0] == PREAMBLE => {
                let back = UnixStream::from(fd);
                let settings = self.settings();
                back.set_read_timeout(settings.read_timeout)?;
                back.set_nonblocking(settings.nonblocking)?;
                if settings.shut {
                    back.shutdown(std::net::Shutdown::Both)?;
                }
                if self.back.set((back, Way::Read)).is_err() {
                    // Only the first read installs; a second would be a peer's second
                    // preamble, which is not hotspare's.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a second answers' socket on one connection",
                    ));
                }
                drop(settings);
                Ok(First::Installed)
            }
            // Not ours to keep (closed when dropped): the bytes are the stream's.
            _ => Ok(First::Data(n)),
        }
    }

    /// Reads the answers (the acceptor, once the socket arrived).
    pub(super) fn read_back(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reader() {
            Some(mut s) => s.read(buf),
            None => Err(io::Error::other("no answers' socket to read")),
        }
    }

    /// Applies a read timeout to the answers' socket, now or when it arrives.
    pub(super) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let mut settings = self.settings();
        settings.read_timeout = timeout;
        if let Some((s, _)) = self.back.get() {
            s.set_read_timeout(timeout)?;
        }
        Ok(())
    }

    /// Makes the answers' socket non-blocking, now or when it arrives.
    pub(super) fn set_nonblocking(&self) -> io::Result<()> {
        let mut settings = self.settings();
        settings.nonblocking = true;
        if let Some((s, _)) = self.back.get() {
            s.set_nonblocking(true)?;
        }
        Ok(())
    }

    /// Shuts the answers' socket down with the connection: both directions (also if it
    /// arrives later), or only the direction this side writes in.
    pub(super) fn shutdown(&self, both: bool) -> io::Result<()> {
        let mut settings = self.settings();
        if both {
            settings.shut = true;
        }
        match self.back.get() {
            Some((s, _)) if both => s.shutdown(std::net::Shutdown::Both),
            Some((s, Way::Write)) => s.shutdown(std::net::Shutdown::Write),
            _ => Ok(()),
        }
    }
}
