//! The headless contract (DESIGN.md, "Contracts"): a script of inputs in, one JSON line out.
//!
//! Each script byte is one input: `.` is a timer expiry, `\n` and `\r` are skipped, any other
//! byte is a key. Inputs after game over or quit are not consumed. [`play_stream`] is what the
//! worker runs ([`crate::worker`]): the script as it arrives, a checkpoint after every input;
//! the other functions are the same rules on a plain state, for tests and tools.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use anyhow::Context as _;

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
pub fn play_stream<S: Store, R: Read>(
    store: &mut S,
    script: &mut R,
    skip: u64,
) -> anyhow::Result<()> {
    let mut skip = skip;
    let mut buf = [0u8; 4096];
    loop {
        if store.state()?.is_finished() {
            return Ok(());
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

/// Opens the script: the file, or stdin when there is none or it is `-`. The second value
/// is true for a file, which a restored game reads from its start again.
pub fn open_script(path: Option<&Path>) -> anyhow::Result<(Box<dyn Read>, bool)> {
    match path {
        Some(p) if p != Path::new("-") => {
            let file = std::fs::File::open(p)
                .with_context(|| format!("cannot read script {}", p.display()))?;
            Ok((Box::new(file), true))
        }
        _ => Ok((Box::new(std::io::stdin().lock()), false)),
    }
}
