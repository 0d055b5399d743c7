//! `failover-harness run`: a headless game played by a primary with a spare, killed and
//! resumed at chosen points, whose output must be byte for byte the uninterrupted game's.
//!
//! An adapter over the [`Engine`] on games whose input and output are pipes: the script is
//! read as it goes (never whole: it may be endless), its inputs (the bytes but newlines) are
//! typed into the engine's input log, and the engine gives them to the primary while its
//! spare holds a checkpoint. At a kill point N the primary is SIGKILLed right after the Nth
//! input was written to it (an axe: if the spare is not synced yet, as at 0, it waits for the
//! sync). Any death of the primary, whoever caused it, is a failover: the promoted spare gets
//! the logged inputs its state has not consumed and the rest of the script. Once the script
//! has ended and every input was given, the primary's input ends and the game prints its
//! line. The run fails if the game is lost, or if the game ended before its input did without
//! having quit or being over.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hslib::Mode;
use nix::sys::signal::Signal;

use crate::engine::input_log::Script;
use crate::engine::local::LocalLauncher;
use crate::engine::{Axe, End, Engine, Event, InputPolicy};
use crate::game::{Io, Setup};
use crate::killplan;
use crate::link::{Link, Transport};

/// Stats lines every millisecond: the harness learns of a spare's sync at once.
const STATS_MS: u64 = 1;
/// Inputs read from the script ahead of what the primary has taken.
const AHEAD: usize = 64 * 1024;
/// The longest the run waits for the games before it looks at the script again.
const TICK: Duration = Duration::from_millis(50);

/// What `run` was asked for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The game's seed.
    pub seed: u64,
    /// `-l`.
    pub level: Option<OsString>,
    /// `-k`.
    pub keys: Option<OsString>,
    /// The script.
    pub script: PathBuf,
    /// `--kill-after`.
    pub kill_after: Vec<u64>,
    /// `--kill-random K --kill-seed S`.
    pub kill_random: Option<(u64, u64)>,
    /// unix or tcp.
    pub transport: Transport,
    /// async or sync.
    pub mode: Mode,
    /// How long the primary may be silent before it is killed as hung (`None`: never).
    pub hang: Option<Duration>,
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What the game printed: the headless JSON line.
    pub output: Vec<u8>,
    /// Failovers (promotions of a spare).
    pub failovers: u64,
    /// Per failover, milliseconds from the SIGKILL (or the death being seen) until the
    /// promoted spare's resumed line.
    pub rto_ms: Vec<f64>,
    /// The game's `--stats` line of the process that finished it, if it wrote one.
    pub game_stats: Option<String>,
}

impl Outcome {
    /// The `--stats` file's line: the game's stats plus `"failovers"` and `"rto_ms"`.
    pub fn stats_line(&self) -> String {
        let game = self
            .game_stats
            .as_deref()
            .map(str::trim)
            .and_then(|s| s.strip_suffix('}'))
            .map(|s| format!("{s},"))
            .unwrap_or_else(|| "{".to_owned());
        let rto: Vec<String> = self.rto_ms.iter().map(|ms| format!("{ms:.3}")).collect();
        format!(
            "{game}\"failovers\":{},\"rto_ms\":[{}]}}\n",
            self.failovers,
            rto.join(",")
        )
    }
}

/// The inputs in the script at `path`, counted without holding it (for `--kill-random`,
/// which draws its points over them: a regular file only).
fn count_inputs(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read script {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "--kill-random draws its points over the script's length, and {} is not a regular \
             file",
            path.display()
        );
    }
    let mut script = Script::open(path)?;
    let mut n = 0u64;
    loop {
        let chunk = script.read(AHEAD)?;
        if chunk.is_empty() {
            return Ok(n);
        }
        n += chunk.len() as u64;
    }
}

