//! Waiting for input by spinning a little before sleeping: a spare's own halt-polling.
//!
//! A reader that sleeps in `read` costs its writer a wake-up: on a virtual machine whose
//! idle vCPUs halt at once, that is an interrupt to another vCPU and the host scheduling it
//! back in, tens of microseconds, twice per sync checkpoint (the spare woken by the data,
//! the primary by the ack). When checkpoints come back to back, the next one is due a few
//! microseconds after the spare's ack: a spare that looks for it for a bounded time
//! (`recv` with `MSG_DONTWAIT`) before it sleeps finds it on the way, and the primary's
//! write wakes nobody.
//!
//! The spinning adapts, as an adaptive mutex does: a reader spins only while the last
//! input came within the bound of its read starting (checkpoints back to back). At a
//! person's pace (a move every 50 ms) the first wait that outlasts the bound turns the
//! spinning off, and the next short one turns it on again: an idle spare burns nothing, a
//! busy one at most the bound per read.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};

/// The environment variable that sets the bound, in microseconds (0: never spin).
pub const ENV_SPIN_US: &str = "HS_SPIN_US";

/// The bound a spare spins for unless `HS_SPIN_US` says otherwise: a back-to-back
/// checkpoint's gap on the project's machine is 10-30 us, a wake-up of a halted vCPU
/// 20-100 us.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// The spinning state of one reader.
#[derive(Debug, Clone)]
pub struct Spin {
    /// How long a read looks for input before it sleeps (zero: never).
    limit: Duration,
    /// The last input came within `limit` of the read starting: look again.
    hot: bool,
}

impl Spin {
    /// Never spins.
    pub const OFF: Spin = Spin {
        limit: Duration::ZERO,
        hot: false,
    };

    /// Spins up to `limit` per read while input comes within it; zero never spins, nor
    /// does a machine with one processor (the writer the spinner waits for would be the
    /// one it keeps off the processor).
    pub fn new(limit: Duration) -> Self {
        let processors = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            limit: if processors > 1 {
                limit
            } else {
                Duration::ZERO
            },
            hot: true,
        }
    }

    /// Whether this reader never spins.
    pub fn is_off(&self) -> bool {
        self.limit.is_zero()
    }

    /// Reads `fd` into `buf` without sleeping, over and over for at most the bound (or
    /// `cap`, a read timeout, if shorter), when the last input came within the bound.
    /// `Some` is what a read found (data, end of stream or an error; a `cap` spun through is
    /// `WouldBlock`, as a read timing out reports it); `None` means go and sleep in a read
    /// (nothing came, or this reader is not spinning), and hand the returned instant to
    /// [`Spin::waited`] when it returns.
    pub fn try_input(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        cap: Option<Duration>,
    ) -> (Option<io::Result<usize>>, Option<Instant>) {
        if self.limit.is_zero() || buf.is_empty() {
            return (None, None);
        }
        let start = Instant::now();
        if !self.hot {
            return (None, Some(start));
        }
        // A read timeout shorter than the bound ends the spinning as it would end the read.
        let timed_out = cap.is_some_and(|c| c < self.limit);
        let limit = cap.map_or(self.limit, |c| c.min(self.limit));
        loop {
            match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => return (Some(Ok(n)), None),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return (Some(Err(io::Error::from(e))), None),
            }
            if start.elapsed() >= limit {
                self.hot = false;
                if timed_out {
                    return (Some(Err(io::ErrorKind::WouldBlock.into())), None);
                }
                return (None, Some(start));
            }
            std::hint::spin_loop();
        }
    }

    /// A read that slept, started at `start`, returned: spin next time if it waited no
    /// longer than the bound.
    pub fn waited(&mut self, start: Option<Instant>) {
        if let Some(start) = start {
            self.hot = start.elapsed() <= self.limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::fd::AsFd as _;
    use std::os::unix::net::UnixStream;

    #[test]
    fn input_already_there_is_read_without_sleeping() {
        let (mut a, b) = UnixStream::pair().expect("socketpair");
        a.write_all(b"abc").expect("write");
        let mut spin = Spin::new(Duration::from_millis(10));
        let mut buf = [0u8; 8];
        match spin.try_input(b.as_fd(), &mut buf, None) {
            (Some(Ok(3)), None) => assert_eq!(&buf[..3], b"abc"),
            (got, _) => panic!("expected the 3 bytes, got {got:?}"),
        }
    }

    #[test]
    fn a_long_wait_stops_the_spinning_and_a_short_one_restarts_it() {
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            return;
        }
        let (_a, b) = UnixStream::pair().expect("socketpair");
        let mut spin = Spin::new(Duration::from_millis(2));
        let mut buf = [0u8; 8];
        // Nothing comes: it spins for the bound, then sends the reader to sleep...
        let t = Instant::now();
        let (got, start) = spin.try_input(b.as_fd(), &mut buf, None);
        assert!(got.is_none() && start.is_some());
        assert!(
            t.elapsed() >= Duration::from_millis(2),
            "spun for the bound"
        );
        // ...whose wait was long: the next read does not spin at all.
        spin.waited(start);
        let t = Instant::now();
        let (got, start) = spin.try_input(b.as_fd(), &mut buf, None);
        assert!(got.is_none() && start.is_some());
        assert!(
            t.elapsed() < Duration::from_millis(2),
            "a cold reader does not spin ({:?})",
            t.elapsed()
        );
        // A sleep that ended at once (input came quickly) turns the spinning back on.
        spin.waited(Some(Instant::now()));
        let t = Instant::now();
        let _ = spin.try_input(b.as_fd(), &mut buf, None);
        assert!(t.elapsed() >= Duration::from_millis(2), "spinning again");
    }

    #[test]
    fn the_end_of_the_stream_and_errors_end_the_spinning() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        drop(a);
        let mut spin = Spin::new(Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let t = Instant::now();
        assert!(matches!(
            spin.try_input(b.as_fd(), &mut buf, None),
            (Some(Ok(0)), None)
        ));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_read_timeout_shorter_than_the_bound_ends_the_spinning_as_a_timed_out_read() {
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            return;
        }
        let (_a, b) = UnixStream::pair().expect("socketpair");
        let mut spin = Spin::new(Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let t = Instant::now();
        match spin.try_input(b.as_fd(), &mut buf, Some(Duration::from_millis(3))) {
            (Some(Err(e)), None) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
            (got, _) => panic!("expected a timeout, got {got:?}"),
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(3) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }

    #[test]
    fn a_zero_bound_never_spins() {
        let (mut a, b) = UnixStream::pair().expect("socketpair");
        a.write_all(b"x").expect("write");
        let mut spin = Spin::new(Duration::ZERO);
        let mut buf = [0u8; 8];
        assert!(matches!(
            spin.try_input(b.as_fd(), &mut buf, None),
            (None, None)
        ));
    }
}
