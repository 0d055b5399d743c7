//! The failover engine: one primary game and one spare, and everything between them and
//! whoever plays — the one implementation behind `play`, `run` and `bench-failover`.
//!
//! The engine starts the games ([`Launcher`]), keeps the numbered **input log** (every byte
//! typed, in order) and gives the primary what it has not had yet; it learns from the
//! primary's stats lines when the spare holds a checkpoint (**synced**: a spare connected,
//! synced, in a session opened after the spare was started), replaces a spare that dies (up
//! to [`MAX_LOST_SPARES`] in a row before any syncs), notices the primary's death whoever
//! caused it, promotes the spare, replays the logged input the promoted game's state has not
//! accounted for (from its resumed line), starts a new spare (once the promoted game's first
//! byte is passed on, or 5 ms later at most: the user waits for the screen, not
//! for the spare), and says how the session ended.
//! Whether the games sit on terminals or pipes, on this host or another, is the
//! [`Launcher`]'s and [`Node`]'s business ([`local`] is this host's).
//!
//! ```text
//!            start: primary (epoch 1) + spare
//!                 |
//!                 v
//!   +-------> Running ----- primary exits 0 (quit, game over, end of input) ---> Ended(Finished)
//!   |          |   |  |     (or dies after its goodbye let its spare go)
//!   |          |   |  \---- primary dies, no spare --------------------------> Ended(Lost)
//!   |          |   +------- spare dies: a new one (the limit: Ended(Lost))
//!   |          |  primary seen dead (its exit), or the spare's resumed line
//!   |          v
//!   |       Promoting ----- spare ends without a resumed line, or too late --> Ended(Lost)
//!   |          |      \---- spare ends at the primary's goodbye ------------> Ended(Finished)
//!   |          | the spare's resumed line: it becomes the primary, gets the
//!   |          | log from where its state is, and a new spare is started
//!   +----------+
//! ```
//!
//! Detection is the primary's exit or the spare's resumed line, whichever comes first (a
//! promoted spare may draw before the dead primary can be reaped). A spare's output before
//! it took over is kept and shown from the takeover on; its first byte ends the recovery
//! time ([`Event::Switched`]). An axe kills the primary only while the spare is synced (else
//! it waits for the sync). With [`InputPolicy::AfterSync`] input is given to a primary only
//! while its spare is synced, so a death always finds a spare with a checkpoint, barring a
//! spare that dies at the same moment; a death with no spare that holds one loses the game,
//! and the session says so ([`End::Lost`]).

pub mod input_log;
pub mod local;
pub mod node;
#[cfg(test)]
mod ordering_tests;

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hslib::Role;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub use self::input_log::{InputLog, InputPolicy};
pub use self::node::{Exit, Launcher, Node, Written};
use crate::report::{Line, Resumed, Stats};

/// How often games report their stats for an interactive session, milliseconds.
pub const DEFAULT_STATS_MS: u64 = 200;
/// How long a promotion may take when the spare was known to hold a checkpoint.
const PROMOTION_DEADLINE: Duration = Duration::from_secs(30);
/// The same for a spare not known to hold a checkpoint: one that does takes over within
/// milliseconds, one that connected without a checkpoint gives up as fast, and one that never
/// reached its primary would try to connect for a long while to no avail.
const UNSYNCED_PROMOTION_DEADLINE: Duration = Duration::from_secs(2);
/// How long a spare may take to hold a checkpoint before it is replaced.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);
/// How long a promoted game's new spare may wait for the promoted game's first byte to be
/// passed on: starting a game costs this thread about half a millisecond, which the user,
/// waiting for the screen, need not wait for. A game that draws nothing (headless) gets its
/// spare after this.
const SPARE_AFTER_FIRST_BYTE: Duration = Duration::from_millis(5);
/// How long a primary may say nothing before it counts as hung: a game writes a status line
/// at least every [`tetris::status::STATS_KEEPALIVE`] (250 ms) while it runs, waiting for a
/// key or not, so this is six missed lines. Settable with [`Engine::set_hang_deadline`].
pub const DEFAULT_HANG_DEADLINE: Duration = Duration::from_millis(1500);
/// Spares that may end in a row before one holds a checkpoint, before the session gives up.
pub const MAX_LOST_SPARES: u32 = 10;

