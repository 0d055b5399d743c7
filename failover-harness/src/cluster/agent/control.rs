//! The agent's control thread: its node's place in the session, through etcd
//! (`docs/CLUSTER.md`, "The agent"). Every etcd call carries a deadline ([`CALL_DEADLINE`]);
//! a failed call is retried on the next turn, never waited out by the game.
//!
//! One *incarnation* per lease: grant it (a [`LeaseKeeper`] keeps it, fenced before it could
//! expire), register `nodes/<name>`, then
//! - **no leader and no history** (a new session): campaign; the winner orders a fresh
//!   primary with the epoch won and records it in `history/`;
//! - **a leader, and the spare slot free**: take the slot (create-if-absent, with the lease)
//!   and order a spare of the leader's game;
//! - **spare**: when the leader key goes (the watch), campaign, but only if the game holds a
//!   checkpoint (its `holding` line); won: give the slot up, order `promote <epoch>`, record
//!   the history, publish `primary`. **Fast path**: the game reports silence and the client
//!   wrote `suspect/<epoch>`: depose the leader (a txn on its create_revision), campaign;
//! - **primary**: its game dies: revoke the lease at once (the spare's watch fires) and start
//!   over as a spare of the next leader; the lease fenced, or the leader key gone or another's:
//!   SIGKILL the game at once, start over. A game that ended on purpose (a finished headless
//!   game) keeps its lease: the session is over, and nobody takes over a finished game; its
//!   spare, told goodbye, ends too (exit status 0), and its agent starts no other.
//!
//! Watch events carry revisions: a change older than the leadership it would end (a deletion
//! before our own key was created) is stale and ignored.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hotspare_cluster::coordinator::{CoordError, NodeState, SpareSlot};
use hotspare_cluster::follow::{Followed, follow_leader};
use hotspare_cluster::lease::{LeaseKeeper, LeaseState};
use hotspare_cluster::{Campaign, Coordinator, Epoch, EtcdSession, Leader, LeaderChange, NodeInfo};
use serde_json::json;

use super::events::Events;
use super::wake::Mailbox;
use super::{AgentOptions, GameConfig, Order, Report};

/// The longest any one etcd call of the control thread may take.
pub const CALL_DEADLINE: Duration = Duration::from_millis(500);
/// How often the control thread looks around when nothing happens.
const TICK: Duration = Duration::from_millis(10);
/// How often an idle node retries for a role (the watch wakes it sooner).
const RETRY: Duration = Duration::from_millis(100);
/// How often a silent spare asks whether the client suspects its primary.
const SUSPECT_POLL: Duration = Duration::from_millis(10);

/// What reaches the control thread.
#[derive(Debug)]
pub enum Msg {
    /// From the game loop.
    Report(Report),
    /// From the leader watch.
    Leader(LeaderChange),
}

/// How an incarnation ended.
#[derive(Debug)]
enum Next {
    /// Revoke the lease (at once: the spare's watch fires) and start over.
    Revoke,
    /// The lease is lost anyway (fenced): start over.
    Drop,
}

/// This node's part in the session.
#[derive(Debug)]
enum Phase {
    /// No game: looking for a role.
    Idle,
    /// A spare of `leader`, holding the spare slot (`slot`: its create_revision).
    Spare {
        leader: Leader,
        slot: i64,
        game: u64,
        holding: bool,
        /// Since when its game hears nothing from its primary (its `silent_ms` line).
        silent_since: Option<Instant>,
    },
    /// Its game leads `epoch`; `running`: it runs as the primary (started fresh, or its
    /// promotion took effect: the game's `resumed` line). A promoted spare's game that ends
    /// before that never led: its end is no finished game.
    Primary {
        epoch: Epoch,
        game: u64,
        running: bool,
    },
    /// Its game led `epoch` and ended on purpose: the session is over.
    Finished { epoch: Epoch },
    /// Its spare's primary finished the game: the session is over (the slot stays held, so
    /// no other node starts a spare of a finished game).
    Over,
}

