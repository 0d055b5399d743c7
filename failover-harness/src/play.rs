//! `failover-harness play`: the demo. The harness takes the user's terminal (raw mode) and
//! runs a primary and a spare game ([`Engine`]), each on a pseudo-terminal one row
//! shorter than the user's; the primary's screen passes through to the user, the user's keys
//! to the primary (logged), and the last row is the harness's status row
//! ([`crate::statusrow`]). The axe key (^X) SIGKILLs the primary, as do
//! `failover-harness axe` from another terminal and `--chaos SECS`; the spare takes over on
//! the same terminal with the same board and score, and a new spare appears. Window resizes
//! reach both games. The terminal is put back however the session ends; ^Z suspends the
//! session (the game gives the terminal back and stops, then the harness) until `fg`.
//!
//! The session keeps a history of its failovers (start, spares synced, axes, deaths seen,
//! promotions, recovery times, spare deaths, the end): `failover-harness status --events`
//! prints it, `play --events FILE` writes it to a file as it happens.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use hslib::Mode;

use crate::control::{self, AxeRequest, Status};
use crate::engine::local::LocalLauncher;
use crate::engine::{self, Axe, End, Engine, Event, InputPolicy, View};
use crate::game::{Io, Setup};
use crate::link::{Link, Transport};
use crate::statusrow::{self, AXE_KEY};
use crate::term::RawTerminal;
use crate::{sys, vt};

/// The smallest terminal: the game's 40x23 and the status row.
pub const MIN_ROWS: u16 = 24;
/// The narrowest terminal.
pub const MIN_COLS: u16 = 40;
/// How often the status row and `status` are brought up to date.
const REFRESH: Duration = Duration::from_millis(100);
/// For the tests of the panic hook only: panic once the game's screen is up.
const PANIC_ENV: &str = "FAILOVER_HARNESS_PANIC_AFTER";
/// The byte ^C sends: a signal to the game (its terminal keeps ISIG), not a logged key.
const CTRL_C: u8 = 0x03;
/// The byte ^Z sends: the whole session is suspended, as tetris alone is.
const CTRL_Z: u8 = 0x1a;
/// How long a suspend waits for the game to put its terminal back and stop.
const SUSPEND_WAIT: Duration = Duration::from_secs(2);

/// The engine on local games on pseudo-terminals.
type Session = Engine<LocalLauncher>;

/// What `play` was asked for.
#[derive(Clone, Debug)]
pub struct PlayOptions {
    /// `tetris` options (seed, level, keys, ...).
    pub tetris_args: Vec<OsString>,
    /// async or sync checkpoints.
    pub mode: Mode,
    /// unix or tcp.
    pub transport: Transport,
    /// Axe the primary every so often.
    pub chaos: Option<Duration>,
    /// Write the session's events here as they happen.
    pub events_file: Option<PathBuf>,
    /// How long the primary may be silent before it is killed as hung (`None`: never).
    pub hang: Option<Duration>,
}

/// The session's history: each line timed from the start, kept for `status --events` and
/// written to the `--events` file if there is one.
struct History {
    start: Instant,
    file: Option<(File, PathBuf)>,
}

impl History {
    fn note(&mut self, control: &control::Server, text: &str) {
        let line = format!("{:9.3}s {text}", self.start.elapsed().as_secs_f64());
        if let Some((file, path)) = &mut self.file
            && let Err(e) = writeln!(file, "{line}")
        {
            tracing::warn!(error = %e, file = %path.display(), "cannot write the events file");
            self.file = None;
        }
        control.push_event(line);
    }
}

/// The user's screen: the game's output passed through, and the status row.
struct Screen {
    tracker: vt::Tracker,
    rows: u16,
    cols: u16,
    row_dirty: bool,
    shown: Option<View>,
}

