//! `failover-harness run`: a headless game played by a primary with a spare, killed and
//! resumed at chosen points, whose output must be byte for byte the uninterrupted game's.
//!
//! The inputs (the script's bytes but newlines) go to the primary's stdin one at a time and
//! are logged. At a kill point N the primary is SIGKILLed right after the Nth input was
//! written, without waiting for anything. The spare, whose stream ended without a goodbye,
//! promotes itself and writes its resumed line (`inputs: M`, the inputs its restored state
//! consumed); the harness writes it the logged inputs M..N, starts a fresh spare, and goes on.
//! Before it sends the next input after a (re)start it waits until the primary reports the
//! new spare synchronised, so a kill always finds a spare holding a checkpoint, except a kill
//! at 0 (before the first input) that may come first: a kill while the spare is not known to
//! hold a checkpoint kills the spare too and starts the game afresh, replaying every input
//! sent. A game that ends (quit, game over) before the script does is not fed further; its
//! line is the result.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::game::{Game, Io, Role, Setup};
use crate::killplan;
use crate::link::{Link, SyncMode, Transport};
use crate::report::Line;

/// How long any one step may take before the run gives up (a spare's sync, a promotion, the
/// game's end after its stdin closed).
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Stats lines every millisecond: the harness learns of a spare's sync at once.
const STATS_MS: u64 = 1;
/// Spares that may end in a row before they are synchronised before the run gives up.
const MAX_LOST_SPARES: u32 = 5;

/// What `run` was asked for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The game's seed.
    pub seed: u64,
    /// `-l`.
    pub level: Option<u32>,
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
    pub mode: SyncMode,
}

/// How a run went.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What the game printed: the headless JSON line.
    pub output: Vec<u8>,
    /// Primaries killed.
    pub failovers: u64,
    /// Per failover, milliseconds from the SIGKILL until a game took input again (the
    /// promoted spare's resumed line, or a restarted game's start).
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

/// Plays the script with a primary and a spare, killing the primary at the kill points.
pub fn run(opts: &RunOptions) -> anyhow::Result<Outcome> {
    let script = std::fs::read(&opts.script)
        .with_context(|| format!("cannot read script {}", opts.script.display()))?;
    let inputs: Vec<u8> = script
        .into_iter()
        .filter(|b| !matches!(b, b'\n' | b'\r'))
        .collect();
    let kills = killplan::plan(&opts.kill_after, opts.kill_random, inputs.len() as u64);
    let mut args: Vec<OsString> = vec![
        "--headless".into(),
        "--seed".into(),
        opts.seed.to_string().into(),
    ];
    if let Some(l) = opts.level {
        args.extend(["-l".into(), l.to_string().into()]);
    }
    if let Some(k) = &opts.keys {
        args.extend(["-k".into(), k.clone()]);
    }
    let link = Link::new(opts.transport)?;
    let setup = Setup::new(args, link, opts.mode, STATS_MS)?;
    let mut r = Runner::start(setup, &inputs)?;
    r.play(&kills)
}

/// The run in progress.
struct Runner<'a> {
    setup: Setup,
    inputs: &'a [u8],
    primary: Game,
    primary_stats: PathBuf,
    spare: Option<Game>,
    spare_stats: PathBuf,
    /// The primary reported the current spare holding a checkpoint.
    synced: bool,
    /// The primary's session count before the current spare was started.
    floor: u64,
    sessions: u64,
    /// Whether the next input must wait for the spare's sync.
    needs_sync: bool,
    epoch: u64,
    processes: u64,
    failovers: u64,
    rto_ms: Vec<f64>,
}

/// What a kill led to.
enum AfterKill {
    /// A game goes on; inputs continue.
    Continue,
    /// The game had ended: its output.
    Finished(Vec<u8>, Option<String>),
}

impl<'a> Runner<'a> {
    fn start(setup: Setup, inputs: &'a [u8]) -> anyhow::Result<Self> {
        let (primary, primary_stats) = spawn(&setup, Role::Primary, 1, 1)?;
        let (spare, spare_stats) = spawn(&setup, Role::Spare, 1, 2)?;
        Ok(Self {
            setup,
            inputs,
            primary,
            primary_stats,
            spare: Some(spare),
            spare_stats,
            synced: false,
            floor: 0,
            sessions: 0,
            needs_sync: true,
            epoch: 1,
            processes: 2,
            failovers: 0,
            rto_ms: Vec::new(),
        })
    }

    fn play(&mut self, kills: &BTreeSet<u64>) -> anyhow::Result<Outcome> {
        let mut sent = 0usize;
        loop {
            if kills.contains(&(sent as u64)) {
                self.failovers += 1;
                if let AfterKill::Finished(output, stats) = self.kill(sent)? {
                    return Ok(self.outcome(output, stats));
                }
            }
            if sent == self.inputs.len() {
                break;
            }
            if self.needs_sync && !self.wait_synced()? {
                tracing::info!(sent, "the game ended while its spare was starting");
                break;
            }
            if !self.send(self.inputs[sent])? {
                tracing::info!(sent, "the game stopped reading: it has ended");
                break;
            }
            sent += 1;
        }
        let (output, stats) = self.finish(sent)?;
        Ok(self.outcome(output, stats))
    }

