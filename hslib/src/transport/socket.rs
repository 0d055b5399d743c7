//! The endpoint of both socket transports: a connected stream socket (Unix or TCP) and the
//! name of its peer. The two differ only in how they connect, listen and authenticate.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::Endpoint;
use super::lanes::{First, Lanes};
use super::spin::Spin;

/// What [`SocketEndpoint`] needs of a connected stream socket.
pub trait StreamSocket: Read + Write + AsFd + Send + Sized + 'static {
    /// Another handle on the same socket.
    fn try_clone(&self) -> io::Result<Self>;
    /// Bounds how long a read may block (`None`: forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// The bound set on the socket (`SO_RCVTIMEO`; `None`: none).
    fn read_timeout(&self) -> io::Result<Option<Duration>>;
    /// Shuts down one or both directions.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Whether a reader asleep in `read` is woken, for nothing, when the peer takes in
    /// what this side wrote. A Unix stream socket does that (its write-space wake-up goes
    /// to every sleeper, whatever it waits for), so a sync checkpoint's writer waiting for
    /// the ack, and the spare waiting for the next checkpoint, would each wake twice per
    /// checkpoint. Such a socket is read after `poll` for input, whose wake-ups are
    /// filtered by what it waits for.
    const WOKEN_FOR_SPACE: bool = false;
}

impl StreamSocket for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        TcpStream::read_timeout(self)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl StreamSocket for UnixStream {
    const WOKEN_FOR_SPACE: bool = true;

    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }

    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        UnixStream::read_timeout(self)
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
    /// What the socket's descriptors share (as they share `SO_RCVTIMEO` and `O_NONBLOCK`),
    /// for the `poll` before a read ([`StreamSocket::WOKEN_FOR_SPACE`]).
    modes: Arc<Modes>,
    /// A Unix connection's answers' socket ([`super::lanes`]).
    lanes: Arc<Lanes>,
    /// How this handle's reads look for input before they sleep ([`super::spin`]).
    spin: Spin,
}

/// The read timeout and blocking mode last set through any handle of one socket.
#[derive(Debug)]
struct Modes {
    /// In microseconds; [`NO_TIMEOUT`]: none.
    read_timeout_us: AtomicU64,
    /// Reads and writes fail instead of blocking.
    nonblocking: AtomicBool,
}

/// `read_timeout_us` when reads may block forever.
const NO_TIMEOUT: u64 = u64::MAX;

/// `timeout` as [`Modes::read_timeout_us`] keeps it.
fn timeout_us(timeout: Option<Duration>) -> u64 {
    timeout.map_or(NO_TIMEOUT, |t| {
        u64::try_from(t.as_micros()).map_or(NO_TIMEOUT - 1, |us| us.clamp(1, NO_TIMEOUT - 1))
    })
}

impl<S: StreamSocket> SocketEndpoint<S> {
    /// `stream`, connected to the peer named `peer` in messages. The read timeout and
    /// blocking mode already set on the socket are kept (the poll before a read honours
    /// them); one that cannot be read is taken as unset, which is what a socket just
    /// accepted or connected has.
    pub(crate) fn new(stream: S, peer: String) -> Self {
        Self::with_lanes(stream, peer, Lanes::single())
    }

    fn with_lanes(stream: S, peer: String, lanes: Lanes) -> Self {
        let timeout = stream.read_timeout().unwrap_or_else(|e| {
            tracing::warn!(peer, error = %e, "cannot read the socket's read timeout: none assumed");
            None
        });
        let nonblocking = nix::fcntl::fcntl(stream.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map(|flags| {
                nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
            })
            .unwrap_or_else(|e| {
                tracing::warn!(peer, error = %e, "cannot read the socket's flags: blocking assumed");
                false
            });
        Self {
            stream,
            peer,
            modes: Arc::new(Modes {
                read_timeout_us: AtomicU64::new(timeout_us(timeout)),
                nonblocking: AtomicBool::new(nonblocking),
            }),
            lanes: Arc::new(lanes),
            spin: Spin::OFF,
        }
    }

    /// The socket.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether the peer's answers travel on a socket of their own ([`super::lanes`]): on
    /// the side that accepted, known from its first read.
    pub fn answers_apart(&self) -> bool {
        self.lanes.split()
    }
}

impl SocketEndpoint<UnixStream> {
    /// A connection this side accepted: the peer's answers may come on a socket of their
    /// own, sent with its first byte.
    pub(crate) fn accepted(stream: UnixStream, peer: String) -> Self {
        Self::with_lanes(stream, peer, Lanes::awaiting())
    }