/// The control thread.
#[derive(Debug)]
pub struct Control {
    opts: AgentOptions,
    me: NodeInfo,
    coord: EtcdSession,
    inbox: Receiver<Msg>,
    to_self: Sender<Msg>,
    game: Mailbox,
    events: Events,
    config: Option<GameConfig>,
    leader: Option<Leader>,
    next_game: u64,
    phase: Phase,
    last_try: Option<Instant>,
    /// A spare's campaign failed (etcd did not answer): tried again every [`RETRY`] while no
    /// leader is known, since no change of the leader key may come to prompt it.
    campaign_owed: bool,
    last_suspect_poll: Instant,
    /// The fence that ended the last incarnation stopped the game instead of killing it (the
    /// game loop kills it after all if a spare holds a checkpoint of it).
    keep_game: bool,
    /// A fenced primary's game, stopped and kept (no spare held it): its number and epoch.
    suspended: Option<(u64, Epoch)>,
}

impl Control {
    /// The control thread of node `me`.
    pub fn new(
        opts: &AgentOptions,
        me: NodeInfo,
        inbox: Receiver<Msg>,
        to_self: Sender<Msg>,
        game: Mailbox,
        events: Events,
    ) -> anyhow::Result<Self> {
        let coord = EtcdSession::new(&opts.etcd, &opts.session, CALL_DEADLINE)
            .with_context(|| format!("session {:?} at {}", opts.session, opts.etcd))?;
        Ok(Self {
            opts: opts.clone(),
            me,
            coord,
            inbox,
            to_self,
            game,
            events,
            config: None,
            leader: None,
            next_game: 1,
            phase: Phase::Idle,
            last_try: None,
            campaign_owed: false,
            last_suspect_poll: Instant::now(),
            keep_game: false,
            suspended: None,
        })
    }

    /// Runs the node's incarnations for good (or until the game loop fails).
    pub fn run(mut self) -> anyhow::Result<()> {
        let watcher = EtcdSession::new(&self.opts.etcd, &self.opts.session, CALL_DEADLINE)?;
        let tx = self.to_self.clone();
        std::thread::Builder::new()
            .name("hs-agent-watch".to_owned())
            .spawn(move || watch_leader(&watcher, &tx))
            .context("cannot start the leader watch's thread")?;
        loop {
            let keeper = self.lease();
            let next = self.incarnation(&keeper)?;
            match next {
                Next::Revoke => {
                    // On this thread's connection, warm from its last calls (the keeper's own
                    // has been idle since the grant); the keeper stops after.
                    let lease = keeper.lease();
                    let epoch = match self.phase {
                        Phase::Primary { epoch, .. } | Phase::Finished { epoch } => Some(epoch),
                        _ => None,
                    };
                    match self.coord.revoke(lease) {
                        Ok(()) => self
                            .events
                            .emit("revoked", json!({"epoch":epoch,"lease":lease.0})),
                        Err(e) => tracing::warn!(error = %e, "revoking the lease failed"),
                    }
                    drop(keeper);
                }
                Next::Drop => drop(keeper),
            }
            if !std::mem::take(&mut self.keep_game) {
                self.game.send(Order::Kill)?;
                self.suspended = None;
            }
            self.phase = Phase::Idle;
            self.last_try = None;
        }
    }

