//! Keys from the terminal, as the bytes typed, with the arrow keys mapped onto the key map.
//!
//! [`Source::wait`] is the game's only blocking point: it waits for a key, a signal or the
//! timeout. [`KeyDecoder`] turns raw terminal bytes into key bytes: plain bytes pass through
//! unchanged (BSD reads single bytes), cursor-key sequences become the key map's left,
//! rotate (up), right and down bytes, other escape sequences are swallowed.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::rules;
use crate::signals::{Caught, Signals};
use crate::state::key;

/// How long an ESC at the end of a read waits for the rest of a sequence before it counts
/// as a key by itself.
pub const ESC_DELAY: Duration = Duration::from_millis(25);

const ESC: u8 = 0x1b;

/// What went wrong while reading the terminal.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Polling the terminal and the signal pipe failed.
    #[error("polling the terminal (fd {fd}) failed: {source}")]
    Poll {
        /// The terminal's fd.
        fd: i32,
        /// The OS error.
        source: nix::Error,
    },
    /// Reading the terminal failed.
    #[error("reading the terminal (fd {fd}) failed: {source}")]
    Read {
        /// The terminal's fd.
        fd: i32,
        /// The OS error.
        source: nix::Error,
    },
    /// What had to be said before the first input could not be said ([`Announcing`]).
    #[error("{0}")]
    Announce(String),
}

/// What a source says once, just before its first wait: a restored game's resumed line,
/// written once its first frame is out (the game draws before it waits for input) and
/// before it consumes any input.
pub type Announcement<'a> = Box<dyn FnOnce() -> anyhow::Result<()> + 'a>;

/// A source that makes an [`Announcement`] before its first wait.
pub struct Announcing<'a, S> {
    inner: S,
    announcement: Option<Announcement<'a>>,
}

impl<'a, S> Announcing<'a, S> {
    /// `inner`, announcing `announcement` (if any) before its first wait.
    pub fn new(inner: S, announcement: Option<Announcement<'a>>) -> Self {
        Self {
            inner,
            announcement,
        }
    }
}

impl<S> Announcing<'_, S> {
    /// Makes the announcement now if no wait has made it (a game that ends without waiting
    /// for input still says where it resumed).
    pub fn announce(&mut self) -> anyhow::Result<()> {
        match self.announcement.take() {
            Some(say) => say(),
            None => Ok(()),
        }
    }
}

impl<S: Source> Source for Announcing<'_, S> {
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, InputError> {
        if let Some(say) = self.announcement.take() {
            say().map_err(|e| InputError::Announce(format!("{e:#}")))?;
        }
        self.inner.wait(timeout)
    }

    fn position(&self) -> Option<u64> {
        self.inner.position()
    }
}

/// What ended a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A key, as the byte the game's rules take (arrows already mapped).
    Key(u8),
    /// The timeout passed without a key.
    Timeout,
    /// A signal arrived.
    Signal(Caught),
    /// The checkpoint library asks for a checkpoint: a spare connected and holds nothing of
    /// this game yet (hslib's `Context::checkpoint_wanted_fd`).
    CheckpointWanted,
    /// The terminal reached end of file or hung up.
    Eof,
}

/// Where the game loop gets its events from.
pub trait Source {
    /// Waits at most `timeout` (`None`: for ever) for the next event.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, InputError>;

    /// After an [`Event::Key`]: the input stream's byte position just past that key (the
    /// bytes that made it, and any ignored sequence before it, included), counted from the
    /// start of the stream the game has seen across restores. `None` when the source does
    /// not count bytes.
    fn position(&self) -> Option<u64> {
        None
    }
}

/// Where decoded keys go: each key with the stream position just past its bytes.
pub trait KeySink {
    /// One decoded key; `end` is the byte position after it.
    fn push_key(&mut self, key: u8, end: u64);
}

impl KeySink for VecDeque<u8> {
    fn push_key(&mut self, key: u8, _end: u64) {
        self.push_back(key);
    }
}

impl KeySink for VecDeque<(u8, u64)> {
    fn push_key(&mut self, key: u8, end: u64) {
        self.push_back((key, end));
    }
}

/// Turns terminal bytes into key bytes.
#[derive(Clone, Debug)]
pub struct KeyDecoder {
    keys: [u8; 7],
    pending: Vec<u8>,
    /// Stream position of the first pending byte: every byte before it is decided.
    decided: u64,
}

/// How a prefix of the input decodes.
enum Decoded {
    /// `len` bytes make this key.
    Key(u8, usize),
    /// `len` bytes are a sequence the game ignores.
    Skip(usize),
    /// The bytes may be the start of a sequence: wait for more.
    Incomplete,
}

impl KeyDecoder {
    /// A decoder mapping arrows onto `keys` (indexed by [`key`]).
    pub fn new(keys: [u8; 7]) -> Self {
        Self::starting_at(keys, 0)
    }