    /// A connection this side made: its answers go on a socket of their own, whose other
    /// end is sent to the peer now.
    pub(crate) fn connected(stream: UnixStream, peer: String) -> io::Result<Self> {
        let lanes = Lanes::offer(&stream)?;
        Ok(Self::with_lanes(stream, peer, lanes))
    }
}

impl<S: StreamSocket> Read for SocketEndpoint<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut slept = None;
        if !self.spin.is_off()
            && !self.lanes.is_awaiting()
            && !self.modes.nonblocking.load(Ordering::Relaxed)
        {
            let fd = match self.lanes.reader() {
                Some(back) => AsFd::as_fd(back),
                None => self.stream.as_fd(),
            };
            let cap = match self.modes.read_timeout_us.load(Ordering::Relaxed) {
                NO_TIMEOUT => None,
                us => Some(Duration::from_micros(us)),
            };
            let (found, start) = self.spin.try_input(fd, buf, cap);
            if let Some(found) = found {
                return found;
            }
            slept = start;
        }
        let read = self.read_sleeping(buf);
        if matches!(read, Ok(n) if n > 0) {
            self.spin.waited(slept);
        }
        read
    }
}

impl<S: StreamSocket> SocketEndpoint<S> {
    /// A read that sleeps until input comes (or the read timeout passes).
    fn read_sleeping(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.lanes.reader().is_some() {
            return self.lanes.read_back(buf);
        }
        if self.lanes.is_awaiting() {
            match self.lanes.first_read(self.stream.as_fd(), buf)? {
                First::Data(n) => return Ok(n),
                First::Installed => return self.lanes.read_back(buf),
            }
        }
        // A connector writing its answers apart is not woken by its peer's reads.
        if S::WOKEN_FOR_SPACE
            && !self.lanes.split()
            && !buf.is_empty()
            && !self.modes.nonblocking.load(Ordering::Relaxed)
        {
            let timeout = match self.modes.read_timeout_us.load(Ordering::Relaxed) {
                NO_TIMEOUT => None,
                us => Some(Duration::from_micros(us)),
            };
            wait_readable(self.stream.as_fd(), timeout)?;
        }
        self.stream.read(buf)
    }
}

