//! The headless client's script: one input per byte (newlines skipped, as `tetris
//! --headless`), `--pace-us` apart, read as it goes ([`Script`], shared with `run`); and its
//! result, the game's final JSON line, printed as the game printed it.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::HeadlessOptions;
use crate::engine::input_log::Script;

/// Inputs read at once when there is no pace.
const AHEAD: usize = 4096;

/// The script, paced.
#[derive(Debug)]
pub struct Feeder {
    script: Script,
    pace: Duration,
    next_at: Option<Instant>,
    /// Axe the leader right after this many inputs were given.
    axes: BTreeSet<u64>,
}

impl Feeder {
    /// The script of `opts`; `axe_after`: the hidden kill points.
    pub fn new(opts: &HeadlessOptions, axe_after: &[u64]) -> anyhow::Result<Self> {
        Ok(Self {
            script: Script::open(&opts.script)?,
            pace: opts.pace,
            next_at: None,
            axes: axe_after.iter().copied().collect(),
        })
    }

    /// When the next input is due, if one is waited for.
    pub fn next_at(&self) -> Option<Instant> {
        if self.script.ended() {
            None
        } else {
            self.next_at
        }
    }

    /// A new leader: the pace goes on from now.
    pub fn new_leader(&mut self) {
        self.next_at = None;
    }

    /// Whether the leader is to be axed now, `typed` inputs having been given (each kill
    /// point once).
    pub fn axe_due(&mut self, typed: u64) -> bool {
        // Points behind (a batch read past them) are not reached any more.
        while self.axes.first().is_some_and(|&k| k < typed) {
            self.axes.pop_first();
        }
        if self.axes.first() == Some(&typed) {
            self.axes.pop_first();
            return true;
        }
        false
    }

    /// The next inputs if they are due (one with a pace, a batch without, never past the
    /// next kill point), `typed` inputs having been read so far.
    pub fn next_inputs(&mut self, typed: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let now = Instant::now();
        if self.next_at.is_some_and(|at| now < at) || self.script.ended() {
            return Ok(None);
        }
        let max = if self.pace.is_zero() {
            let room = self
                .axes
                .first()
                .map_or(u64::MAX, |&k| k.saturating_sub(typed));
            usize::try_from(room).unwrap_or(AHEAD).clamp(1, AHEAD)
        } else {
            1
        };
        let inputs = self.script.read(max)?;
        if inputs.is_empty() {
            return Ok(None);
        }
        self.next_at = Some(now + self.pace);
        Ok(Some(inputs))
    }

    /// The script has ended (every input read).
    pub fn ended(&self) -> bool {
        self.script.ended()
    }
}

/// Prints the game's result line on stdout, exactly as the game wrote it (it must be one JSON
/// line, as `tetris --headless` prints).
pub fn print_result(out: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(out);
    if text.trim().is_empty() {
        bail!("the game finished without printing its result");
    }
    let _: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the game's result is not a JSON line: {text:?}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out)
        .and_then(|()| stdout.flush())
        .context("cannot write the result to stdout")
}
