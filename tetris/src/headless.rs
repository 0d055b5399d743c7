//! The headless contract (DESIGN.md, "Contracts"): a script of inputs in, one JSON line out.
//!
//! Each script byte is one input: `.` is a timer expiry, `\n` and `\r` are skipped, any other
//! byte is a key. Inputs after game over or quit are not consumed. The pieces here are library
//! functions so later issues can drive the same game through checkpoints byte by byte.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::options::Options;
use crate::rng;
use crate::rules::{self, Input, Mode, Outcome};
use crate::state::{B_COLS, GameState};

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

/// Reads the script: the file, or stdin when there is none or it is `-`.
pub fn read_script(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match path {
        Some(p) if p != Path::new("-") => {
            buf =
                std::fs::read(p).with_context(|| format!("cannot read script {}", p.display()))?;
        }
        _ => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read the script from stdin")?;
        }
    }
    Ok(buf)
}

/// `tetris --headless`: runs the script and prints the JSON line on stdout.
///
/// Without `--seed` the seed comes from the OS; the JSON line reports it, so the run can be
/// repeated exactly.
pub fn run(options: &Options) -> anyhow::Result<ExitCode> {
    let seed = match options.seed {
        Some(s) => s,
        None => rng::os_seed().context("cannot draw a seed from /dev/urandom")?,
    };
    let script = read_script(options.script.as_deref())?;
    let state = run_script(options, seed, &script);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", to_json(&state)).context("cannot write the result to stdout")?;
    out.flush().context("cannot write the result to stdout")?;
    Ok(ExitCode::SUCCESS)
}