    fn outcome(&self, output: Vec<u8>, game_stats: Option<String>) -> Outcome {
        Outcome {
            output,
            failovers: self.failovers,
            rto_ms: self.rto_ms.clone(),
            game_stats,
        }
    }

    /// Reads whatever the games reported, waiting at most `timeout` for something.
    fn pump(&mut self, timeout: Duration) -> anyhow::Result<()> {
        {
            let mut fds = vec![
                PollFd::new(self.primary.status.fd(), PollFlags::POLLIN),
                PollFd::new(self.primary.pidfd(), PollFlags::POLLIN),
            ];
            if let Some(s) = &self.spare {
                fds.push(PollFd::new(s.pidfd(), PollFlags::POLLIN));
            }
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("polling the games failed"),
            }
        }
        for line in self
            .primary
            .status
            .read_lines()
            .context("reading the primary's status")?
        {
            if let Line::Stats(s) = line {
                self.sessions = s.sessions;
                self.synced = s.live && s.synced && s.sessions > self.floor;
                self.epoch = self.epoch.max(s.epoch);
            }
        }
        Ok(())
    }

    /// Waits until the primary reports the current spare holding a checkpoint; false when
    /// the game ended meanwhile (a game restored finished, or finished by the replay).
    fn wait_synced(&mut self) -> anyhow::Result<bool> {
        let deadline = Instant::now() + STEP_DEADLINE;
        let mut lost_spares = 0;
        while !self.synced {
            if let Some(status) = self.primary.exited()? {
                if status.success() {
                    return Ok(false);
                }
                bail!(
                    "the primary (pid {}) exited ({status}) while its spare was being \
                     synchronised: {}",
                    self.primary.pid(),
                    self.primary.stderr_tail()
                );
            }
            if let Some(s) = &mut self.spare
                && let Some(status) = s.exited()?
            {
                // A primary whose game just ended may let a spare connect and go without a
                // checkpoint; it exits next. Otherwise the spare failed: another one comes.
                lost_spares += 1;
                tracing::info!(%status, pid = s.pid(), "a spare ended before it was synchronised");
                if lost_spares > MAX_LOST_SPARES {
                    bail!(
                        "{lost_spares} spares in a row ended before they were synchronised, the \
                         last ({status}): {}",
                        s.stderr_tail()
                    );
                }
                self.start_spare()?;
            }
            if Instant::now() >= deadline {
                bail!("the spare was not synchronised within {STEP_DEADLINE:?}");
            }
            self.pump(Duration::from_millis(20))?;
        }
        self.needs_sync = false;
        Ok(true)
    }

    /// Writes one input to the primary; false when it no longer reads (its game ended).
    fn send(&mut self, byte: u8) -> anyhow::Result<bool> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let Some(stdin) = &self.primary.stdin else {
                return Ok(false);
            };
            match nix::unistd::write(stdin, &[byte]) {
                Ok(1) => return Ok(true),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EPIPE) => return Ok(false),
                Err(Errno::EAGAIN) => {
                    if Instant::now() >= deadline {
                        bail!("the primary read no input for {STEP_DEADLINE:?}");
                    }
                    let mut fds = [
                        PollFd::new(stdin.as_fd(), PollFlags::POLLOUT),
                        PollFd::new(self.primary.status.fd(), PollFlags::POLLIN),
                    ];
                    match poll(&mut fds, PollTimeout::from(100u16)) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => return Err(e).context("polling the primary's stdin failed"),
                    }
                    self.pump(Duration::ZERO)?;
                }
                Err(e) => return Err(e).context("writing an input to the primary failed"),
            }
        }
    }

    /// Writes `inputs` to the primary (a replay), all or until it stops reading.
    fn send_all(&mut self, inputs: &[u8]) -> anyhow::Result<()> {
        for &b in inputs {
            if !self.send(b)? {
                break;
            }
        }
        Ok(())
    }

    /// SIGKILLs the primary right after input `sent` and brings the game back.
    fn kill(&mut self, sent: usize) -> anyhow::Result<AfterKill> {
        let killed_at = Instant::now();
        if !self.synced {
            // A spare that holds no checkpoint cannot take over: it goes too.
            if let Some(mut spare) = self.spare.take() {
                spare.kill()?;
                spare.wait()?;
            }
        }
        self.primary.kill()?;
        let status = self.primary.wait()?;
        let printed = read_stdout(&mut self.primary)?;
        tracing::info!(sent, %status, synced = self.synced, "primary killed");
        if status.success() {
            // It had finished the game on its own before the kill came.
            return Ok(AfterKill::Finished(printed, self.read_primary_stats()));
        }
        let Some(mut spare) = self.spare.take() else {
            return self.restart(sent, killed_at);
        };
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let lines = spare
                .status
                .read_lines()
                .context("reading the spare's status")?;
            if let Some(resumed) = lines.iter().find_map(|l| match l {
                Line::Resumed(r) => Some(*r),
                Line::Stats(_) => None,
            }) {
                self.rto_ms.push(killed_at.elapsed().as_secs_f64() * 1000.0);
                tracing::info!(?resumed, "spare promoted");
                return self.promoted(spare, resumed.inputs, resumed.epoch, sent);
            }
            if let Some(status) = spare.exited()?
                && spare.status.at_eof()
            {
                tracing::info!(%status, "the spare ended without taking over");
                // A clean exit: the primary said goodbye, its game was over; if it printed
                // its line before the kill, that is the result.
                if status.success() && !printed.is_empty() {
                    return Ok(AfterKill::Finished(printed, None));
                }
                return self.restart(sent, killed_at);
            }
            if Instant::now() >= deadline {
                bail!("the spare neither took over nor exited within {STEP_DEADLINE:?}");
            }
            let mut fds = [
                PollFd::new(spare.status.fd(), PollFlags::POLLIN),
                PollFd::new(spare.pidfd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(20u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("polling the spare failed"),
            }
        }
    }

    /// The spare took over with `consumed` inputs: it gets the rest, and a spare of its own.
    fn promoted(
        &mut self,
        spare: Game,
        consumed: u64,
        epoch: u64,
        sent: usize,
    ) -> anyhow::Result<AfterKill> {
        self.primary = spare;
        std::mem::swap(&mut self.primary_stats, &mut self.spare_stats);
        self.sessions = 0;
        self.epoch = self.epoch.max(epoch);
        let from = usize::try_from(consumed).unwrap_or(usize::MAX).min(sent);
        self.send_all(&self.inputs[from..sent])?;
        self.start_spare()?;
        Ok(AfterKill::Continue)
    }

    /// Nobody can take over: a fresh game gets every input sent so far.
    fn restart(&mut self, sent: usize, killed_at: Instant) -> anyhow::Result<AfterKill> {
        self.epoch += 1;
        self.processes += 1;
        let (primary, stats) = spawn(&self.setup, Role::Primary, self.epoch, self.processes)?;
        self.primary = primary;
        self.primary_stats = stats;
        self.sessions = 0;
        self.rto_ms.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        tracing::info!(sent, epoch = self.epoch, "restarted from scratch");
        self.start_spare()?;
        if self.wait_synced()? {
            self.send_all(&self.inputs[..sent])?;
        }
        Ok(AfterKill::Continue)
    }

    fn start_spare(&mut self) -> anyhow::Result<()> {
        self.processes += 1;
        let (spare, stats) = spawn(&self.setup, Role::Spare, self.epoch, self.processes)?;
        self.spare = Some(spare);
        self.spare_stats = stats;
        // The spare opens a session after every one the primary has reported so far.
        self.floor = self.sessions;
        self.synced = false;
        self.needs_sync = true;
        Ok(())
    }

    fn read_primary_stats(&self) -> Option<String> {
        std::fs::read_to_string(&self.primary_stats).ok()
    }

    /// No more inputs: the primary's stdin closes, the game ends and prints its line.
    fn finish(&mut self, sent: usize) -> anyhow::Result<(Vec<u8>, Option<String>)> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            self.primary.stdin = None;
            while self.primary.exited()?.is_none() {
                if Instant::now() >= deadline {
                    bail!("the game did not end within {STEP_DEADLINE:?} after its input did");
                }
                self.pump(Duration::from_millis(20))?;
            }
            let status = self.primary.wait()?;
            let printed = read_stdout(&mut self.primary)?;
            if status.success() {
                // The spare has nothing to say: a connected one ends on the goodbye, one
                // still connecting would try for a while; it goes now either way.
                self.spare = None;
                return Ok((printed, self.read_primary_stats()));
            }
            if status.code().is_some() {
                bail!("the game failed ({status}): {}", self.primary.stderr_tail());
            }
            // Killed by someone else: fail over as for a kill of ours.
            self.failovers += 1;
            if let AfterKill::Finished(output, stats) = self.kill(sent)? {
                return Ok((output, stats));
            }
        }
    }
}

fn spawn(setup: &Setup, role: Role, epoch: u64, n: u64) -> anyhow::Result<(Game, PathBuf)> {
    let name = format!(
        "{n}-{}",
        if role == Role::Primary {
            "primary"
        } else {
            "spare"
        }
    );
    let stats = setup.link.path(&format!("{name}.stats"));
    let extra = [OsString::from("--stats"), stats.clone().into_os_string()];
    Ok((
        Game::spawn(setup, role, epoch, Io::Pipes, &name, &extra)?,
        stats,
    ))
}

/// Everything an exited game wrote to its stdout.
fn read_stdout(game: &mut Game) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(mut stdout) = game.stdout.take() {
        stdout
            .read_to_end(&mut out)
            .context("reading a game's output failed")?;
    }
    Ok(out)
}