    /// A new lease, retried until etcd grants one.
    fn lease(&self) -> LeaseKeeper {
        let ttl = Duration::from_secs(u64::try_from(self.opts.ttl_s.max(1)).unwrap_or(1));
        loop {
            match LeaseKeeper::start(
                &self.opts.etcd,
                &self.opts.session,
                self.opts.ttl_s,
                ttl * 3 / 10,
            ) {
                Ok(k) => return k,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a lease; retrying");
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn publish(&self, keeper: &LeaseKeeper, state: NodeState) {
        let mut me = self.me.clone();
        me.state = state;
        if let Err(e) = self.coord.register(&me, keeper.lease()) {
            tracing::warn!(error = %e, ?state, "cannot publish this node's state");
        }
    }

    fn incarnation(&mut self, keeper: &LeaseKeeper) -> anyhow::Result<Next> {
        self.publish(keeper, NodeState::Starting);
        loop {
            if keeper.state() == LeaseState::Fenced {
                // Nobody deposed this node: a running primary's game may be the only copy.
                let keep = matches!(self.phase, Phase::Primary { running: true, .. });
                return Ok(self.fenced("the lease may have expired", keep));
            }
            let msg = match self.inbox.recv_timeout(TICK) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the agent is shutting down"),
            };
            if let Some(msg) = msg
                && let Some(next) = self.handle(keeper, msg)?
            {
                return Ok(next);
            }
            self.step(keeper);
        }
    }

    /// Stops the game at once: this node may no longer lead. With `keep`, a game no spare
    /// holds is stopped and kept rather than killed ([`Order::Fence`]).
    fn fenced(&mut self, why: &str, keep: bool) -> Next {
        self.keep_game = keep;
        let order = if keep { Order::Fence } else { Order::Kill };
        if let Err(e) = self.game.send(order) {
            tracing::warn!(error = %e, "cannot stop the game");
        }
        let epoch = match self.phase {
            Phase::Primary { epoch, .. } | Phase::Finished { epoch } => Some(epoch),
            _ => None,
        };
        tracing::warn!(why, ?epoch, "fenced");
        self.events.emit("fenced", json!({"epoch":epoch,"why":why}));
        Next::Drop
    }

    fn handle(&mut self, keeper: &LeaseKeeper, msg: Msg) -> anyhow::Result<Option<Next>> {
        match msg {
            Msg::Leader(change) => Ok(self.leader_change(keeper, change)),
            Msg::Report(Report::Failed(why)) => anyhow::bail!("the game loop failed: {why}"),
            Msg::Report(r) => Ok(self.report(keeper, r)),
        }
    }

    fn leader_change(&mut self, keeper: &LeaseKeeper, change: LeaderChange) -> Option<Next> {
        let known = self.leader.as_ref().map_or(0, |l| l.epoch);
        match &change {
            LeaderChange::Vacant { revision } => {
                if u64::try_from(*revision).unwrap_or(0) < known {
                    return None;
                }
                self.leader = None;
            }
            LeaderChange::Elected(l) => {
                if l.epoch < known {
                    return None;
                }
                self.leader = Some(l.clone());
            }
        }
        self.last_try = None;
        match &mut self.phase {
            Phase::Primary { epoch, .. } | Phase::Finished { epoch } => {
                let mine = *epoch;
                let ends_mine = match &change {
                    LeaderChange::Vacant { revision } => {
                        u64::try_from(*revision).unwrap_or(0) > mine
                    }
                    LeaderChange::Elected(l) => l.epoch > mine,
                };
                if ends_mine {
                    self.fenced("the leader key is gone or another's", false);
                    return Some(Next::Revoke);
                }
                None
            }
            Phase::Spare {
                leader, holding, ..
            } => {
                match change {
                    LeaderChange::Vacant { .. } if *holding => self.campaign_as_spare(keeper),
                    LeaderChange::Elected(l) if l.epoch > leader.epoch => {
                        // Another node leads now: follow its game instead.
                        self.follow(keeper, &l);
                    }
                    _ => {}
                }
                None
            }
            Phase::Idle | Phase::Over => None,
        }
    }

    fn report(&mut self, keeper: &LeaseKeeper, r: Report) -> Option<Next> {
        match (&mut self.phase, r) {
            (_, Report::Suspended { game, epoch }) => {
                self.suspended = Some((game, epoch));
                None
            }
            (_, Report::Exited { game, .. }) if self.suspended.is_some_and(|(g, _)| g == game) => {
                tracing::warn!(game, "the suspended game ended");
                self.suspended = None;
                None
            }
            (
                Phase::Spare {
                    game,
                    holding,
                    leader,
                    silent_since,
                    ..
                },
                Report::Holding { game: g, .. },
            ) if *game == g => {
                // A stream session's first whole checkpoint: the spare hears its primary
                // again (a new session after a cut says `holding`, not `heard`; a silence
                // left standing would make a later suspicion by the client alone, or a cut
                // of the spare alone, enough to depose a primary the client hears).
                *silent_since = None;
                if !*holding {
                    *holding = true;
                    let vacant = self.leader.as_ref().is_none_or(|l| l.epoch != leader.epoch);
                    self.publish(keeper, NodeState::Spare { synced: true });
                    if vacant {
                        // The leader went while the spare was still catching up.
                        self.campaign_as_spare(keeper);
                    }
                }
                None
            }
            (
                Phase::Spare {
                    game, silent_since, ..
                },
                Report::Silent { game: g, ms },
            ) if *game == g => {
                tracing::info!(ms, "the spare hears nothing from its primary");
                *silent_since =
                    Some(Instant::now() - Duration::from_millis(ms).min(Duration::from_secs(60)));
                None
            }
            (
                Phase::Spare {
                    game, silent_since, ..
                },
                Report::Heard { game: g },
            ) if *game == g => {
                *silent_since = None;
                None
            }
            (Phase::Spare { game, .. }, Report::Exited { game: g, .. })
                if *game == g && primary_finished(&self.coord) =>
            {
                // Its primary said goodbye: the game finished on purpose, nobody takes over.
                tracing::info!("the primary finished the game: the session is over");
                self.phase = Phase::Over;
                self.publish(keeper, NodeState::Starting);
                None
            }
            (
                Phase::Spare { game, leader, .. },
                Report::Exited {
                    game: g, status, ..
                },
            ) if *game == g => {
                tracing::warn!(status, "the spare's game ended; starting another");
                let leader = leader.clone();
                std::thread::sleep(RETRY);
                self.follow(keeper, &leader);
                None
            }
            (Phase::Primary { game, running, .. }, Report::Resumed { game: g, .. })
                if *game == g =>
            {
                *running = true;
                None
            }
            (
                Phase::Primary {
                    epoch,
                    game,
                    running,
                },
                Report::Exited {
                    game: g,
                    success,
                    status,
                },
            ) if *game == g => {
                let epoch = *epoch;
                let end = primary_end(*running, success);
                if end == PrimaryEnd::NeverLed {
                    // A spare's game that ended (told goodbye, or its stream ended) just as
                    // this node won the campaign: it never led, and the session is not over.
                    tracing::warn!(
                        epoch,
                        status,
                        "the spare's game ended before its promotion took effect: revoking the lease"
                    );
                    self.events
                        .emit("promotion_failed", json!({"epoch":epoch,"status":status}));
                    return Some(Next::Revoke);
                }
                if end == PrimaryEnd::Finished {
                    tracing::info!(epoch, "the game ended on purpose: the session is over");
                    // Its spare, told goodbye, ends cleanly too: this record tells its agent
                    // that the session is over (a spare ends cleanly for other reasons too).
                    if let Err(e) = self.coord.record_finished(epoch) {
                        tracing::warn!(error = %e, epoch, "cannot record the finished game");
                    }
                    self.phase = Phase::Finished { epoch };
                    return None;
                }
                tracing::warn!(epoch, status, "the primary's game died: revoking the lease");
                Some(Next::Revoke)
            }
            (_, r) => {
                tracing::debug!(?r, "report ignored");
                None
            }
        }
    }

    /// A spare's campaign: promote the game on a win, follow the winner on a loss.
    fn campaign_as_spare(&mut self, keeper: &LeaseKeeper) {
        let Phase::Spare {
            slot, game, leader, ..
        } = &self.phase
        else {
            return;
        };
        let (slot, game, old) = (*slot, *game, leader.clone());
        let result = self.coord.campaign(&self.me, keeper.lease());
        self.campaign_owed = result.is_err();
        match result {
            Ok(Campaign::Won(epoch)) => {
                if let Err(e) = self.game.send(Order::Promote { epoch }) {
                    tracing::warn!(error = %e, "cannot order the promotion");
                }
                self.events.emit(
                    "leading",
                    json!({"epoch":epoch,"promoted":true,"after":old.epoch}),
                );
                self.phase = Phase::Primary {
                    epoch,
                    game,
                    running: false,
                };
                // The slot first: the old primary's agent, starting over, wants it.
                if let Err(e) = self.coord.release_spare(slot) {
                    tracing::warn!(error = %e, "cannot give the spare slot up");
                }
                self.after_win(keeper, epoch);
            }
            Ok(Campaign::Lost(l)) => {
                if l.epoch > old.epoch && l.node.name != self.me.name {
                    self.leader = Some(l.clone());
                    self.follow(keeper, &l);
                }
            }
            Err(e) => tracing::warn!(error = %e, "campaign failed; retrying"),
        }
    }

    fn after_win(&mut self, keeper: &LeaseKeeper, epoch: Epoch) {
        if let Err(e) = self.coord.record_leader(epoch, &self.me.name) {
            tracing::warn!(error = %e, epoch, "cannot record the history");
        }
        self.publish(keeper, NodeState::Primary { epoch });
    }

    /// (Re)starts this node's spare game, following `leader`; the slot is already held.
    fn follow(&mut self, keeper: &LeaseKeeper, leader: &Leader) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let slot = match &self.phase {
            Phase::Spare { slot, .. } => *slot,
            _ => return,
        };
        let game = self.next_game;
        self.next_game += 1;
        if let Err(e) = self.game.send(Order::StartSpare {
            game,
            leader: leader.node.clone(),
            epoch: leader.epoch,
            config,
        }) {
            tracing::warn!(error = %e, "cannot start a spare");
            return;
        }
        self.phase = Phase::Spare {
            leader: leader.clone(),
            slot,
            game,
            holding: false,
            silent_since: None,
        };
        self.publish(keeper, NodeState::Spare { synced: false });
    }

    /// What the node does when nothing arrived: look for a role, or the fast path.
    fn step(&mut self, keeper: &LeaseKeeper) {
        match &self.phase {
            Phase::Spare { holding: true, .. }
                if self.campaign_owed
                    && self.leader.is_none()
                    && self.last_try.is_none_or(|t| t.elapsed() >= RETRY) =>
            {
                self.last_try = Some(Instant::now());
                self.campaign_as_spare(keeper);
            }
            Phase::Idle => {
                if self.last_try.is_some_and(|t| t.elapsed() < RETRY) {
                    return;
                }
                self.last_try = Some(Instant::now());
                if let Err(e) = self.find_role(keeper) {
                    tracing::debug!(error = %e, "looking for a role failed; retrying");
                }
            }
            Phase::Spare {
                leader,
                silent_since: Some(since),
                ..
            } if self
                .leader
                .as_ref()
                .is_some_and(|l| l.epoch == leader.epoch)
                && since.elapsed() >= self.resync_after() =>
            {
                // The primary still holds its lease, long after its stream went quiet: it lives
                // but this spare lost it (a partition between them, healed or not). A spare
                // that never hears it again is no spare: start one that connects anew.
                let leader = leader.clone();
                // Confirmed by a linearizable read, not only by the watch.
                match self.coord.leader() {
                    Ok(Some(l)) if l.epoch == leader.epoch => {
                        tracing::warn!(
                            epoch = leader.epoch,
                            "the spare lost its primary's stream; starting another"
                        );
                        self.follow(keeper, &leader);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot confirm the leader"),
                }
            }
            Phase::Spare {
                leader,
                holding: true,
                silent_since: Some(_),
                ..
            } => {
                if self.last_suspect_poll.elapsed() < SUSPECT_POLL {
                    return;
                }
                self.last_suspect_poll = Instant::now();
                let epoch = leader.epoch;
                match self.coord.suspected(epoch) {
                    Ok(true) => match self.coord.depose(epoch) {
                        Ok(true) => {
                            self.events.emit("deposed", json!({"epoch":epoch}));
                            self.leader = None;
                            self.campaign_as_spare(keeper);
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "depose failed"),
                    },
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the suspicion"),
                }
            }
            _ => {}
        }
    }

    /// How long a spare's stream may stay silent while its primary keeps the lead before the
    /// spare is started again: past three times the lease's TTL, a dead or cut-off primary has
    /// lost the lead (its lease expired), so one that still leads is alive and only
    /// unreachable from this spare.
    fn resync_after(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.opts.ttl_s.max(1)).unwrap_or(1) * 3)
    }