/// Something the caller has to act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Bytes the game wrote: show them (or keep them: a headless game's result).
    Output(Vec<u8>),
    /// The primary died; from here on the output is the spare's (the caller resets whatever
    /// half-written sequence the dead primary left on the screen).
    PrimaryDied {
        /// Its pid (0: none known).
        pid: u32,
    },
    /// The first byte from the promoted spare: the failover's recovery time, from the
    /// SIGKILL (or from the death being seen, for a death from elsewhere).
    Switched {
        /// Milliseconds.
        rto_ms: f64,
    },
    /// The spare took over (its resumed line) and got the input its state had not seen.
    Promoted {
        /// Its pid (0: none known).
        pid: u32,
        /// Its epoch.
        epoch: u64,
        /// Bytes of the input log replayed to it.
        replayed: usize,
        /// Milliseconds from the SIGKILL (or the death being seen) to its resumed line.
        after_ms: f64,
    },
    /// The primary was SIGKILLed by an axe.
    Axed {
        /// Its pid (0: none known).
        pid: u32,
    },
    /// A new spare was started.
    SpareStarted {
        /// Its pid (0: none known).
        pid: u32,
    },
    /// The primary reports the spare holding a checkpoint.
    SpareSynced {
        /// Its pid (0: none known).
        pid: u32,
    },
    /// A spare ended without taking over, while its game went on (it is replaced).
    SpareDied {
        /// Its pid (0: none known).
        pid: u32,
        /// How it ended ("signal: 9 (SIGKILL)").
        how: String,
    },
    /// The primary said nothing (no status line) for longer than the hang deadline while
    /// its spare held a checkpoint: it is SIGKILLed (so it cannot come back beside its
    /// successor) and failed over like any death.
    Hung {
        /// Its pid (0: none known).
        pid: u32,
        /// How long it had been silent, milliseconds.
        silent_ms: u64,
    },
    /// The session is over.
    Ended(End),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The game ended on purpose (quit, game over, end of its input) and its process exited.
    Finished,
    /// The game could not be kept: why.
    Lost(String),
}

/// What an axe did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axe {
    /// The primary with this pid was SIGKILLed.
    Killed(u32),
    /// The spare holds no checkpoint yet: the primary is killed as soon as it does.
    Pending,
}

/// What the status row and `status --json` show.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct View {
    /// The primary's pid (the one being promoted, during a failover).
    pub primary_pid: u32,
    /// The spare's pid, 0 when there is none.
    pub spare_pid: u32,
    /// The spare holds a checkpoint.
    pub spare_synced: bool,
    /// The primary's epoch.
    pub epoch: u64,
    /// Failovers so far.
    pub failovers: u64,
    /// Spares that ended without taking over while their game went on.
    pub spare_deaths: u64,
    /// The primary's stats (checkpoints, stalls, lag); across a failover the last ones
    /// are kept until the promoted game reports (its checkpoints go on from the restored
    /// one's number), so the counters are the session's, not one process's; the stall p99
    /// is the highest of the session's primaries.
    pub stats: Stats,
    /// The last failover's recovery time.
    pub last_rto_ms: Option<f64>,
    /// A failover is in progress.
    pub failing_over: bool,
    /// An axe waits for the spare's sync.
    pub axe_pending: bool,
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// The primary runs.
    Running {
        /// It was axed then (its death not seen yet).
        axed_at: Option<Instant>,
        /// It was promoted from a death at this time and has not drawn yet.
        awaiting_first_byte: Option<Instant>,
    },
    /// The primary is dead; the spare is taking over.
    Promoting(Promotion),
    /// Over.
    Ended(End),
}

/// A promotion in progress.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Promotion {
    /// The SIGKILL, or when the death was seen.
    since: Instant,
    /// When it counts as failed.
    deadline: Instant,
    /// The spare's first byte has been shown.
    switched: bool,
}

impl Phase {
    fn running() -> Self {
        Phase::Running {
            axed_at: None,
            awaiting_first_byte: None,
        }
    }
}

/// The primary game and how far it has been given the log.
#[derive(Debug)]
struct Primary<N> {
    node: N,
    /// It may still read input (false once a write found it gone).
    reading: bool,
    /// Its input was ended.
    input_closed: bool,
}

/// The spare game.
#[derive(Debug)]
struct Spare<N> {
    node: N,
    started: Instant,
    /// What it wrote before it was known to have taken over, and when it began.
    early: Vec<u8>,
    early_at: Option<Instant>,
}