/// Plays the script with a primary and a spare, killing the primary at the kill points.
pub fn run(opts: &RunOptions) -> anyhow::Result<Outcome> {
    // A signal ends the run through the normal path, so its games stop and its session
    // directory goes (only SIGKILL leaves it, for the next session to sweep).
    let signals = crate::sys::signal_pipe(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])
        .context("cannot route signals")?;
    let script = Script::open(&opts.script)?;
    let total = match opts.kill_random {
        Some(_) => count_inputs(&opts.script)?,
        None => 0,
    };
    let kills = killplan::plan(&opts.kill_after, opts.kill_random, total);
    let mut args: Vec<OsString> = vec![
        "--headless".into(),
        "--seed".into(),
        opts.seed.to_string().into(),
    ];
    if let Some(l) = &opts.level {
        args.extend(["-l".into(), l.clone()]);
    }
    if let Some(k) = &opts.keys {
        args.extend(["-k".into(), k.clone()]);
    }
    let link = Link::new(opts.transport)?;
    let setup = Setup::new(args, link, opts.mode, STATS_MS)?;
    let (mut engine, _) =
        Engine::start(LocalLauncher::new(setup, Io::Pipes), InputPolicy::AfterSync)?;
    engine.set_hang_deadline(opts.hang);
    let mut r = Runner {
        engine,
        signals,
        script,
        kills,
        asked: opts.kill_after.iter().copied().collect(),
        typed: 0,
        axe_waiting: false,
        input_ended: false,
        output: Vec::new(),
        dead_output: Vec::new(),
        rto_ms: Vec::new(),
    };
    r.play()
}

/// The run in progress.
struct Runner {
    // The engine first: its games stop before anything else goes.
    engine: Engine<LocalLauncher>,
    signals: std::os::fd::OwnedFd,
    script: Script,
    /// Kill points still to come.
    kills: BTreeSet<u64>,
    /// The kill points asked for by number (`--kill-after`): one never reached is an error.
    asked: BTreeSet<u64>,
    /// Inputs typed into the engine's log.
    typed: u64,
    /// An axe waits for the spare's sync: nothing more is typed until it fell.
    axe_waiting: bool,
    input_ended: bool,
    /// What the current primary printed.
    output: Vec<u8>,
    /// What a primary printed before it died (its result, if its successor prints none).
    dead_output: Vec<u8>,
    rto_ms: Vec<f64>,
}

impl Runner {
    fn play(&mut self) -> anyhow::Result<Outcome> {
        while !self.engine.ended() {
            let mut events = Vec::new();
            self.act(&mut events)?;
            self.handle(events);
            if self.engine.ended() {
                break;
            }
            // The script is waited on while more of it is wanted (a file is always ready).
            let wanted = self.wants_script();
            let script = self.script.fd();
            let mut extra = vec![self.signals.as_fd()];
            if wanted {
                extra.push(script);
            }
            let (ready, events) = self.engine.poll(&extra, TICK)?;
            if ready[0] {
                let mut buf = [0u8; 16];
                let n = nix::unistd::read(&self.signals, &mut buf).unwrap_or(0);
                if let Some(&sig) = buf[..n].first() {
                    let name = Signal::try_from(i32::from(sig))
                        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
                    bail!("stopped by {name}: the games are ended and the session cleaned up");
                }
            }
            self.handle(events);
        }
        match self.engine.end() {
            Some(End::Lost(why)) => bail!("{why}"),
            Some(End::Finished) | None => self.finished(),
        }
    }