    fn find_role(&mut self, keeper: &LeaseKeeper) -> Result<(), CoordError> {
        let Some(config) = self.config_now()? else {
            return Ok(());
        };
        match self.leader.clone() {
            None => {
                let history = self.coord.history()?;
                if let Some((game, mine)) = self.suspended {
                    // This node's suspended game led last: nobody took over, it is the
                    // game's only copy, and it may lead again. Led by another since: its
                    // state is gone by.
                    if history
                        .last()
                        .is_some_and(|(e, n)| *e == mine && *n == self.me.name)
                    {
                        self.lead_suspended(keeper, game, mine)?;
                    } else {
                        self.kill_suspended("another node led since");
                    }
                    return Ok(());
                }
                if !history.is_empty() {
                    // A session that had a primary: only a spare holding a checkpoint may go
                    // on with it; this node holds none.
                    return Ok(());
                }
                match self.coord.campaign(&self.me, keeper.lease())? {
                    Campaign::Won(epoch) => {
                        let game = self.next_game;
                        self.next_game += 1;
                        if let Err(e) = self.game.send(Order::StartPrimary {
                            game,
                            epoch,
                            config,
                        }) {
                            tracing::warn!(error = %e, "cannot start the primary");
                        }
                        self.events
                            .emit("leading", json!({"epoch":epoch,"promoted":false}));
                        self.phase = Phase::Primary {
                            epoch,
                            game,
                            running: true,
                        };
                        self.after_win(keeper, epoch);
                    }
                    Campaign::Lost(l) => self.leader = Some(l),
                }
            }
            Some(l) if l.node.name == self.me.name => {
                // Our previous incarnation's key, on its way out.
            }
            Some(l) => {
                self.kill_suspended("another node leads");
                if let SpareSlot::Taken(slot) =
                    self.coord.take_spare(&self.me.name, keeper.lease())?
                {
                    self.phase = Phase::Spare {
                        leader: l.clone(),
                        slot,
                        game: 0,
                        holding: false,
                        silent_since: None,
                    };
                    self.follow(keeper, &l);
                }
            }
        }
        Ok(())
    }