/// Waits until `fd` has input (or its end, or an error) for at most `timeout`; a timeout is
/// `WouldBlock`, as a timed-out `read` of a socket with `SO_RCVTIMEO` reports it. Returns
/// early, for the read to go ahead, when a signal interrupts the wait.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, ppoll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let limit = timeout.map(nix::sys::time::TimeSpec::from_duration);
    match ppoll(&mut fds, limit, None) {
        Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
        // A signal: the read goes ahead and blocks (or is restarted) as it would have
        // without the poll.
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

impl<S: StreamSocket> Write for SocketEndpoint<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.lanes.writer() {
            Some(mut back) => back.write(buf),
            None => self.stream.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.lanes.writer() {
            Some(mut back) => back.write_vectored(bufs),
            None => self.stream.write_vectored(bufs),
        }
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
        self.stream.set_read_timeout(timeout)?;
        self.lanes.set_read_timeout(timeout)?;
        self.modes
            .read_timeout_us
            .store(timeout_us(timeout), Ordering::Relaxed);
        Ok(())
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        super::set_nonblocking(self.stream.as_fd())?;
        self.lanes.set_nonblocking()?;
        self.modes.nonblocking.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        Ok(Box::new(Self {
            stream: self.stream.try_clone()?,
            peer: self.peer.clone(),
            modes: Arc::clone(&self.modes),
            lanes: Arc::clone(&self.lanes),
            spin: Spin::OFF,
        }))
    }

    fn spin_for_input(&mut self, limit: Duration) {
        self.spin = Spin::new(limit);
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.as_fd())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        // Both sockets, whatever the first one answered.
        let back = self.lanes.shutdown(false);
        self.stream.shutdown(Shutdown::Write).and(back)
    }

    fn shutdown(&self) -> io::Result<()> {
        let back = self.lanes.shutdown(true);
        self.stream.shutdown(Shutdown::Both).and(back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// This thread's voluntary context switches so far (each sleep it woke from).
    fn voluntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in /proc/thread-self/status")
    }

    fn pair() -> (SocketEndpoint<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (SocketEndpoint::new(a, "unix:test".to_owned()), b)
    }

    /// A writer waiting for its answer sleeps once: the peer taking in what it wrote (which
    /// wakes every sleeper on a Unix socket) does not wake it.
    #[test]
    fn a_unix_reader_sleeps_through_its_peer_taking_in_what_it_wrote() {
        let (mut ep, mut peer) = pair();
        let answer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = [0u8; 4096];
            peer.read_exact(&mut got).expect("the peer reads");
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(&[7]).expect("the peer answers");
        });
        ep.write_all(&[1u8; 4096]).expect("write");
        let before = voluntary_switches();
        let mut one = [0u8; 1];
        assert_eq!(ep.read(&mut one).expect("the answer"), 1);
        let slept = voluntary_switches() - before;
        answer.join().expect("the peer thread");
        assert_eq!(one, [7]);
        assert_eq!(slept, 1, "the reader woke {slept} times for one answer");
    }

    /// The poll before the read keeps the read timeout, on every handle of the socket.
    #[test]
    fn a_unix_read_still_times_out_as_set_on_any_handle() {
        let (mut ep, _peer) = pair();
        let other = ep.try_clone_endpoint().expect("clone");
        other
            .set_read_timeout(Some(Duration::from_millis(60)))
            .expect("timeout");
        let started = Instant::now();
        let err = ep.read(&mut [0u8; 8]).expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "{started:?}"
        );
    }

    /// A socket made non-blocking through one handle fails reads on another at once, as
    /// `O_NONBLOCK` on the shared file description does, instead of waiting in the poll.
    #[test]
    fn a_nonblocking_unix_socket_fails_reads_at_once_on_every_handle() {
        let (mut ep, _peer) = pair();
        let other = ep.try_clone_endpoint().expect("clone");
        other.set_nonblocking().expect("non-blocking");
        let started = Instant::now();
        let err = ep.read(&mut [0u8; 8]).expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Reads through the endpoint of a socket whose timeout, or `O_NONBLOCK`, was set before
    /// it was wrapped, in a thread: the result, or `None` if the read is still waiting after
    /// 5 s (the thread is left behind, blocked, and the test fails).
    fn read_in_thread(stream: UnixStream) -> Option<(io::Result<usize>, Duration)> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ep = SocketEndpoint::new(stream, "unix:test".to_owned());
            let started = Instant::now();
            let r = ep.read(&mut [0u8; 8]);
            let _ = tx.send((r, started.elapsed()));
        });
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// The poll before the read honours a timeout set on the socket before it was wrapped.
    #[test]
    fn a_timeout_set_before_the_socket_was_wrapped_still_ends_the_read() {
        let (a, _peer) = UnixStream::pair().expect("socketpair");
        a.set_read_timeout(Some(Duration::from_millis(60)))
            .expect("timeout");
        let (r, took) = read_in_thread(a).expect("the read waited past its timeout");
        let err = r.expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }

    /// And a socket made non-blocking before it was wrapped fails the read at once.
    #[test]
    fn a_socket_nonblocking_before_it_was_wrapped_fails_reads_at_once() {
        let (a, _peer) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("non-blocking");
        let (r, _) = read_in_thread(a).expect("the read waited on a non-blocking socket");
        let err = r.expect_err("nothing to read");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    }
}