/// The pair of games, the input log and the session's phase.
pub struct Engine<L: Launcher> {
    // Games first: they are stopped before the launcher (and its session directory) goes.
    primary: Primary<L::Node>,
    spare: Option<Spare<L::Node>>,
    /// Deposed primaries the kernel is still tearing down: reaped as they finish.
    corpses: Vec<L::Node>,
    phase: Phase,
    policy: InputPolicy,
    /// The input log, and how much of it the current primary has been given.
    log: InputLog,
    /// No more input comes: the primary's input ends once it has the whole log.
    input_ended: bool,
    epoch: u64,
    /// The primary's session count when the current spare was started: the spare's session
    /// is a later one.
    floor: u64,
    sessions: u64,
    synced: bool,
    stats: Stats,
    lost_spares: u32,
    spare_deaths: u64,
    /// The highest stall p99 of the session's earlier primaries, microseconds.
    p99_before: f64,
    failovers: u64,
    /// The primary said goodbye to its spare: the game has ended (its scores may still be
    /// on the screen), so there is nothing left to fail over.
    game_over: bool,
    /// The user interrupted the session (^C): no more axes, and a promoted spare gets the
    /// interrupt the dead primary could not act on.
    interrupted: bool,
    processes: u64,
    axe_pending: bool,
    last_rto_ms: Option<f64>,
    /// How long the primary may be silent before it is killed as hung (`None`: never).
    hang_deadline: Option<Duration>,
    /// When the current primary last wrote a status line (or started, or was promoted).
    last_heard: Instant,
    /// When the engine last looked: a long gap means the engine itself was stopped (^Z) or
    /// starved, and the games' silence meanwhile is no evidence.
    last_service: Instant,
    /// The current spare held a checkpoint and then no longer did, since then (its primary
    /// dropped it: in sync mode a spare that misses its ack deadline is let go).
    unsynced_since: Option<Instant>,
    /// A promoted game's new spare is due: started once its first byte is passed on, at the
    /// latest at this instant.
    spare_due: Option<Instant>,
    launcher: L,
}

fn pid_of<N: Node>(node: &N) -> u32 {
    node.pid().unwrap_or(0)
}

impl<L: Launcher> Engine<L> {
    /// Starts a primary (epoch 1) and its spare.
    pub fn start(mut launcher: L, policy: InputPolicy) -> anyhow::Result<(Self, Vec<Event>)> {
        let node = launcher.launch(&Role::Primary, 1, "1-primary")?;
        let mut engine = Self {
            primary: Primary {
                node,
                reading: true,
                input_closed: false,
            },
            spare: None,
            corpses: Vec::new(),
            phase: Phase::running(),
            policy,
            log: InputLog::new(),
            input_ended: false,
            epoch: 1,
            floor: 0,
            sessions: 0,
            synced: false,
            stats: Stats::default(),
            lost_spares: 0,
            spare_deaths: 0,
            p99_before: 0.0,
            failovers: 0,
            game_over: false,
            interrupted: false,
            processes: 1,
            axe_pending: false,
            last_rto_ms: None,
            hang_deadline: Some(DEFAULT_HANG_DEADLINE),
            last_heard: Instant::now(),
            last_service: Instant::now(),
            unsynced_since: None,
            spare_due: None,
            launcher,
        };
        let mut events = Vec::new();
        engine.start_spare(&mut events)?;
        Ok((engine, events))
    }

    /// How long the primary may say nothing before it is killed as hung and failed over
    /// (`None`: never; the default is [`DEFAULT_HANG_DEADLINE`]). Only a primary whose spare
    /// holds a checkpoint is killed: without one, killing it would lose the game.
    pub fn set_hang_deadline(&mut self, deadline: Option<Duration>) {
        self.hang_deadline = deadline;
    }

    /// What the status row shows.
    pub fn view(&self) -> View {
        View {
            primary_pid: pid_of(&self.primary.node),
            spare_pid: self.spare.as_ref().map_or(0, |s| pid_of(&s.node)),
            spare_synced: self.synced,
            epoch: self.epoch.max(self.stats.epoch),
            failovers: self.failovers,
            spare_deaths: self.spare_deaths,
            stats: self.stats,
            last_rto_ms: self.last_rto_ms,
            failing_over: matches!(self.phase, Phase::Promoting(_)),
            axe_pending: self.axe_pending,
        }
    }

    /// The input log: every byte typed, in order.
    pub fn log(&self) -> &[u8] {
        self.log.bytes()
    }

    /// How much of the log the current primary has been given.
    pub fn written(&self) -> usize {
        self.log.given()
    }

    /// The current primary's pid.
    pub fn primary_pid(&self) -> u32 {
        pid_of(&self.primary.node)
    }