    /// Campaigns for the suspended game of `epoch`; on a win it continues with the new epoch.
    fn lead_suspended(
        &mut self,
        keeper: &LeaseKeeper,
        game: u64,
        epoch: Epoch,
    ) -> Result<(), CoordError> {
        match self.coord.campaign(&self.me, keeper.lease())? {
            Campaign::Won(won) => {
                self.suspended = None;
                if let Err(e) = self.game.send(Order::Continue { epoch: won }) {
                    tracing::warn!(error = %e, "cannot continue the suspended game");
                }
                tracing::info!(from = epoch, epoch = won, "the suspended game leads again");
                self.events.emit(
                    "leading",
                    json!({"epoch":won,"promoted":false,"continued":true,"after":epoch}),
                );
                self.phase = Phase::Primary {
                    epoch: won,
                    game,
                    running: true,
                };
                self.after_win(keeper, won);
            }
            Campaign::Lost(l) => {
                self.kill_suspended("another node won the lead");
                self.leader = Some(l);
            }
        }
        Ok(())
    }

    fn kill_suspended(&mut self, why: &str) {
        if let Some((game, epoch)) = self.suspended.take() {
            tracing::warn!(game, epoch, why, "the suspended game is killed");
            if let Err(e) = self.game.send(Order::Kill) {
                tracing::warn!(error = %e, "cannot kill the suspended game");
            }
        }
    }