    /// Kills at a kill point reached, types what the script has next, or ends the input.
    fn act(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        loop {
            // A game that has ended reads no more and has no spare to fail over to: the kill
            // points still to come are not reached (the result says so).
            if self.axe_waiting || self.engine.ended() || self.engine.game_over() {
                return Ok(());
            }
            let next_kill = self.kills.first().copied();
            let written = self.engine.written() as u64;
            if next_kill == Some(self.typed) && written == self.typed {
                self.kills.pop_first();
                tracing::info!(after = self.typed, "kill point");
                if self.engine.axe(events)? == Axe::Pending {
                    self.axe_waiting = true;
                }
                continue;
            }
            if self.wants_script() {
                let room = next_kill.map_or(u64::MAX, |k| k.saturating_sub(self.typed));
                let max = usize::try_from(room).unwrap_or(AHEAD).min(AHEAD);
                let inputs = self.script.read(max)?;
                if !inputs.is_empty() {
                    self.typed += inputs.len() as u64;
                    self.engine.type_bytes(&inputs)?;
                    continue;
                }
            }
            if self.script.ended() && !self.input_ended && next_kill.is_none_or(|k| k > self.typed)
            {
                self.input_ended = true;
                tracing::info!(inputs = self.typed, "the script has ended");
                self.engine.end_input()?;
            }
            return Ok(());
        }
    }

    /// More of the script is wanted now: not at a kill point, not far ahead of the primary.
    fn wants_script(&self) -> bool {
        let at_kill = self.kills.first() == Some(&self.typed);
        let backlog = self.typed.saturating_sub(self.engine.written() as u64);
        !self.script.ended() && !self.axe_waiting && !at_kill && backlog < AHEAD as u64
    }

    fn handle(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Output(bytes) => self.output.extend_from_slice(&bytes),
                Event::Promoted { after_ms, .. } => {
                    self.rto_ms.push(after_ms);
                    if !self.output.is_empty() {
                        self.dead_output = std::mem::take(&mut self.output);
                    }
                }
                Event::Axed { .. } => self.axe_waiting = false,
                _ => {}
            }
        }
    }

    /// The game ended on purpose: its line is the result, if the game quit, was over, or
    /// consumed every input of the script.
    fn finished(&mut self) -> anyhow::Result<Outcome> {
        let output = if self.output.is_empty() {
            std::mem::take(&mut self.dead_output)
        } else {
            std::mem::take(&mut self.output)
        };
        if output.is_empty() {
            // Its spare was told the game is over (and exited), then it died before printing.
            bail!(
                "the game finished, but its process died before it printed the result: the game is lost"
            );
        }
        let text = String::from_utf8_lossy(&output);
        let line: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("the game's result is not a JSON line: {text:?}"))?;
        let flag = |k: &str| line.get(k).and_then(serde_json::Value::as_bool) == Some(true);
        let consumed = line.get("inputs").and_then(serde_json::Value::as_u64);
        let whole = self.script.ended() && consumed == Some(self.typed);
        let consumed_text = consumed.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let unreached: Vec<u64> = self
            .kills
            .iter()
            .copied()
            .filter(|k| self.asked.contains(k))
            .collect();
        let list = |ks: &[u64]| ks.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let beyond: Vec<u64> = unreached
            .iter()
            .copied()
            .filter(|&k| self.script.ended() && k > self.typed)
            .collect();
        // The game's line is still the uninterrupted game's: the run stands, with a warning.
        if !beyond.is_empty() {
            eprintln!(
                "failover-harness: warning: --kill-after {}: the script has only {} inputs, so \
                 no kill happened there",
                list(&beyond),
                self.typed
            );
        }
        let within: Vec<u64> = unreached
            .iter()
            .copied()
            .filter(|k| !beyond.contains(k))
            .collect();
        if !within.is_empty() {
            eprintln!(
                "failover-harness: warning: --kill-after {}: the game ended after {} inputs, \
                 so no kill happened there",
                list(&within),
                consumed_text
            );
        }
        if !(flag("game_over") || flag("quit") || whole) {
            let of = if self.script.ended() {
                format!("{}", self.typed)
            } else {
                format!("more than {}", self.typed)
            };
            bail!(
                "the game ended after {consumed_text} of {of} inputs without quitting or being over"
            );
        }
        Ok(Outcome {
            output,
            failovers: self.rto_ms.len() as u64,
            rto_ms: self.rto_ms.clone(),
            game_stats: self.engine.final_stats(),
        })
    }
}
