//! The headless contract (DESIGN.md, "Contracts"): a script of inputs in, one JSON line out.
//!
//! Each script byte is one input: `.` is a timer expiry, `\n` and `\r` are skipped, any other
//! byte is a key. Inputs after game over or quit are not consumed. [`play_stream`] is what the
//! worker runs ([`crate::worker`]): the script as it arrives, a checkpoint after every input;
//! the other functions are the same rules on a plain state, for tests and tools.

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::options::Options;
use crate::rules::{self, Input, Mode, Outcome};
use crate::state::{B_COLS, GameState};
use crate::store::Store;

/// The script byte meaning "the fall timer expired".
pub const TIMER_BYTE: u8 = b'.';

/// The input a script byte stands for; `None` for the skipped newlines.
pub fn input_of(byte: u8) -> Option<Input> {
    match byte {
        b'\n' | b'\r' => None,
        TIMER_BYTE => Some(Input::Timer),
        c => Some(Input::Key(c)),
    }
}

/// A fresh headless game for `options` (level, keys, preview) and `seed`.
pub fn start(options: &Options, seed: u64) -> GameState {
    rules::new_game(seed, options.level, options.keys, options.preview)
}

/// Applies one script byte; `None` for a skipped newline.
pub fn feed_byte(state: &mut GameState, byte: u8) -> Option<Outcome> {
    input_of(byte).map(|input| rules::step(state, input, Mode::Headless))
}

/// Applies every byte of `script`; returns how many inputs were consumed.
pub fn feed(state: &mut GameState, script: &[u8]) -> u64 {
    let before = state.inputs;
    for &b in script {
        if state.is_finished() {
            break;
        }
        feed_byte(state, b);
    }
    state.inputs.wrapping_sub(before)
}

/// A new game for `options` and `seed` with all of `script` applied.
pub fn run_script(options: &Options, seed: u64, script: &[u8]) -> GameState {
    let mut state = start(options, seed);
    feed(&mut state, script);
    state
}

/// The playfield (rows 1-20, columns 1-10) as 20 strings, `#` locked and `.` empty.
pub fn board_rows(state: &GameState) -> Vec<String> {
    (1..=20)
        .map(|row| {
            let start = row * B_COLS + 1;
            state.board[start..start + B_COLS - 2]
                .iter()
                .map(|&c| if c != 0 { '#' } else { '.' })
                .collect()
        })
        .collect()
}

/// The contract's JSON line (without the newline), keys in the contract's order.
pub fn to_json(state: &GameState) -> String {
    let mut s = String::with_capacity(400);
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{{\"seed\":{},\"level\":{},\"points\":{},\"score\":{},\"curshape\":{},\"nextshape\":{},\
         \"pos\":{},\"inputs\":{},\"game_over\":{},\"quit\":{},\"board\":[",
        state.seed,
        state.level,
        state.points,
        u64::from(state.points) * u64::from(state.level),
        state.curshape,
        state.nextshape,
        state.pos,
        state.inputs,
        state.is_game_over(),
        state.has_quit(),
    );
    for (i, row) in board_rows(state).iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(row);
        s.push('"');
    }
    s.push_str("]}");
    s
}

/// Plays the script bytes `script` yields, as they arrive, on the game in `store`, with a
/// commit (a checkpoint) after every input consumed, until the script ends or the game is
/// finished (what follows then is not consumed, or not even read).
///
/// The first `skip` inputs (newlines do not count) are passed over: a restored game that
/// reads its script from the start again has consumed them before.
///
/// With `wake`, the script is a stream on `wake.input` that may keep the game waiting: while
/// it waits, `wake.wanted` (hslib's checkpoint-wanted descriptor) readable means a spare
/// connected, and a checkpoint of the unchanged state brings it up to date.
pub fn play_stream<S: Store, R: Read>(
    store: &mut S,
    script: &mut R,
    skip: u64,
    wake: Option<Wake<'_>>,
) -> anyhow::Result<()> {
    let mut skip = skip;
    let mut buf = [0u8; 4096];
    loop {
        if store.state()?.is_finished() {
            return Ok(());
        }
        if let Some(w) = &wake
            && w.wait()?
        {
            store.commit()?;
            continue;
        }
        let n = match script.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the script")),
        };
        for &byte in &buf[..n] {
            if input_of(byte).is_none() {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let state = store.state()?;
            if state.is_finished() {
                return Ok(());
            }
            feed_byte(state, byte);
            store.commit()?;
        }
    }
}

