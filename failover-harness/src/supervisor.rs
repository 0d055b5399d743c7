//! The interactive pair: a primary and a spare game, each on its own pseudo-terminal, and
//! everything between them and the user — without the user's terminal, which [`crate::play`]
//! adds (and [`crate::bench`] does without).
//!
//! - **Keys** typed go to the primary's terminal and into a log, numbered by byte; the game
//!   counts in its checkpointed state the terminal bytes it accounted for (`tty_bytes`).
//! - **Output** of the primary's terminal is handed to the caller ([`Event::Output`]).
//! - **Detection**: the primary's pidfd, or the spare's resumed line, whichever comes first
//!   (the spare sees its stream end, promotes itself with a new epoch and may draw before the
//!   kernel lets the dead primary be reaped). From then on the spare's terminal is the one
//!   shown (its first byte ends the recovery time, [`Event::Switched`]); on its resumed line
//!   the log from its `tty_bytes` on is replayed to it and a fresh spare is started, which
//!   the game syncs at once (hslib's checkpoint-wanted signal). A spare's status pipe is read
//!   before its terminal: it writes the resumed line before it draws.
//! - **Axe**: SIGKILL the primary, once the spare holds a checkpoint (an axe asked for before
//!   is kept pending until then: a spare without a checkpoint cannot take over).
//! - A spare that dies is replaced; a game that ends (quit, ^C) ends the session.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::game::{Game, Io, Role, Setup};
use crate::report::{Line, Stats};
use crate::sys;

/// The byte ^C sends: a signal to the game (its terminal keeps ISIG), not a logged key.
pub const CTRL_C: u8 = 0x03;

/// Something the caller has to act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Bytes the game drew: show them.
    Output(Vec<u8>),
    /// The primary died; from here on the output is the spare's (the caller resets whatever
    /// half-written sequence the dead primary left on the screen).
    PrimaryDied {
        /// Its pid.
        pid: u32,
    },
    /// The first byte from the promoted spare: the failover's recovery time, from the
    /// SIGKILL (or from the death being seen, for a kill from elsewhere).
    Switched {
        /// Milliseconds.
        rto_ms: f64,
    },
    /// The spare took over (its resumed line) and got the keys its state had not seen.
    Promoted {
        /// Its pid.
        pid: u32,
        /// Its epoch.
        epoch: u64,
        /// Bytes of the key log replayed to it.
        replayed: usize,
    },
    /// The primary was SIGKILLed by an axe.
    Axed {
        /// Its pid.
        pid: u32,
    },
    /// A new spare was started.
    SpareStarted {
        /// Its pid.
        pid: u32,
    },
    /// The primary reports the spare holding a checkpoint.
    SpareSynced {
        /// Its pid.
        pid: u32,
    },
    /// The session is over.
    Ended(End),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The game ended on purpose (quit, game over, ^C) and its process exited.
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
    /// The primary's stats (checkpoints, stalls, lag).
    pub stats: Stats,
    /// The last failover's recovery time.
    pub last_rto_ms: Option<f64>,
    /// A failover is in progress.
    pub failing_over: bool,
    /// An axe waits for the spare's sync.
    pub axe_pending: bool,
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The primary runs.
    Running,
    /// The primary died at `since`; the spare is taking over.
    Promoting {
        since: Instant,
        /// A clean exit: the spare should follow it on the goodbye.
        clean: bool,
        /// When the promotion counts as failed.
        deadline: Instant,
    },
    /// Over.
    Ended,
}

/// How often a game reports its stats, milliseconds.
pub const DEFAULT_STATS_MS: u64 = 200;
/// How long a promotion may take before the session counts as lost.
const PROMOTION_DEADLINE: Duration = Duration::from_secs(30);
/// The same for a spare not known to hold a checkpoint: one that does takes over within
/// milliseconds, one that connected without a checkpoint gives up as fast, and one that never
/// reached its primary would try to connect for a long while to no avail.
const UNSYNCED_PROMOTION_DEADLINE: Duration = Duration::from_secs(2);
/// Spares that may die in a row before the supervisor stops replacing them.
const MAX_LOST_SPARES: u32 = 10;