    /// The session's config, once the client has written it.
    fn config_now(&mut self) -> Result<Option<GameConfig>, CoordError> {
        if self.config.is_none()
            && let Some(bytes) = self.coord.config()?
        {
            match serde_json::from_slice::<GameConfig>(&bytes) {
                Ok(c) => self.config = Some(c),
                Err(e) => {
                    return Err(CoordError::BadRecord {
                        key: self.coord.key("config"),
                        why: e.to_string(),
                    });
                }
            }
        }
        Ok(self.config.clone())
    }
}

/// What the end of a primary's game means to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrimaryEnd {
    /// It ended on purpose while it ran: the session is over (`finished` is recorded).
    Finished,
    /// A promoted spare's game ended before its promotion took effect: it never led, the
    /// session is not over (nothing is recorded; the lease goes).
    NeverLed,
    /// It died: the lease goes, and a spare takes over.
    Died,
}

/// The end of a primary's game that `running` (see [`Phase::Primary`]) and exited with
/// `success`.
fn primary_end(running: bool, success: bool) -> PrimaryEnd {
    match (running, success) {
        (true, true) => PrimaryEnd::Finished,
        (false, true) => PrimaryEnd::NeverLed,
        (_, false) => PrimaryEnd::Died,
    }
}

/// Whether the leader's game ended on purpose (its agent's `finished` record). A spare whose
/// game ended, cleanly or not, without it (a goodbye to a replaced connection, a dismissal, a
/// failed connection) starts another; one whose primary finished ends its session. One read,
/// never a wait: the control thread must go on at once.
fn primary_finished(coord: &EtcdSession) -> bool {
    match coord.finished() {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read whether the game finished");
            false
        }
    }
}

/// The leader watch: every change of the leader key goes to the control thread (see
/// [`follow_leader`]: a quiet watch is checked by a read, and made again when it missed a
/// change or failed).
pub fn watch_leader(coord: &EtcdSession, tx: &Sender<Msg>) {
    let never = AtomicBool::new(false);
    follow_leader(coord, &never, |f| match f {
        Followed::Change(c) => tx.send(Msg::Leader(c)).is_ok(),
        Followed::Rewatch(why) => {
            tracing::warn!(why, "watching the leader again");
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{PrimaryEnd, primary_end};

    #[test]
    fn only_a_running_primarys_clean_end_finishes_the_session() {
        assert_eq!(primary_end(true, true), PrimaryEnd::Finished);
        // A spare's clean exit that crossed its own promotion: not a finished game.
        assert_eq!(primary_end(false, true), PrimaryEnd::NeverLed);
        assert_eq!(primary_end(true, false), PrimaryEnd::Died);
        assert_eq!(primary_end(false, false), PrimaryEnd::Died);
    }
}