/// A script stream to wait on and hslib's checkpoint-wanted descriptor (see [`play_stream`]).
#[derive(Clone, Copy, Debug)]
pub struct Wake<'a> {
    /// The descriptor the script is read from.
    pub input: BorrowedFd<'a>,
    /// Readable while a checkpoint is wanted.
    pub wanted: BorrowedFd<'a>,
}

impl Wake<'_> {
    /// Waits until the script is readable (false) or a checkpoint is wanted (true).
    fn wait(&self) -> anyhow::Result<bool> {
        loop {
            let mut fds = [
                PollFd::new(self.input, PollFlags::POLLIN),
                PollFd::new(self.wanted, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(anyhow::Error::new(e).context("cannot wait for the script")),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                return Ok(true);
            }
            if ready(&fds[0]) {
                return Ok(false);
            }
        }
    }
}

/// Opens the script: the file, or stdin when there is none or it is `-`. The second value
/// is true for a file, which a restored game reads from its start again.
pub fn open_script(path: Option<&Path>) -> anyhow::Result<(Box<dyn Read>, bool)> {
    match path {
        Some(p) if p != Path::new("-") => {
            let file = std::fs::File::open(p)
                .with_context(|| format!("cannot read script {}", p.display()))?;
            // Opening a directory succeeds; only its first read would fail, naming no file.
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                anyhow::bail!("cannot read script {}: it is a directory", p.display());
            }
            Ok((Box::new(file), true))
        }
        // Unbuffered (a duplicate of fd 0): a game that polls its stdin before reading
        // ([`Wake`]) must not have bytes waiting in a buffer the poll cannot see.
        _ => {
            let fd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot duplicate stdin")?;
            Ok((Box::new(std::fs::File::from(fd)), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DEFAULT_KEYS;
    use crate::store::Recording;

    fn game() -> GameState {
        rules::new_game(42, 3, DEFAULT_KEYS, false)
    }

    /// Yields its bytes a few at a time and fails the test if read after it was told to stop.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
        reads_left: Option<usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(n) = &mut self.reads_left {
                assert!(*n > 0, "read after the game was finished");
                *n -= 1;
            }
            let n = self.bytes.len().min(self.chunk).min(buf.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn one_commit_per_input_newlines_skipped_same_end_as_feed() {
        let script = b"kjj .\nlllll .\r\n..";
        let mut store = Recording::new(game());
        let mut r = Trickle {
            bytes: script,
            chunk: 3,
            reads_left: None,
        };
        play_stream(&mut store, &mut r, 0, None).unwrap();
        let inputs: Vec<u64> = store.commits.iter().map(|s| s.inputs).collect();
        assert_eq!(inputs, (1..=14).collect::<Vec<u64>>());
        let mut plain = game();
        feed(&mut plain, script);
        assert_eq!(store.state, plain);
    }

    #[test]
    fn skipped_inputs_are_passed_over_without_commits() {
        let script = b"kjj .\nlllll .\n..";
        let mut full = game();
        feed(&mut full, script);
        for skip in 0..=14u64 {
            // The state after `skip` inputs, as a restore would bring it back.
            let mut store = {
                let mut s = game();
                let mut n = 0;
                let prefix: Vec<u8> = script
                    .iter()
                    .copied()
                    .take_while(|&b| {
                        if n == skip {
                            return false;
                        }
                        n += u64::from(input_of(b).is_some());
                        true
                    })
                    .collect();
                feed(&mut s, &prefix);
                Recording::new(s)
            };
            let mut r = Trickle {
                bytes: script,
                chunk: 5,
                reads_left: None,
            };
            play_stream(&mut store, &mut r, skip, None).unwrap();
            assert_eq!(store.state, full, "skip {skip}");
            assert_eq!(store.commits.len() as u64, 14 - skip, "skip {skip}");
        }
    }

    #[test]
    fn nothing_is_read_or_committed_after_quit() {
        let mut store = Recording::new(game());
        // One read brings "jq": the rest must never be asked for.
        let mut r = Trickle {
            bytes: b"jqjjjj",
            chunk: 2,
            reads_left: Some(1),
        };
        play_stream(&mut store, &mut r, 0, None).unwrap();
        assert!(store.state.has_quit());
        assert_eq!(store.commits.len(), 2);
        assert_eq!(store.state.inputs, 2);
    }
}