/// The primary, the spare and the key log.
#[derive(Debug)]
pub struct Supervisor {
    setup: Setup,
    size: (u16, u16),
    primary: Game,
    primary_pty_open: bool,
    spare: Option<Game>,
    /// The spare is the promoted one's predecessor's replacement, counted in the primary's
    /// sessions from here.
    floor: u64,
    sessions: u64,
    synced: bool,
    stats: Stats,
    log: Vec<u8>,
    /// How much of the log the current primary's terminal has been given.
    sent: usize,
    epoch: u64,
    failovers: u64,
    processes: u64,
    phase: Phase,
    killed_at: Option<Instant>,
    /// The primary died at this time; the promoted spare's first byte is the switch.
    awaiting_switch: Option<Instant>,
    /// What the spare wrote before the harness saw it take over, and when it began: a
    /// promoted spare may draw before the dead primary can be reaped.
    spare_early: Vec<u8>,
    spare_early_at: Option<Instant>,
    /// Deposed primaries still being torn down by the kernel: reaped as they finish.
    corpses: Vec<Game>,
    axe_pending: bool,
    last_rto_ms: Option<f64>,
    lost_spares: u32,
}

impl Supervisor {
    /// Starts a primary and a spare on `rows` x `cols` terminals.
    pub fn start(setup: Setup, rows: u16, cols: u16) -> anyhow::Result<(Self, Vec<Event>)> {
        let primary = Game::spawn(
            &setup,
            Role::Primary,
            1,
            Io::Pty(rows, cols),
            "1-primary",
            &[],
        )?;
        let mut s = Self {
            setup,
            size: (rows, cols),
            primary,
            primary_pty_open: true,
            spare: None,
            floor: 0,
            sessions: 0,
            synced: false,
            stats: Stats::default(),
            log: Vec::new(),
            sent: 0,
            epoch: 1,
            failovers: 0,
            processes: 1,
            phase: Phase::Running,
            killed_at: None,
            awaiting_switch: None,
            spare_early: Vec::new(),
            spare_early_at: None,
            corpses: Vec::new(),
            axe_pending: false,
            last_rto_ms: None,
            lost_spares: 0,
        };
        let mut events = Vec::new();
        s.start_spare(&mut events)?;
        Ok((s, events))
    }

    /// What the status row shows.
    pub fn view(&self) -> View {
        View {
            primary_pid: self.primary.pid(),
            spare_pid: self.spare.as_ref().map_or(0, Game::pid),
            spare_synced: self.synced,
            epoch: self.epoch.max(self.stats.epoch),
            failovers: self.failovers,
            stats: self.stats,
            last_rto_ms: self.last_rto_ms,
            failing_over: matches!(self.phase, Phase::Promoting { .. }),
            axe_pending: self.axe_pending,
        }
    }

    /// The key log: every byte typed to the game, in order.
    pub fn log(&self) -> &[u8] {
        &self.log
    }

    /// The current primary's pid.
    pub fn primary_pid(&self) -> u32 {
        self.primary.pid()
    }

    /// The spare's pid, if there is one.
    pub fn spare_pid(&self) -> Option<u32> {
        self.spare.as_ref().map(Game::pid)
    }