    /// The spare's pid, if there is one.
    pub fn spare_pid(&self) -> Option<u32> {
        self.spare.as_ref().map(|s| pid_of(&s.node))
    }

    /// How the session ended, once it has.
    pub fn end(&self) -> Option<&End> {
        match &self.phase {
            Phase::Ended(end) => Some(end),
            _ => None,
        }
    }

    /// True once the primary has told its spare that its game ended (the spare then ended
    /// too): there is nothing left to protect, and no axe falls.
    pub fn game_over(&self) -> bool {
        self.game_over
    }

    /// True once the session is over.
    pub fn ended(&self) -> bool {
        self.end().is_some()
    }

    /// The `--stats` line the last primary wrote at its end, if any.
    pub fn final_stats(&self) -> Option<String> {
        self.primary.node.final_stats()
    }

    /// Input: logged, and given to the primary as the policy allows (during a failover it
    /// waits in the log for the promoted spare).
    pub fn type_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.log.push(bytes);
        self.flush_input()
    }

    /// No more input comes: each primary's input ends once it has had the whole log.
    pub fn end_input(&mut self) -> anyhow::Result<()> {
        self.input_ended = true;
        self.flush_input()
    }

    /// The user's interrupt (^C): the primary's to act on, not logged input. It ends the
    /// session: from here on nothing is axed, and if the primary is dying or dead (a
    /// failover under way), the spare that takes over gets it.
    pub fn interrupt(&mut self) -> anyhow::Result<()> {
        self.interrupted = true;
        self.axe_pending = false;
        if matches!(self.phase, Phase::Running { axed_at: None, .. }) {
            self.primary.node.interrupt()?;
        }
        Ok(())
    }

    /// New screen size for both games and the spares to come.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.launcher.resize(rows, cols);
        self.primary.node.resize(rows, cols);
        if let Some(s) = &mut self.spare {
            s.node.resize(rows, cols);
        }
    }

    /// Gives the primary what it has not had of the log (as much as it takes now), and
    /// ends its input after the whole log once no more comes.
    fn flush_input(&mut self) -> anyhow::Result<()> {
        if !matches!(self.phase, Phase::Running { .. }) || !self.primary.reading {
            return Ok(());
        }
        if !self.log.pending().is_empty() && self.policy.allows(self.synced) {
            match self.primary.node.write_input(self.log.pending())? {
                Written::Took(n) => self.log.gave(n),
                // Dying or finished: which one, its exit or its spare will tell.
                Written::Closed => {
                    tracing::info!(
                        at = self.log.given(),
                        "the primary no longer reads its input"
                    );
                    self.primary.reading = false;
                }
            }
        }
        if self.input_ended && self.log.pending().is_empty() && !self.primary.input_closed {
            tracing::info!(inputs = self.log.given(), "the primary's input ends");
            self.primary.node.close_input();
            self.primary.input_closed = true;
        }
        Ok(())
    }

    /// SIGKILLs the primary now if the spare holds a checkpoint, else as soon as it does (a
    /// failover in progress: as soon as the next spare does).
    pub fn axe(&mut self, events: &mut Vec<Event>) -> anyhow::Result<Axe> {
        if self.game_over {
            anyhow::bail!("the game has ended: there is no primary to axe");
        }
        if self.interrupted {
            anyhow::bail!("the session is ending (interrupted): there is no primary to axe");
        }
        let ready = match &self.phase {
            Phase::Ended(_) => anyhow::bail!("the session is over"),
            Phase::Promoting(_) => false,
            Phase::Running { .. } => self.synced,
        };
        if !ready {
            self.axe_pending = true;
            return Ok(Axe::Pending);
        }
        self.axe_pending = false;
        let pid = pid_of(&self.primary.node);
        if let Phase::Running { axed_at, .. } = &mut self.phase {
            *axed_at = Some(Instant::now());
        }
        self.primary.node.kill()?;
        // The next axe is for the next spare, until the death is seen and after.
        self.synced = false;
        tracing::info!(pid, "axed the primary");
        events.push(Event::Axed { pid });
        Ok(Axe::Killed(pid))
    }

    /// Waits up to `timeout` for the games or for one of `extra` (the caller's descriptors,
    /// polled for input), handles what the games did, and returns which of `extra` are ready
    /// and the events for the caller.
    pub fn poll(
        &mut self,
        extra: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> anyhow::Result<(Vec<bool>, Vec<Event>)> {
        let mut events = Vec::new();
        let mut timeout = timeout;
        if let Phase::Promoting(p) = &self.phase {
            timeout = timeout.min(p.deadline.saturating_duration_since(Instant::now()));
        }
        if let Some(due) = self.spare_due {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        let writing = matches!(self.phase, Phase::Running { .. })
            && self.primary.reading
            && !self.log.pending().is_empty()
            && self.policy.allows(self.synced);
        let ready_extra = {
            let mut fds: Vec<PollFd<'_>> = extra
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
                .collect();
            if !self.ended() {
                let games = self
                    .primary
                    .node
                    .wait_on(writing)
                    .into_iter()
                    .chain(self.spare.iter().flat_map(|s| s.node.wait_on(false)));
                fds.extend(games.map(|(fd, flags)| PollFd::new(fd, flags)));
            }
            // Rounded up: a wake-up before a deadline would only poll again.
            let ms = timeout.as_micros().div_ceil(1000);
            let ms = u16::try_from(ms).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("polling the games failed"),
            }
            (0..extra.len())
                .map(|i| fds[i].revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        self.service(&mut events)?;
        Ok((ready_extra, events))
    }

    /// Handles whatever the games did (every read is non-blocking).
    fn service(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some(hang) = self.hang_deadline
            && now.saturating_duration_since(self.last_service) > hang / 2
        {
            // We were stopped or starved ourselves: what we did not hear meanwhile proves
            // nothing about the games.
            self.last_heard = now;
        }
        self.last_service = now;
        let steps: [Step<L>; 6] = [
            Self::read_primary_output,
            Self::read_primary_status,
            Self::check_primary,
            // The spare's status before its output: it writes its resumed line before it
            // draws, so a takeover is known before its first byte is looked at.
            Self::read_spare_status,
            Self::read_spare_output,
            Self::check_spare,
        ];
        for step in steps {
            if self.ended() {
                return Ok(());
            }
            step(self, events)?;
        }
        self.corpses.retain_mut(|g| matches!(g.exited(), Ok(None)));
        self.start_due_spare(events)?;
        self.check_deadlines(events)?;
        self.flush_input()
    }

    /// Starts the promoted game's spare once its first byte is passed on or its time came.
    fn start_due_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(due) = self.spare_due else {
            return Ok(());
        };
        let drawn = matches!(
            self.phase,
            Phase::Running {
                awaiting_first_byte: None,
                ..
            }
        );
        if self.ended() {
            self.spare_due = None;
        } else if drawn || Instant::now() >= due {
            self.spare_due = None;
            self.start_spare(events)?;
        }
        Ok(())
    }

    fn check_deadlines(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        match &self.phase {
            Phase::Promoting(p) if Instant::now() >= p.deadline => {
                let waited = p.deadline.saturating_duration_since(p.since);
                let why = if self.lost_spares > 0 {
                    self.both_killed(None)
                } else {
                    format!(
                        "the spare did not take over within {waited:?} of the primary's death: \
                         the game is lost"
                    )
                };
                self.spare = None;
                self.finish(End::Lost(why), events);
            }
            Phase::Running { axed_at: None, .. }
                if self.synced
                    && !self.game_over
                    && !self.interrupted
                    && self
                        .hang_deadline
                        .is_some_and(|h| self.last_heard.elapsed() > h) =>
            {
                let pid = pid_of(&self.primary.node);
                let silent_ms = u64::try_from(self.last_heard.elapsed().as_millis()).unwrap_or(0);
                tracing::warn!(pid, silent_ms, "the primary is silent: killed as hung");
                events.push(Event::Hung { pid, silent_ms });
                self.axe(events)?;
            }
            Phase::Running { axed_at: None, .. }
                if !self.synced
                    && !self.game_over
                    && self.spare.is_some()
                    && self.hang_deadline.is_some_and(|h| {
                        self.unsynced_since.is_some_and(|since| since.elapsed() > h)
                    }) =>
            {
                // Its primary let it go (a sync spare that missed its ack deadline: stopped
                // or hung) and it has not come back: a new one takes its place.
                self.unsynced_since = None;
                if let Some(s) = &mut self.spare {
                    tracing::warn!(
                        spare = s.node.name(),
                        "the spare was dropped by its primary and did not come back: replaced"
                    );
                    s.node.kill()?;
                }
            }
            Phase::Running { .. } if !self.synced => {
                if let Some(s) = &mut self.spare
                    && s.started.elapsed() > SYNC_DEADLINE
                {
                    tracing::warn!(
                        spare = s.node.name(),
                        "no checkpoint within {SYNC_DEADLINE:?}"
                    );
                    // Its end is a lost spare, replaced as any other.
                    s.node.kill()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn read_primary_output(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        if let Some(bytes) = self.primary.node.read_output()?
            && !bytes.is_empty()
        {
            self.first_byte(Instant::now(), events);
            events.push(Event::Output(bytes));
        }
        Ok(())
    }

    fn read_primary_status(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let lines = self.primary.node.read_status()?;
        self.primary_lines(lines, events)
    }

    fn primary_lines(&mut self, lines: Vec<Line>, events: &mut Vec<Event>) -> anyhow::Result<()> {
        if !lines.is_empty() {
            self.last_heard = Instant::now();
        }
        // An axed or dead primary's last lines say nothing of the spare's future.
        let alive = matches!(self.phase, Phase::Running { axed_at: None, .. });
        for line in lines {
            if let Line::Stats(mut s) = line {
                // A promoted game's stalls start afresh: until it has its own, the last
                // ones stay, and the p99 shown is the highest of the session's processes.
                if s.stall_last_us == 0.0 {
                    s.stall_last_us = self.stats.stall_last_us;
                }
                s.stall_p99_us = s.stall_p99_us.max(self.p99_before);
                self.stats = s;
                self.sessions = s.sessions;
                let synced =
                    alive && s.live && s.synced && s.sessions > self.floor && self.spare.is_some();
                if alive && self.synced && !synced && self.spare.is_some() {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                if synced {
                    self.unsynced_since = None;
                }
                if synced && !self.synced {
                    self.lost_spares = 0;
                    if let Some(spare) = &self.spare {
                        let pid = pid_of(&spare.node);
                        tracing::info!(pid, spare = spare.node.name(), "spare synced");
                        events.push(Event::SpareSynced { pid });
                    }
                }
                self.synced = synced;
            }
        }
        if self.synced && self.axe_pending && matches!(self.phase, Phase::Running { .. }) {
            self.axe(events)?;
        }
        Ok(())
    }

    /// Notices the primary's end: finished, or the spare's turn.
    fn check_primary(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        if !matches!(self.phase, Phase::Running { .. }) {
            return Ok(());
        }
        let Some(exit) = self.primary.node.exited()? else {
            return Ok(());
        };
        let pid = pid_of(&self.primary.node);
        tracing::info!(pid, status = %exit.text, "the primary ended");
        if exit.success {
            self.drain_primary(events)?;
            self.finish(End::Finished, events);
        } else if self.game_over {
            // It told its spare its game had ended, then died before its exit (an axe that
            // came as it finished): the game is over all the same, and what it printed
            // before its goodbye (a headless game's result) is its last word.
            tracing::info!(pid, "the primary died after its game had ended");
            self.drain_primary(events)?;
            self.finish(End::Finished, events);
        } else if self.spare.is_none() {
            self.drain_primary(events)?;
            self.finish(
                End::Lost(format!(
                    "the primary (pid {pid}) died ({}) with no spare: the game is lost",
                    exit.text
                )),
                events,
            );
        } else {
            self.primary_gone(events)?;
        }
        Ok(())
    }

    /// Passes on what the primary wrote before it ended.
    fn drain_primary(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        while let Some(bytes) = self.primary.node.read_output()? {
            if bytes.is_empty() {
                break;
            }
            events.push(Event::Output(bytes));
        }
        Ok(())
    }

    /// The primary is dead or dying (seen exited, or its spare took over): the promotion
    /// begins, and from here on the spare's output is shown.
    fn primary_gone(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.drain_primary(events)?;
        let axed_at = match &self.phase {
            Phase::Running { axed_at, .. } => *axed_at,
            _ => None,
        };
        let since = axed_at.unwrap_or_else(Instant::now);
        events.push(Event::PrimaryDied {
            pid: pid_of(&self.primary.node),
        });
        // An axe kills only a primary whose spare holds a checkpoint.
        let wait = if self.synced || axed_at.is_some() {
            PROMOTION_DEADLINE
        } else {
            UNSYNCED_PROMOTION_DEADLINE
        };
        self.phase = Phase::Promoting(Promotion {
            since,
            deadline: Instant::now() + wait,
            switched: false,
        });
        if let Some(spare) = &mut self.spare
            && let Some(at) = spare.early_at.take()
        {
            let early = std::mem::take(&mut spare.early);
            self.first_byte(at, events);
            events.push(Event::Output(early));
        }
        Ok(())
    }

    /// The promoted game's first byte, at `at`: the end of the failover's recovery time.
    fn first_byte(&mut self, at: Instant, events: &mut Vec<Event>) {
        let since = match &mut self.phase {
            Phase::Promoting(p) if !p.switched => {
                p.switched = true;
                p.since
            }
            Phase::Running {
                awaiting_first_byte,
                ..
            } => match awaiting_first_byte.take() {
                Some(since) => since,
                None => return,
            },
            _ => return,
        };
        let rto_ms = input_log::recovery_ms(since, at);
        self.last_rto_ms = Some(rto_ms);
        events.push(Event::Switched { rto_ms });
    }

    fn read_spare_status(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &mut self.spare else {
            return Ok(());
        };
        let lines = spare.node.read_status()?;
        self.spare_lines(lines, events)
    }

    /// A spare's status lines: its resumed line says it took over; what follows it is the
    /// new primary's.
    fn spare_lines(&mut self, lines: Vec<Line>, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let mut lines = lines.into_iter();
        while let Some(line) = lines.next() {
            if let Line::Resumed(r) = line {
                if matches!(self.phase, Phase::Running { .. }) {
                    // Its stream ended without a goodbye: the primary is dying, though its
                    // exit may not be seen yet.
                    self.primary_gone(events)?;
                }
                if matches!(self.phase, Phase::Promoting(_)) {
                    self.promoted(&r, events)?;
                    return self.primary_lines(lines.collect(), events);
                }
            }
        }
        Ok(())
    }

    /// The spare took over from `resumed`: it is the primary, gets the log from where its
    /// state is, and a spare of its own.
    fn promoted(&mut self, resumed: &Resumed, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Phase::Promoting(promotion) = self.phase.clone() else {
            return Ok(());
        };
        let Some(spare) = self.spare.take() else {
            return Ok(());
        };
        self.last_heard = Instant::now();
        let mut old = std::mem::replace(
            &mut self.primary,
            Primary {
                node: spare.node,
                reading: true,
                input_closed: false,
            },
        );
        // Dead or dying; if its spare only lost it, it must not play on beside its successor.
        old.node.kill()?;
        if matches!(old.node.exited(), Ok(None)) {
            self.corpses.push(old.node);
        }
        self.failovers += 1;
        self.epoch = self.epoch.max(resumed.epoch);
        // The last stalls stay on show until the promoted game reports; its checkpoints go
        // on from the one it restored.
        self.p99_before = self.p99_before.max(self.stats.stall_p99_us);
        self.stats = Stats {
            epoch: resumed.epoch,
            checkpoints: self.stats.checkpoints.max(resumed.checkpoint),
            stall_last_us: self.stats.stall_last_us,
            stall_p99_us: self.stats.stall_p99_us,
            ..Stats::default()
        };
        self.sessions = 0;
        self.synced = false;
        let replayed = self.log.resume_at(self.launcher.resumed_at(resumed));
        let from = self.log.given();
        let after_ms = promotion.since.elapsed().as_secs_f64() * 1000.0;
        self.phase = Phase::Running {
            axed_at: None,
            awaiting_first_byte: (!promotion.switched).then_some(promotion.since),
        };
        let pid = pid_of(&self.primary.node);
        tracing::info!(
            pid,
            epoch = resumed.epoch,
            at = from,
            replayed,
            "the spare took over"
        );
        events.push(Event::Promoted {
            pid,
            epoch: resumed.epoch,
            replayed,
            after_ms,
        });
        // Its spare comes once the user has its first byte (or a little later).
        self.spare_due = Some(Instant::now() + SPARE_AFTER_FIRST_BYTE);
        self.flush_input()?;
        if self.interrupted {
            // ^C was typed while its predecessor was dying: the session still ends.
            self.primary.node.interrupt()?;
        }
        Ok(())
    }

    fn read_spare_output(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &mut self.spare else {
            return Ok(());
        };
        let Some(bytes) = spare.node.read_output()? else {
            return Ok(());
        };
        if bytes.is_empty() {
            return Ok(());
        }
        if matches!(self.phase, Phase::Promoting(_)) {
            self.first_byte(Instant::now(), events);
            events.push(Event::Output(bytes));
        } else {
            // A spare writes nothing before it takes over: kept until its resumed line says
            // it did (or, if it fails, as its last words).
            spare.early_at.get_or_insert_with(Instant::now);
            spare.early.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn check_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &mut self.spare else {
            return Ok(());
        };
        let Some(exit) = spare.node.exited()? else {
            return Ok(());
        };
        let pid = pid_of(&spare.node);
        tracing::info!(pid, status = %exit.text, phase = ?self.phase, "the spare ended");
        // It may have taken over and ended already (a finished game restored).
        let lines = spare.node.read_status()?;
        if lines.iter().any(|l| matches!(l, Line::Resumed(_))) {
            return self.spare_lines(lines, events);
        }
        let mut said = std::mem::take(&mut spare.early);
        while let Some(bytes) = spare.node.read_output()? {
            if bytes.is_empty() {
                break;
            }
            said.extend(bytes);
        }
        let mut said = plain_text(&String::from_utf8_lossy(&said));
        if said.is_empty() {
            said = plain_text(&spare.node.last_words());
        }
        let name = spare.node.name().to_owned();
        self.spare = None;
        self.synced = false;
        match self.phase {
            Phase::Promoting(_) if exit.success => self.finish(End::Finished, events),
            Phase::Promoting(_) => {
                let primary = pid_of(&self.primary.node);
                let why = if exit.text.starts_with("signal") {
                    self.both_killed(Some(pid))
                } else if self.lost_spares > 0 {
                    self.both_killed(None)
                } else {
                    format!(
                        "the primary (pid {primary}) died and its spare ({name}, pid {pid}) \
                         ended ({}) before it held a checkpoint; the game is lost",
                        exit.text
                    )
                };
                self.finish(End::Lost(format!("{why}{}", said_line(&said))), events);
            }
            // The primary said goodbye: its game has ended; no spare is needed.
            Phase::Running { .. } if exit.success => self.game_over = true,
            Phase::Running { .. } => {
                self.spare_deaths += 1;
                events.push(Event::SpareDied {
                    pid,
                    how: exit.text.clone(),
                });
                self.lost_spares += 1;
                if self.lost_spares > MAX_LOST_SPARES {
                    self.finish(
                        End::Lost(format!(
                            "{} spares in a row ended before holding a checkpoint, the last \
                             with {}; the game is not protected and the session gives up{}",
                            self.lost_spares,
                            exit.text,
                            said_line(&said)
                        )),
                        events,
                    );
                } else {
                    self.start_spare(events)?;
                }
            }
            Phase::Ended(_) => {}
        }
        Ok(())
    }

    /// The message for a primary and its spare both gone before a spare held a checkpoint
    /// (`spare`: the killed spare's pid, if it is the one that just ended).
    fn both_killed(&self, spare: Option<u32>) -> String {
        let primary = pid_of(&self.primary.node);
        let spare = spare.map_or_else(String::new, |pid| format!(", pid {pid}"));
        format!(
            "both games were killed (the primary, pid {primary}, and its spare{spare}) before a \
             spare held a checkpoint; the game is lost"
        )
    }

    fn start_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.processes += 1;
        let name = format!("{}-spare", self.processes);
        let node = self.launcher.launch(&Role::Spare, self.epoch, &name)?;
        let pid = pid_of(&node);
        tracing::info!(pid, spare = name, "spare started");
        events.push(Event::SpareStarted { pid });
        self.spare = Some(Spare {
            node,
            started: Instant::now(),
            early: Vec::new(),
            early_at: None,
        });
        self.floor = self.sessions;
        self.synced = false;
        self.unsynced_since = None;
        Ok(())
    }

    fn finish(&mut self, end: End, events: &mut Vec<Event>) {
        tracing::info!(?end, "the session ended");
        self.phase = Phase::Ended(end.clone());
        events.push(Event::Ended(end));
    }
}

/// One step of [`Engine::service`].
type Step<L> = fn(&mut Engine<L>, &mut Vec<Event>) -> anyhow::Result<()>;

/// `" (it said: text)"`, or nothing for no text.
fn said_line(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" (it said: {text})")
    }
}

/// What a person can read of a game's output: escape sequences and control characters
/// dropped (a game's terminal set-up is no message), whitespace squeezed.
fn plain_text(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: up to its final byte; other escapes: one more character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
            } else {
                chars.next();
            }
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_drops_escape_sequences_and_control_characters() {
        assert_eq!(plain_text("\x1b[?1049h\x1b[H\x1b7\r\n"), "");
        assert_eq!(
            plain_text("\x1b[1mtetris:\x1b[0m cannot\r\n  connect\n"),
            "tetris: cannot connect"
        );
    }
}
