//! Byte streams that carry the checkpoint stream: Unix socket (the default), TCP with mutual
//! authentication from a shared key, a file (a checkpoint log a replica can be rebuilt from),
//! and null (discards; for benchmarks). The frames on top are the same for all of them.
//! [`FdWriter`] is the bare `write(2)` output a fork child uses.

pub mod drain;
pub mod fd;
pub mod file;
mod lanes;
pub mod null;
pub mod socket;
pub mod spin;
pub mod tcp;
pub mod unix;

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

pub use drain::DrainEndpoint;
pub use fd::FdWriter;
pub use file::FileLog;
pub use null::NullEndpoint;
pub use socket::{SocketEndpoint, StreamSocket};
pub use tcp::{AuthKey, TcpConfig, TcpEndpoint, TcpServer};
pub use unix::{UnixEndpoint, UnixServer};

/// How long a handshake (TCP authentication, the hello and its ack) may take by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One end of a byte stream between a primary and a spare.
pub trait Endpoint: Read + Write + Send {
    /// Who is at the other end, for messages ("unix:/run/...", "tcp:127.0.0.1:7000").
    fn describe(&self) -> String;
    /// Bounds how long a read may block (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Another handle on the same stream, e.g. to read acks on another thread.
    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>>;
    /// Closes both directions; the peer reads end of stream.
    fn shutdown(&self) -> io::Result<()>;
    /// The descriptor underneath, for a fork child that writes a checkpoint with bare
    /// `write(2)` ([`FdWriter`]); `None` when there is none (null).
    fn as_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Whether the other end acks commits (a spare); a log or null sink does not.
    fn acks(&self) -> bool {
        true
    }
    /// Makes what was written durable where that means something (a log: `fdatasync`).
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    /// Closes the sending direction only (the peer reads end of stream; its answers still
    /// arrive). By default both directions.
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown()
    }
    /// Makes reads and writes on every handle of the stream fail rather than block
    /// (`O_NONBLOCK`); nothing where there is no descriptor.
    fn set_nonblocking(&self) -> io::Result<()> {
        self.as_fd().map_or(Ok(()), set_nonblocking)
    }
    /// Makes this handle's reads look for input for up to `limit` before they sleep, while
    /// input comes that quickly ([`spin`]); zero turns it off. Nothing on an endpoint that
    /// never waits (a file, null).
    fn spin_for_input(&mut self, limit: Duration) {
        let _ = limit;
    }
}

/// Sets `O_NONBLOCK` on `fd`'s open file description (every duplicate of it).
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// What went wrong setting up or using a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP was asked for without a shared key.
    #[error(
        "the TCP transport needs a shared key and refuses to start without one (set {var} or pass a key)"
    )]
    MissingKey {
        /// The environment variable that would hold it.
        var: &'static str,
    },
    /// The shared key is too short to be a secret.
    #[error("the shared key is {len} bytes; at least {min} are required")]
    KeyTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The socket directory is not a directory (or is a symbolic link).
    #[error("socket directory {path:?} is not a directory (symbolic links are refused)")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The socket directory is open to others.
    #[error(
        "socket directory {path:?} has mode {mode:#o}; it must be 0700 (no group/other access)"
    )]
    DirectoryMode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket directory belongs to someone else.
    #[error("socket directory {path:?} is owned by uid {owner}, not by this process's uid {uid}")]
    DirectoryOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// A file system operation failed.
    #[error("{what} {path:?} failed: {source}")]
    Path {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A network operation failed.
    #[error("{what} {addr} failed: {source}")]
    Net {
        /// The operation.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The authentication exchange failed (includes its timeout).
    #[error("authentication with {peer} failed while {stage}: {source}")]
    Handshake {
        /// The peer.
        peer: String,
        /// Which step.
        stage: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The peer does not speak the authentication protocol.
    #[error("{peer} sent {found:02x?} instead of the authentication greeting")]
    BadGreeting {
        /// The peer.
        peer: String,
        /// What it sent.
        found: [u8; 8],
    },
    /// The peer's proof does not match: it does not hold the same key.
    #[error("{peer} failed to prove it holds the shared key (wrong or missing key)")]
    PeerNotAuthenticated {
        /// The peer.
        peer: String,
    },
    /// The peer refused this side's proof.
    #[error("{peer} refused this side's key proof (the keys differ)")]
    Refused {
        /// The peer.
        peer: String,
    },
    /// No randomness for the nonce.
    #[error("no random nonce: {0}")]
    Random(getrandom::Error),
    /// A checkpoint log cannot be read back, or holds frames a replica refuses.
    #[error("checkpoint log {path:?} does not replay: {source}")]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        source: crate::replica::ReplicaError,
    },
}

/// Implements [`Endpoint`] for a pointer type by forwarding every method (each one: a
/// method left out would silently fall back to its default).
macro_rules! forward_endpoint {
    ($($ptr:ty),+) => {$(
        impl<E: Endpoint + ?Sized> Endpoint for $ptr {
            fn describe(&self) -> String {
                (**self).describe()
            }

            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                (**self).set_read_timeout(timeout)
            }

            fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
                (**self).try_clone_endpoint()
            }

            fn shutdown(&self) -> io::Result<()> {
                (**self).shutdown()
            }

            fn as_fd(&self) -> Option<BorrowedFd<'_>> {
                (**self).as_fd()
            }

            fn acks(&self) -> bool {
                (**self).acks()
            }

            fn sync(&self) -> io::Result<()> {
                (**self).sync()
            }

            fn shutdown_write(&self) -> io::Result<()> {
                (**self).shutdown_write()
            }

            fn set_nonblocking(&self) -> io::Result<()> {
                (**self).set_nonblocking()
            }

            fn spin_for_input(&mut self, limit: Duration) {
                (**self).spin_for_input(limit)
            }
        }
    )+};
}

forward_endpoint!(&mut E, Box<E>);

/// A connected Unix socket pair end (e.g. from `socketpair` between a parent and a spare it
/// forked) is an endpoint as it is.
impl Endpoint for std::os::unix::net::UnixStream {
    fn describe(&self) -> String {
        "unix:socketpair".to_owned()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(self.try_clone()?))
    }

    fn shutdown(&self) -> io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, std::net::Shutdown::Both)
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(AsFd::as_fd(self))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, std::net::Shutdown::Write)
    }
}