    /// True once the session is over.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Keys typed by the user: logged, and given to the primary (during a failover they wait
    /// in the log for the promoted spare).
    pub fn type_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        for &b in bytes {
            if b == CTRL_C {
                // A signal, not a key the game reads: not logged (the game ends on it).
                if self.phase == Phase::Running {
                    write_some(self.primary.pty(), &[CTRL_C])?;
                }
                continue;
            }
            self.log.push(b);
        }
        self.flush_keys()
    }

    /// Gives the primary what it has not been given of the log (as much as its terminal
    /// takes now; the rest on a later call).
    fn flush_keys(&mut self) -> anyhow::Result<()> {
        if self.phase != Phase::Running || self.sent >= self.log.len() {
            return Ok(());
        }
        let n = write_some(self.primary.pty(), &self.log[self.sent..])?;
        self.sent += n;
        Ok(())
    }

    /// New terminal size for both games (and the spares to come).
    pub fn resize(&mut self, rows: u16, cols: u16) -> anyhow::Result<()> {
        self.size = (rows, cols);
        for g in std::iter::once(&self.primary).chain(self.spare.as_ref()) {
            if let Some(pty) = g.pty() {
                // A game that has exited has no one to tell.
                let _ = sys::set_window_size(pty, rows, cols);
            }
        }
        Ok(())
    }

    /// SIGKILLs the primary now if the spare holds a checkpoint, else as soon as it does (a
    /// failover in progress: as soon as the next spare does).
    pub fn axe(&mut self, events: &mut Vec<Event>) -> anyhow::Result<Axe> {
        if self.phase == Phase::Ended {
            anyhow::bail!("the session is over");
        }
        if self.phase != Phase::Running || !self.synced {
            self.axe_pending = true;
            return Ok(Axe::Pending);
        }
        self.axe_pending = false;
        let pid = self.primary.pid();
        self.killed_at = Some(Instant::now());
        self.primary.kill()?;
        // The next axe is for the next spare, until the death is seen and after.
        self.synced = false;
        tracing::info!(pid, "axed the primary");
        events.push(Event::Axed { pid });
        Ok(Axe::Killed(pid))
    }

    /// SIGKILLs the spare (to show that the primary goes on and a new spare appears).
    pub fn kill_spare(&mut self) -> anyhow::Result<Option<u32>> {
        if self.phase != Phase::Running {
            return Ok(None);
        }
        match &mut self.spare {
            Some(s) => {
                s.kill()?;
                Ok(Some(s.pid()))
            }
            None => Ok(None),
        }
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
        let ready_extra;
        let mut ready = Ready::default();
        {
            let mut fds: Vec<PollFd<'_>> = extra
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
                .collect();
            let mut slots = Slots::default();
            fn add<'f>(
                fds: &mut Vec<PollFd<'f>>,
                fd: Option<BorrowedFd<'f>>,
                flags: PollFlags,
            ) -> Option<usize> {
                fd.map(|fd| {
                    fds.push(PollFd::new(fd, flags));
                    fds.len() - 1
                })
            }
            let pending_keys = self.phase == Phase::Running && self.sent < self.log.len();
            if self.primary_pty_open {
                let mut flags = PollFlags::POLLIN;
                if pending_keys {
                    flags |= PollFlags::POLLOUT;
                }
                slots.primary_pty = add(&mut fds, self.primary.pty(), flags);
            }
            slots.primary_status = add(&mut fds, Some(self.primary.status.fd()), PollFlags::POLLIN);
            slots.primary_exit = add(&mut fds, Some(self.primary.pidfd()), PollFlags::POLLIN);
            if let Some(s) = &self.spare {
                slots.spare_pty = add(&mut fds, s.pty(), PollFlags::POLLIN);
                slots.spare_status = add(&mut fds, Some(s.status.fd()), PollFlags::POLLIN);
                slots.spare_exit = add(&mut fds, Some(s.pidfd()), PollFlags::POLLIN);
            }
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("polling the games failed"),
            }
            let is = |i: Option<usize>| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            };
            ready_extra = (0..extra.len()).map(|i| is(Some(i))).collect();
            ready.primary_pty = is(slots.primary_pty);
            ready.primary_status = is(slots.primary_status);
            ready.primary_exit = is(slots.primary_exit);
            ready.spare_pty = is(slots.spare_pty);
            ready.spare_status = is(slots.spare_status);
            ready.spare_exit = is(slots.spare_exit);
        }
        self.service(ready, &mut events)?;
        Ok((ready_extra, events))
    }

    fn service(&mut self, ready: Ready, events: &mut Vec<Event>) -> anyhow::Result<()> {
        if ready.primary_pty {
            self.read_primary(events)?;
        }
        if ready.primary_status {
            self.read_primary_status(events)?;
        }
        if ready.primary_exit {
            self.check_primary(events)?;
        }
        // The status before the terminal: a spare writes its resumed line before it draws,
        // so a takeover is known before its first byte is looked at.
        if ready.spare_status {
            self.read_spare_status(events)?;
        }
        if ready.spare_pty {
            self.read_spare(events)?;
        }
        if ready.spare_exit {
            self.check_spare(events)?;
        }
        self.corpses.retain_mut(|g| matches!(g.exited(), Ok(None)));
        if let Phase::Promoting {
            since, deadline, ..
        } = self.phase
            && Instant::now() > deadline
        {
            self.spare = None;
            self.end(
                End::Lost(format!(
                    "the spare did not take over within {:?} of the primary's death",
                    deadline.saturating_duration_since(since)
                )),
                events,
            );
        }
        self.flush_keys()
    }

    fn read_primary(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        match read_some(self.primary.pty())? {
            Some(bytes) if !bytes.is_empty() => {
                self.switched(events);
                events.push(Event::Output(bytes));
            }
            Some(_) => {}
            // EIO: every holder of the slave is gone.
            None => self.primary_pty_open = false,
        }
        Ok(())
    }

    fn read_primary_status(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        for line in self
            .primary
            .status
            .read_lines()
            .context("reading the primary's status")?
        {
            if let Line::Stats(s) = line {
                self.stats = s;
                self.sessions = s.sessions;
                let synced = s.live && s.synced && s.sessions > self.floor && self.spare.is_some();
                if synced && !self.synced {
                    self.lost_spares = 0;
                    if let Some(pid) = self.spare_pid() {
                        events.push(Event::SpareSynced { pid });
                    }
                }
                self.synced = synced;
            }
        }
        if self.synced && self.axe_pending && self.phase == Phase::Running {
            self.axe(events)?;
        }
        Ok(())
    }

    /// Notices the primary's end: the spare's turn.
    fn check_primary(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        let Some(status) = self.primary.exited()? else {
            return Ok(());
        };
        let pid = self.primary.pid();
        tracing::info!(pid, %status, "the primary ended");
        if self.spare.is_none() {
            self.drain_primary(events)?;
            if status.success() {
                self.end(End::Finished, events);
            } else {
                self.end(
                    End::Lost(format!(
                        "the primary (pid {pid}) died ({status}) with no spare"
                    )),
                    events,
                );
            }
            return Ok(());
        }
        self.primary_gone(status.success(), events)
    }

    /// Shows what the primary drew before it died.
    fn drain_primary(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        while self.primary_pty_open {
            match read_some(self.primary.pty())? {
                Some(bytes) if !bytes.is_empty() => events.push(Event::Output(bytes)),
                Some(_) => break,
                None => self.primary_pty_open = false,
            }
        }
        Ok(())
    }

    /// The primary is dead or dying (seen exited, or its spare took over): from here on the
    /// spare's terminal is shown. `clean`: it exited on purpose.
    fn primary_gone(&mut self, clean: bool, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.drain_primary(events)?;
        // An axe kills only a primary whose spare holds a checkpoint.
        let axed = self.killed_at.is_some();
        let since = self.killed_at.take().unwrap_or_else(Instant::now);
        events.push(Event::PrimaryDied {
            pid: self.primary.pid(),
        });
        let wait = if self.synced || axed {
            PROMOTION_DEADLINE
        } else {
            UNSYNCED_PROMOTION_DEADLINE
        };
        self.phase = Phase::Promoting {
            since,
            clean,
            deadline: Instant::now() + wait,
        };
        self.awaiting_switch = Some(since);
        if let Some(at) = self.spare_early_at.take() {
            self.switched_at(at, events);
            events.push(Event::Output(std::mem::take(&mut self.spare_early)));
        }
        Ok(())
    }

    fn read_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &self.spare else {
            return Ok(());
        };
        let Some(bytes) = read_some(spare.pty())? else {
            return Ok(());
        };
        if bytes.is_empty() {
            return Ok(());
        }
        match self.phase {
            Phase::Promoting { .. } => {
                self.switched(events);
                events.push(Event::Output(bytes));
            }
            // A spare draws nothing before it takes over: kept until its resumed line says
            // it did (or, if it fails, its last words for the log).
            _ => {
                self.spare_early_at.get_or_insert_with(Instant::now);
                self.spare_early.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }

    /// The first byte of the promoted game: the end of the failover's recovery time.
    fn switched(&mut self, events: &mut Vec<Event>) {
        self.switched_at(Instant::now(), events);
    }

    fn switched_at(&mut self, at: Instant, events: &mut Vec<Event>) {
        if let Some(since) = self.awaiting_switch.take() {
            let rto_ms = at.saturating_duration_since(since).as_secs_f64() * 1000.0;
            self.last_rto_ms = Some(rto_ms);
            events.push(Event::Switched { rto_ms });
        }
    }

    fn read_spare_status(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &mut self.spare else {
            return Ok(());
        };
        let lines = spare
            .status
            .read_lines()
            .context("reading the spare's status")?;
        for line in lines {
            match line {
                Line::Resumed(r) if matches!(self.phase, Phase::Promoting { .. }) => {
                    self.promoted(r.tty_bytes.unwrap_or(0), r.epoch, events)?;
                }
                Line::Resumed(r) if self.phase == Phase::Running => {
                    // Its stream ended without a goodbye: the primary is dying, though the
                    // kernel may not have let it go yet (it is reaped later).
                    self.primary_gone(false, events)?;
                    self.promoted(r.tty_bytes.unwrap_or(0), r.epoch, events)?;
                }
                Line::Resumed(_) => {}
                Line::Stats(_) => {}
            }
        }
        Ok(())
    }

    /// The spare took over with `tty_bytes` of the log in its state.
    fn promoted(
        &mut self,
        tty_bytes: u64,
        epoch: u64,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<()> {
        let Some(spare) = self.spare.take() else {
            return Ok(());
        };
        let mut old = std::mem::replace(&mut self.primary, spare);
        if matches!(old.exited(), Ok(None)) {
            self.corpses.push(old);
        }
        self.primary_pty_open = true;
        self.failovers += 1;
        self.epoch = self.epoch.max(epoch);
        self.stats = Stats::default();
        self.sessions = 0;
        self.synced = false;
        let from = usize::try_from(tty_bytes)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        self.sent = from;
        let replayed = self.log.len() - from;
        self.phase = Phase::Running;
        tracing::info!(
            pid = self.primary.pid(),
            epoch,
            tty_bytes,
            replayed,
            "the spare took over"
        );
        events.push(Event::Promoted {
            pid: self.primary.pid(),
            epoch,
            replayed,
        });
        self.flush_keys()?;
        self.start_spare(events)
    }

    fn check_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let Some(spare) = &mut self.spare else {
            return Ok(());
        };
        let Some(status) = spare.exited()? else {
            return Ok(());
        };
        let pid = spare.pid();
        tracing::info!(pid, %status, phase = ?self.phase, "the spare ended");
        // Its last words (an error message) are on its terminal.
        let mut last = std::mem::take(&mut self.spare_early);
        self.spare_early_at = None;
        last.extend(read_some(spare.pty()).ok().flatten().unwrap_or_default());
        match self.phase {
            Phase::Promoting { clean, .. } => {
                let lines = spare.status.read_lines().unwrap_or_default();
                if let Some(Line::Resumed(r)) =
                    lines.into_iter().find(|l| matches!(l, Line::Resumed(_)))
                {
                    // It took over and already ended (a finished game restored).
                    self.promoted(r.tty_bytes.unwrap_or(0), r.epoch, events)?;
                    return Ok(());
                }
                self.spare = None;
                if clean || status.success() {
                    self.end(End::Finished, events);
                } else {
                    let said = String::from_utf8_lossy(&last).trim().to_owned();
                    self.end(
                        End::Lost(format!(
                            "the primary died before its spare (pid {pid}) held a checkpoint; \
                             the spare ended ({status}): {said}"
                        )),
                        events,
                    );
                }
            }
            Phase::Running => {
                self.spare = None;
                self.synced = false;
                if status.success() {
                    // The primary said goodbye: its game is ending; no spare is needed.
                    return Ok(());
                }
                self.lost_spares += 1;
                if self.lost_spares > MAX_LOST_SPARES {
                    tracing::warn!(lost = self.lost_spares, "spares keep dying; no new one");
                    return Ok(());
                }
                self.start_spare(events)?;
            }
            Phase::Ended => {}
        }
        Ok(())
    }

    fn start_spare(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.processes += 1;
        let name = format!("{}-spare", self.processes);
        let (rows, cols) = self.size;
        let spare = Game::spawn(
            &self.setup,
            Role::Spare,
            self.epoch,
            Io::Pty(rows, cols),
            &name,
            &[],
        )?;
        events.push(Event::SpareStarted { pid: spare.pid() });
        self.spare = Some(spare);
        self.spare_early.clear();
        self.spare_early_at = None;
        self.floor = self.sessions;
        self.synced = false;
        Ok(())
    }

    fn end(&mut self, end: End, events: &mut Vec<Event>) {
        tracing::info!(?end, "the session ended");
        self.phase = Phase::Ended;
        events.push(Event::Ended(end));
    }
}