    /// A decoder whose first byte is at stream position `start` (a restored game goes on
    /// counting where its state says the stream was).
    pub fn starting_at(keys: [u8; 7], start: u64) -> Self {
        Self {
            keys,
            pending: Vec::new(),
            decided: start,
        }
    }

    /// True while the start of an escape sequence waits for its end.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Decodes `bytes` (after whatever was pending), appending complete keys to `out`.
    pub fn feed<O: KeySink>(&mut self, bytes: &[u8], out: &mut O) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while start < self.pending.len() {
            match self.decode(&self.pending[start..]) {
                Decoded::Key(k, len) => {
                    start += len;
                    out.push_key(k, self.decided + start as u64);
                }
                Decoded::Skip(len) => start += len,
                Decoded::Incomplete => break,
            }
        }
        self.pending.drain(..start);
        self.decided += start as u64;
    }

    /// Gives up waiting for the rest of a sequence: a lone ESC is a key; what follows it is
    /// decoded afresh.
    pub fn flush<O: KeySink>(&mut self, out: &mut O) {
        if self.pending.first() == Some(&ESC) {
            self.decided += 1;
            out.push_key(ESC, self.decided);
            let rest = self.pending.split_off(1);
            self.pending.clear();
            self.feed(&rest, out);
            // What remains can only be another incomplete sequence: flush it too.
            if self.has_pending() {
                self.flush(out);
            }
        }
    }

    fn arrow(&self, final_byte: u8) -> Option<u8> {
        let index = match final_byte {
            b'A' => key::ROTATE,
            b'B' => key::DOWN,
            b'C' => key::RIGHT,
            b'D' => key::LEFT,
            _ => return None,
        };
        Some(self.keys[index]).filter(|&k| k != rules::NO_KEY)
    }

    fn decode(&self, bytes: &[u8]) -> Decoded {
        match bytes {
            [] => Decoded::Incomplete,
            [ESC] => Decoded::Incomplete,
            // CSI: parameters 0x30-0x3f, intermediates 0x20-0x2f, a final byte 0x40-0x7e.
            [ESC, b'[', rest @ ..] => {
                match rest.iter().position(|b| !(0x20..=0x3f).contains(b)) {
                    None => Decoded::Incomplete,
                    Some(i) if (0x40..=0x7e).contains(&rest[i]) => match self.arrow(rest[i]) {
                        Some(k) => Decoded::Key(k, i + 3),
                        None => Decoded::Skip(i + 3),
                    },
                    // Not a well-formed sequence: the ESC is a key on its own.
                    Some(_) => Decoded::Key(ESC, 1),
                }
            }
            // SS3 (application cursor mode): ESC O and one byte.
            [ESC, b'O'] => Decoded::Incomplete,
            [ESC, b'O', b, ..] => match self.arrow(*b) {
                Some(k) => Decoded::Key(k, 3),
                None => Decoded::Skip(3),
            },
            [first, ..] => Decoded::Key(*first, 1),
        }
    }
}

/// Keys from the terminal on `tty` and signals from `signals`: the real [`Source`].
#[derive(Debug)]
pub struct TerminalInput<'a> {
    tty: BorrowedFd<'a>,
    signals: &'a Signals,
    decoder: KeyDecoder,
    keys: VecDeque<(u8, u64)>,
    caught: VecDeque<Caught>,
    esc_since: Option<Instant>,
    /// The stream position after the last key returned.
    position: u64,
    wanted: Option<BorrowedFd<'a>>,
}

impl<'a> TerminalInput<'a> {
    /// Reads keys from `tty` (the game's stdin), mapping arrows onto `keys`; the first byte
    /// read is at stream position `start` (see [`Source::position`]).
    pub fn new(tty: BorrowedFd<'a>, signals: &'a Signals, keys: [u8; 7], start: u64) -> Self {
        Self::with_wanted(tty, signals, keys, start, None)
    }

    /// As [`TerminalInput::new`], also reporting [`Event::CheckpointWanted`] while `wanted`
    /// is readable.
    pub fn with_wanted(
        tty: BorrowedFd<'a>,
        signals: &'a Signals,
        keys: [u8; 7],
        start: u64,
        wanted: Option<BorrowedFd<'a>>,
    ) -> Self {
        Self {
            tty,
            signals,
            decoder: KeyDecoder::starting_at(keys, start),
            keys: VecDeque::new(),
            caught: VecDeque::new(),
            esc_since: None,
            position: start,
            wanted,
        }
    }

    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.tty)
    }
}