impl Screen {
    fn write(bytes: &[u8]) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .context("cannot write to the terminal")
    }

    fn forward(&mut self, bytes: &[u8], term: &RawTerminal) -> anyhow::Result<()> {
        Self::write(bytes)?;
        self.tracker.feed(bytes);
        term.note_alt_screen(self.tracker.alt_screen());
        self.row_dirty = true;
        Ok(())
    }

    /// The dead primary's last frame may stop mid-sequence: end it before the next game's.
    fn cut(&mut self) -> anyhow::Result<()> {
        let bytes = self.tracker.cut();
        Self::write(bytes)
    }

    /// Draws the status row when the game's screen is up, the stream is between sequences
    /// and the row may have changed.
    fn status(&mut self, view: &View) -> anyhow::Result<()> {
        let changed = self.shown.as_ref() != Some(view);
        if !(self.tracker.alt_screen() && self.tracker.at_boundary() && (self.row_dirty || changed))
        {
            return Ok(());
        }
        Self::write(&statusrow::draw(view, self.rows, self.cols))?;
        self.row_dirty = false;
        self.shown = Some(*view);
        Ok(())
    }
}

/// Plays until the game ends; the exit code says whether it was kept throughout.
pub fn play(opts: &PlayOptions) -> anyhow::Result<ExitCode> {
    let signals = sys::signal_pipe(&[
        Signal::SIGWINCH,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ])
    .context("cannot route signals")?;
    let control = control::Server::start(&control::runtime_dir()?)?;
    let file = match &opts.events_file {
        Some(path) => Some((
            File::create(path)
                .with_context(|| format!("cannot write the events file {}", path.display()))?,
            path.clone(),
        )),
        None => None,
    };
    let mut history = History {
        start: Instant::now(),
        file,
    };
    let mut term = RawTerminal::enter()?;
    let (rows, cols) = term.size()?;
    if rows < MIN_ROWS || cols < MIN_COLS {
        term.restore();
        anyhow::bail!(
            "the terminal is {cols}x{rows}: play needs at least {MIN_COLS}x{MIN_ROWS} (the \
             game's 40x23 and a status row)"
        );
    }
    let setup = Setup::new(
        opts.tetris_args.clone(),
        Link::new(opts.transport)?,
        opts.mode,
        engine::DEFAULT_STATS_MS,
    )?;
    let launcher = LocalLauncher::new(setup, Io::Pty(rows - 1, cols));
    let (mut sup, first) = Engine::start(launcher, InputPolicy::Immediate)?;
    sup.set_hang_deadline(opts.hang);
    let mode = crate::game::mode_value(opts.mode);
    let transport = crate::link::transport_name(opts.transport);
    history.note(
        &control,
        &format!(
            "session started: primary {} (epoch 1), {mode} checkpoints over {transport}",
            sup.primary_pid()
        ),
    );
    let mut screen = Screen {
        tracker: vt::Tracker::new(),
        rows,
        cols,
        row_dirty: true,
        shown: None,
    };
    let mut axes = Axes::default();
    let mut suspending: Option<(u32, Instant)> = None;
    let mut next_chaos = opts.chaos.map(|d| Instant::now() + d);
    let mut refreshed = Instant::now();
    let mut end = None;
    let panic_test = std::env::var_os(PANIC_ENV).is_some();
    let mut ctx = Handling {
        screen: &mut screen,
        term: &term,
        axes: &mut axes,
        end: &mut end,
        history: &mut history,
        control: &control,
    };
    ctx.handle(first)?;
    while end.is_none() {
        if panic_test && screen.tracker.alt_screen() {
            panic!("{PANIC_ENV} is set: the harness panics, its terminal must come back");
        }
        let now = Instant::now();
        let mut timeout = REFRESH.saturating_sub(now - refreshed);
        if let Some(at) = next_chaos {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        let stdin = std::io::stdin();
        let (ready, mut events) = sup.poll(
            &[stdin.as_fd(), signals.as_fd(), control.wake_fd()],
            timeout,
        )?;
        if ready[0] {
            let mut buf = [0u8; 1024];
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    end = Some(End::Lost("the terminal went away".to_owned()));
                }
                Ok(n) => match keys(&buf[..n], &mut sup, &mut events)? {
                    Special::Interrupt => history.note(&control, "^C: the session ends"),
                    Special::Suspend if suspending.is_none() => {
                        // The game puts its terminal back and stops (its SIGTSTP); then
                        // the harness stops.
                        let pid = sup.primary_pid();
                        let _ = kill(
                            Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                            Signal::SIGTSTP,
                        );
                        suspending = Some((pid, Instant::now() + SUSPEND_WAIT));
                    }
                    Special::Suspend | Special::None => {}
                },
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(e).context("reading the terminal failed"),
            }
        }
        if ready[1] {
            let mut buf = [0u8; 64];
            let n = nix::unistd::read(&signals, &mut buf).unwrap_or(0);
            for &s in &buf[..n] {
                if i32::from(s) == Signal::SIGWINCH as i32 {
                    let (r, c) = term.size()?;
                    screen.rows = r;
                    screen.cols = c;
                    screen.row_dirty = true;
                    sup.resize(r.saturating_sub(1).max(1), c);
                } else {
                    end = Some(End::Lost(format!("the harness got signal {s}")));
                }
            }
        }
        if ready[2] {
            control.drain_wake();
            while let Ok(req) = control.axes.try_recv() {
                match sup.axe(&mut events) {
                    Ok(Axe::Killed(_) | Axe::Pending) => axes.waiting.push(req),
                    Err(e) => {
                        let _ = req.reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        if next_chaos.is_some_and(|at| Instant::now() >= at) {
            // While a failover runs the axe waits for the next spare.
            let _ = sup.axe(&mut events);
            next_chaos = opts.chaos.map(|d| Instant::now() + d);
        }
        if end.is_none() {
            Handling {
                screen: &mut screen,
                term: &term,
                axes: &mut axes,
                end: &mut end,
                history: &mut history,
                control: &control,
            }
            .handle(events)?;
        }
        let view = sup.view();
        control.set_status(Status {
            primary_pid: view.primary_pid,
            spare_pid: view.spare_pid,
            epoch: view.epoch,
            failovers: view.failovers,
            checkpoints: view.stats.checkpoints,
            spare_deaths: view.spare_deaths,
            last_rto_ms: view.last_rto_ms,
            lag: view.stats.lag(),
            stall_last_us: view.stats.stall_last_us,
            stall_p99_us: view.stats.stall_p99_us,
            mode: mode.to_owned(),
            transport: transport.to_owned(),
        });
        // Answered only now, so that a `status` right after an `axe` sees the new primary.
        for (req, pid) in axes.taken_over.drain(..) {
            let _ = req.reply.send(Ok(pid));
        }
        screen.status(&view)?;
        refreshed = Instant::now();
        if let Some((pid, deadline)) = suspending
            && (stopped(pid) || Instant::now() >= deadline || sup.primary_pid() != pid)
            && end.is_none()
        {
            suspending = None;
            history.note(&control, "^Z: the session is suspended");
            term.note_alt_screen(screen.tracker.alt_screen());
            term.suspend()?;
            history.note(&control, "continued");
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGCONT,
            );
            // The window may have changed meanwhile; the game redraws on its SIGCONT.
            let (r, c) = term.size()?;
            (screen.rows, screen.cols) = (r, c);
            screen.row_dirty = true;
            sup.resize(r.saturating_sub(1).max(1), c);
        }
    }
    match &end {
        Some(End::Lost(why)) => history.note(&control, &format!("session lost: {why}")),
        _ => history.note(&control, "session ended: the game finished"),
    }
    for req in axes
        .waiting
        .into_iter()
        .chain(axes.axed.into_iter().map(|(r, _)| r))
    {
        let _ = req.reply.send(Err("the session ended".to_owned()));
    }
    drop(sup);
    term.restore();
    match end {
        Some(End::Lost(why)) => {
            eprintln!("failover-harness: {why}");
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// What a read of the user's keys asks of the session besides keys.
enum Special {
    None,
    /// ^C: the session ends.
    Interrupt,
    /// ^Z: the session is suspended.
    Suspend,
}

/// Whether process `pid` is stopped.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "T")
    })
}

/// The user's keys: the axe key axes, ^C interrupts, ^Z asks for a suspend, the rest goes
/// to the game.
fn keys(bytes: &[u8], sup: &mut Session, events: &mut Vec<Event>) -> anyhow::Result<Special> {
    let mut special = Special::None;
    let is_special = |b: u8| b == AXE_KEY || b == CTRL_C || b == CTRL_Z;
    for chunk in bytes.split_inclusive(|&b| is_special(b)) {
        let (keys, last) = match chunk.split_last() {
            Some((&b, rest)) if is_special(b) => (rest, Some(b)),
            _ => (chunk, None),
        };
        sup.type_bytes(keys)?;
        if last == Some(CTRL_Z) {
            // Not a key the game reads either: the session stops once the game has.
            if !matches!(special, Special::Interrupt) {
                special = Special::Suspend;
            }
        } else if last == Some(CTRL_C) {
            // A signal, not a key the game reads: not logged (the game ends on it).
            sup.interrupt()?;
            special = Special::Interrupt;
        } else if last == Some(AXE_KEY) {
            // During a failover the axe waits for the next spare; errors are not the user's.
            if let Err(e) = sup.axe(events) {
                tracing::info!(error = %e, "axe refused");
            }
        }
    }
    Ok(special)
}

/// Axe requests from other terminals, by how far they have got.
#[derive(Default)]
struct Axes {
    /// Not axed yet (the spare has no checkpoint yet).
    waiting: Vec<AxeRequest>,
    /// Axed this pid; the spare has not taken over yet.
    axed: Vec<(AxeRequest, u32)>,
    /// The spare took over: answered once the status says so.
    taken_over: Vec<(AxeRequest, u32)>,
}

/// What the engine's events act on.
struct Handling<'a> {
    screen: &'a mut Screen,
    term: &'a RawTerminal,
    axes: &'a mut Axes,
    end: &'a mut Option<End>,
    history: &'a mut History,
    control: &'a control::Server,
}

impl Handling<'_> {
    fn handle(&mut self, events: Vec<Event>) -> anyhow::Result<()> {
        for e in events {
            let note = match e {
                Event::Output(bytes) => {
                    self.screen.forward(&bytes, self.term)?;
                    None
                }
                Event::PrimaryDied { pid } => {
                    self.screen.cut()?;
                    Some(format!("primary {pid} seen dead"))
                }
                Event::Axed { pid } => {
                    let axed = self.axes.waiting.drain(..).map(|r| (r, pid));
                    self.axes.axed.extend(axed);
                    Some(format!("axe: primary {pid} SIGKILLed"))
                }
                Event::Promoted {
                    pid,
                    epoch,
                    replayed,
                    after_ms,
                } => {
                    let done = std::mem::take(&mut self.axes.axed);
                    self.axes.taken_over.extend(done);
                    Some(format!(
                        "spare {pid} promoted: epoch {epoch}, {replayed} input bytes replayed, \
                         resumed {after_ms:.1}ms after the death"
                    ))
                }
                Event::Switched { rto_ms } => Some(format!(
                    "recovery time {rto_ms:.1}ms (the promoted game's first byte)"
                )),
                Event::SpareStarted { pid } => Some(format!("spare {pid} started")),
                Event::SpareSynced { pid } => {
                    Some(format!("spare {pid} synced: it holds a checkpoint"))
                }
                Event::Hung { pid, silent_ms } => Some(format!(
                    "primary {pid} silent for {silent_ms}ms: SIGKILLed as hung"
                )),
                Event::SpareDied { pid, how } => Some(format!(
                    "spare {pid} died ({how}) without taking over: a new one is started"
                )),
                Event::Ended(e) => {
                    *self.end = Some(e);
                    None
                }
            };
            if let Some(text) = note {
                self.history.note(self.control, &text);
            }
        }
        Ok(())
    }
}
