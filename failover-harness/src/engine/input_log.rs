//! What every failover driver needs around the game's input, shared by the local [`Engine`]
//! (`play`, `run`, `bench-failover`) and the cluster client (`failover-harness client`):
//!
//! - [`InputLog`]: the numbered input log (every byte typed, in order) and how much of it the
//!   current game has been given; a promoted game is given the log again from the position
//!   its restored state accounts for ([`InputLog::resume_at`]), so nothing is lost and
//!   nothing applied twice;
//! - [`InputPolicy`]: when input may be given (at once, or only while a spare holds a
//!   checkpoint);
//! - [`recovery_ms`]: a failover's recovery time, from the death (or the kill) to the promoted
//!   game's first byte;
//! - [`Script`]: a headless script read as it goes (one input per byte, newlines skipped, never
//!   read whole: it may be a FIFO or endless).
//!
//! [`Engine`]: super::Engine

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// When the primary is given input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputPolicy {
    /// As soon as it is typed (a person playing).
    Immediate,
    /// Only while the spare holds a checkpoint (scripted runs: a death then always finds a
    /// spare that can take over).
    AfterSync,
}

impl InputPolicy {
    /// Whether input may be given now, the spare holding a checkpoint or not.
    pub fn allows(self, spare_synced: bool) -> bool {
        self == InputPolicy::Immediate || spare_synced
    }
}

/// The numbered input log and how far the current game has been given it. Positions are
/// byte offsets in the log (a headless game's inputs, a terminal game's bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputLog {
    bytes: Vec<u8>,
    given: usize,
}

impl InputLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends typed bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Every byte typed, in order.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes were typed.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Nothing typed yet.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How much of the log the current game has been given.
    pub fn given(&self) -> usize {
        self.given
    }

    /// What the current game has not been given yet.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.given..]
    }

    /// The current game took `n` more bytes (never past the end of the log).
    pub fn gave(&mut self, n: usize) {
        self.given = (self.given + n).min(self.bytes.len());
    }

    /// A new game (a promoted spare) whose state accounts for the first `position` bytes
    /// continues from there: the rest of the log is pending again. A position past the end
    /// (it cannot account for what was never typed) counts as the end. Returns how many
    /// bytes will be replayed.
    pub fn resume_at(&mut self, position: u64) -> usize {
        self.given = usize::try_from(position)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        self.bytes.len() - self.given
    }
}

/// A failover's recovery time in milliseconds: from `since` (the kill, or when the death was
/// seen) to `first_byte` (the promoted game's first byte at the user's end).
pub fn recovery_ms(since: Instant, first_byte: Instant) -> f64 {
    first_byte.saturating_duration_since(since).as_secs_f64() * 1000.0
}

/// A headless script, read as the game goes: one input per byte, `\n` and `\r` skipped.
#[derive(Debug)]
pub struct Script {
    file: File,
    path: PathBuf,
    ended: bool,
}

impl Script {
    /// Opens the script at `path` (a FIFO opens once its writer does; reads are then
    /// non-blocking: a slow writer may keep the game waiting, never its driver).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file =
            File::open(path).with_context(|| format!("cannot read script {}", path.display()))?;
        let flags = fcntl(&file, FcntlArg::F_GETFL)
            .with_context(|| format!("cannot read script {}", path.display()))?;
        fcntl(
            &file,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .with_context(|| format!("cannot read script {} without blocking", path.display()))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            ended: false,
        })
    }

    /// Whether the script has ended (its end was read).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The descriptor, to poll for more.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Up to `max` inputs (`max` > 0): some, or none when none are there now or the script
    /// has ended.
    pub fn read(&mut self, max: usize) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        while !self.ended {
            let n = match self.file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read script {}", self.path.display()));
                }
            };
            if n == 0 {
                self.ended = true;
            }
            buf.truncate(n);
            buf.retain(|b| !matches!(b, b'\n' | b'\r'));
            if !buf.is_empty() {
                return Ok(buf);
            }
            buf.resize(max, 0);
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promoted_game_is_given_the_log_from_the_position_its_state_accounts_for() {
        let mut log = InputLog::new();
        log.push(b"jkl..");
        assert_eq!(log.pending(), b"jkl..");
        log.gave(4);
        assert_eq!(log.pending(), b".");
        log.push(b"q");
        // The promoted game's state accounts for 2 inputs: 4 are replayed.
        assert_eq!(log.resume_at(2), 4);
        assert_eq!(log.pending(), b"l..q");
        // A position past the end is the end: nothing typed twice, nothing invented.
        assert_eq!(log.resume_at(99), 0);
        assert_eq!(log.given(), 6);
        log.gave(10);
        assert_eq!(log.given(), 6);
    }

    #[test]
    fn after_sync_input_waits_for_the_spare_and_immediate_input_does_not() {
        assert!(InputPolicy::Immediate.allows(false));
        assert!(!InputPolicy::AfterSync.allows(false));
        assert!(InputPolicy::AfterSync.allows(true));
    }

    #[test]
    fn a_script_is_read_as_inputs_without_newlines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s");
        std::fs::write(&path, b"jk\n\r..\nl").unwrap_or_else(|e| panic!("{e}"));
        let mut s = Script::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut all = Vec::new();
        loop {
            let chunk = s.read(2).unwrap_or_else(|e| panic!("{e}"));
            if chunk.is_empty() {
                break;
            }
            all.extend(chunk);
        }
        assert_eq!(all, b"jk..l");
        assert!(s.ended());
    }
}