#[derive(Default)]
struct Slots {
    primary_pty: Option<usize>,
    primary_status: Option<usize>,
    primary_exit: Option<usize>,
    spare_pty: Option<usize>,
    spare_status: Option<usize>,
    spare_exit: Option<usize>,
}

#[derive(Clone, Copy, Default)]
struct Ready {
    primary_pty: bool,
    primary_status: bool,
    primary_exit: bool,
    spare_pty: bool,
    spare_status: bool,
    spare_exit: bool,
}

/// Reads what a pty master has now: `Some(bytes)` (empty when nothing is there), `None`
/// once every holder of the slave is gone (EIO).
fn read_some(fd: Option<BorrowedFd<'_>>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(fd) = fd else {
        return Ok(Some(Vec::new()));
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(Errno::EIO) => return Ok(if out.is_empty() { None } else { Some(out) }),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() >= 64 * 1024 {
                    return Ok(Some(out));
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(Some(out)),
            Err(e) => return Err(e).context("reading a game's terminal failed"),
        }
    }
}

/// Writes as much of `bytes` as a non-blocking pty master takes now.
fn write_some(fd: Option<BorrowedFd<'_>>, bytes: &[u8]) -> anyhow::Result<usize> {
    let Some(fd) = fd else {
        return Ok(0);
    };
    let mut done = 0;
    while done < bytes.len() {
        match nix::unistd::write(fd.as_fd(), &bytes[done..]) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN | Errno::EIO) => break,
            Err(e) => return Err(e).context("typing to a game's terminal failed"),
        }
    }
    Ok(done)
}