impl Source for TerminalInput<'_> {
    fn position(&self) -> Option<u64> {
        Some(self.position)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, InputError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.caught.extend(self.signals.take());
            if let Some(caught) = self.caught.pop_front() {
                return Ok(Event::Signal(caught));
            }
            if let Some((k, end)) = self.keys.pop_front() {
                self.position = end;
                return Ok(Event::Key(k));
            }
            let now = Instant::now();
            // A pending ESC becomes a key once ESC_DELAY has passed without its sequence.
            let esc_deadline = self.esc_since.map(|t| t + ESC_DELAY);
            if esc_deadline.is_some_and(|d| now >= d) {
                self.esc_since = None;
                self.decoder.flush(&mut self.keys);
                continue;
            }
            if deadline.is_some_and(|d| now >= d) {
                return Ok(Event::Timeout);
            }
            let wake_at = match (deadline, esc_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let poll_timeout = match wake_at {
                None => PollTimeout::NONE,
                // Round up so a wake-up never comes before the deadline and spins.
                Some(at) => {
                    let left = at.saturating_duration_since(now);
                    let ms = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.tty, PollFlags::POLLIN),
                PollFd::new(self.signals.wake_fd(), PollFlags::POLLIN),
                // Without a wanted descriptor the tty is polled twice: harmless.
                PollFd::new(self.wanted.unwrap_or(self.tty), PollFlags::POLLIN),
            ];
            match poll(&mut fds, poll_timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(InputError::Poll {
                        fd: self.fd(),
                        source,
                    });
                }
            }
            if self.wanted.is_some()
                && fds[2]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN))
            {
                return Ok(Event::CheckpointWanted);
            }
            let tty_events = fds[0].revents().unwrap_or(PollFlags::empty());
            if !tty_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
            let mut buf = [0u8; 256];
            match nix::unistd::read(self.tty, &mut buf) {
                Ok(0) | Err(Errno::EIO) => return Ok(Event::Eof),
                Ok(n) => {
                    self.decoder.feed(&buf[..n], &mut self.keys);
                    self.esc_since = self.decoder.has_pending().then(Instant::now);
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(source) => {
                    return Err(InputError::Read {
                        fd: self.fd(),
                        source,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DEFAULT_KEYS;

    fn decode_all(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut d = KeyDecoder::new(DEFAULT_KEYS);
        let mut out: VecDeque<u8> = VecDeque::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        (out.into_iter().collect(), d.has_pending())
    }

    #[test]
    fn plain_bytes_pass_through_unchanged() {
        assert_eq!(
            decode_all(&[b"jkl pqn\x0c\r"]),
            (b"jkl pqn\x0c\r".to_vec(), false)
        );
    }

    #[test]
    fn arrows_map_to_left_rotate_right_down_of_the_key_map() {
        let (keys, pending) = decode_all(&[b"\x1b[D\x1b[A\x1b[C\x1b[B"]);
        assert_eq!(keys, b"jkln".to_vec());
        assert!(!pending);
    }

    #[test]
    fn arrows_follow_a_custom_key_map() {
        let mut d = KeyDecoder::new(*b"adwsxqz");
        let mut out: VecDeque<u8> = VecDeque::new();
        d.feed(b"\x1bOD\x1bOA\x1bOC\x1bOB", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), b"adwz".to_vec());
    }

    #[test]
    fn sequences_split_across_reads_are_joined() {
        assert_eq!(
            decode_all(&[b"j\x1b", b"[", b"1;5", b"Cl"]),
            (b"jll".to_vec(), false)
        );
    }

    #[test]
    fn other_sequences_are_swallowed() {
        // F1 (SS3 P), F5 (CSI 15~), a cursor position report.
        assert_eq!(
            decode_all(&[b"\x1bOPj\x1b[15~k\x1b[12;40Rl"]),
            (b"jkl".to_vec(), false)
        );
    }

    #[test]
    fn a_trailing_esc_waits_then_flushes_as_a_key() {
        let mut d = KeyDecoder::new(DEFAULT_KEYS);
        let mut out: VecDeque<u8> = VecDeque::new();
        d.feed(b"j\x1b", &mut out);
        assert_eq!(out, [b'j']);
        assert!(d.has_pending());
        d.flush(&mut out);
        assert_eq!(out, [b'j', ESC]);
        assert!(!d.has_pending());
    }

    #[test]
    fn every_key_carries_the_position_after_its_bytes() {
        let mut d = KeyDecoder::starting_at(DEFAULT_KEYS, 100);
        let mut out: VecDeque<(u8, u64)> = VecDeque::new();
        // j, an arrow split across reads, F1 (ignored: its bytes go with the next key), l.
        d.feed(b"j\x1b[", &mut out);
        d.feed(b"D\x1bOPl", &mut out);
        assert_eq!(out, [(b'j', 101), (b'j', 104), (b'l', 108)]);
        // A lone ESC flushed counts one byte; what followed it is decoded on.
        let mut out: VecDeque<(u8, u64)> = VecDeque::new();
        d.feed(b"\x1b", &mut out);
        d.flush(&mut out);
        d.feed(b"k", &mut out);
        assert_eq!(out, [(ESC, 109), (b'k', 110)]);
    }

    #[test]
    fn esc_then_a_plain_key_gives_both() {
        assert_eq!(decode_all(&[b"\x1bj"]), (vec![ESC, b'j'], false));
    }
}
