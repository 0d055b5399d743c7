//! `failover-harness client`: the user's end of a cluster session (DESIGN.md, "Cluster mode";
//! `docs/CLUSTER.md`). Like mosh, it holds the terminal (or, headless, the script) and the
//! numbered key log; the game runs on whichever host leads.
//!
//! - It creates the session's `config` if there is none (`config_or_init`), else follows the
//!   one in force and says so.
//! - It follows the leader through an etcd watch, connects to the leader's agent
//!   ([`link`]), says `Hello { session, epoch }` with the highest epoch it has seen and, on
//!   `Leading { position }`, gives the key log from `position` on (the shared
//!   [`InputLog`]): what the promoted game's state has not accounted for is replayed,
//!   nothing is given twice.
//! - **The fence** ([`Fence`]): output is accepted from, and keys sent to, only the highest
//!   epoch seen (by the watch or in a frame); a frame of a lower epoch is refused and logged
//!   (`refused`).
//! - Suspicion: hearing nothing from the leader (no output, no heartbeat) for `--suspect-ms`
//!   writes `suspect/<epoch>` (the client's half of the fast path's two witnesses).
//! - Headless ([`headless`]): one input per script byte, `--pace-us` apart, given only while
//!   the leader's spare holds a checkpoint (the local engine's `AfterSync`); prints exactly
//!   the game's final JSON line, as `tetris --headless` would.
//! - Terminal ([`terminal`]): raw mode, the game's screen, a status row (leader node, epoch,
//!   last recovery time), the axe key (`Axe` to the leader's agent) and, with the hidden
//!   `--axe-host-fd N`, a host-axe key that writes the leader's node name to fd N.
//! - `--events FILE` ([`events`]): `leader`, `first_output`, `refused`, `suspect`, `ended`
//!   (and `axe`, `lost`), CLOCK_MONOTONIC microseconds.

pub mod events;
mod headless;
pub mod link;
mod terminal;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hotspare_cluster::coordinator::{Coordinator, EtcdSession, NodeState};
use hotspare_cluster::fence::{Fence, Verdict};
use hotspare_cluster::follow::{Followed, follow_leader};
use hotspare_cluster::proto::{ToAgent, ToClient};
use hotspare_cluster::{Epoch, Leader, LeaderChange};
use hslib::transport::AuthKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::events::EventLog;
use self::link::{EtcdReply, Msg};
use crate::engine::input_log::recovery_ms;
use crate::engine::{InputLog, InputPolicy};

/// How long an etcd call may take.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
/// The TTL of the lease a suspicion is written with (it goes with the client).
const SUSPECT_TTL_S: i64 = 5;
/// How soon a failed withdrawal of a suspicion is tried again.
const WITHDRAW_RETRY: Duration = Duration::from_millis(100);

/// Orders the client's suspicions and their withdrawals, each written by a thread of its own:
/// each takes a generation at once (the client's loop never waits for etcd), and its etcd
/// step runs, one at a time, only while no newer one was asked for. So a suspicion is never
/// written after its withdrawal, and a withdrawal never deletes a newer suspicion.
#[derive(Debug, Default)]
struct Suspicions {
    generation: std::sync::atomic::AtomicU64,
    etcd: std::sync::Mutex<()>,
}

impl Suspicions {
    /// A new step's generation.
    fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The turn of the step of generation `at`, if it is still the newest.
    fn turn(&self, at: u64) -> Option<std::sync::MutexGuard<'_, ()>> {
        let guard = self
            .etcd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (self.generation.load(Ordering::SeqCst) == at).then_some(guard)
    }
}
/// How long a session may have no leader before the client asks etcd whether any node still
/// holds the game (before: a failover may be under way, by lease expiry at the slowest).
const LOST_GRACE: Duration = Duration::from_secs(3);
/// How often it asks again.
const LOST_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a session may have no leader at all before the client gives up.
const LEADERLESS_LIMIT: Duration = Duration::from_secs(60);
/// The wait before connecting again to a leader that refused or failed.
const RETRY: Duration = Duration::from_millis(3);
/// The wait before connecting again after a connection error (not an answer).
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(20);
/// How long a headless game may wait for a spare before the client says so on stderr.
const UNPROTECTED_WARNING: Duration = Duration::from_secs(10);
/// The longest the loop sleeps.
const TICK: Duration = Duration::from_millis(10);
/// A headless client gives no new input to a leader it has not heard from this long (the
/// agent's heartbeats come every 25 ms).
const HOLD_WHEN_SILENT: Duration = Duration::from_millis(60);

/// What `client` was asked for.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// etcd endpoints (`http://IP:PORT[,...]`).
    pub etcd: String,
    /// The session's name.
    pub session: String,
    /// The shared key's file.
    pub key_file: PathBuf,
    /// Hearing nothing from the leader this long writes `suspect/<epoch>`.
    pub suspect: Duration,
    /// Where the events go.
    pub events: Option<PathBuf>,
    /// The game's arguments (`--seed N`, `-l L`, `-k KEYS`, `-p`, `-b`), `--headless` aside.
    pub tetris_args: Vec<String>,
    /// Headless: the script and its pace; `None`: the terminal.
    pub headless: Option<HeadlessOptions>,
    /// The host-axe key writes the leader's node name and `\n` here (`play --hosts`).
    pub axe_host_fd: Option<i32>,
    /// Headless, for tests: axe the leader's game right after the Nth input was given (once
    /// its spare holds a checkpoint).
    pub axe_after: Vec<u64>,
}

/// `--headless --script FILE [--pace-us U]`.
#[derive(Clone, Debug)]
pub struct HeadlessOptions {
    /// The script.
    pub script: PathBuf,
    /// The wait between two inputs.
    pub pace: Duration,
}

/// The session's config as etcd holds it (`/hotspare/<session>/config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The game's arguments.
    pub args: Vec<String>,
    /// Whether the game is headless (pipes) or on a terminal (a pty).
    pub headless: bool,
}

/// Plays the session; the exit code says how it ended.
pub fn client(opts: &ClientOptions) -> anyhow::Result<ExitCode> {
    let key_bytes = hotspare_cluster::keyfile::load(&opts.key_file)?;
    let key = AuthKey::new(key_bytes).context("the key file's key")?;
    let coord = Arc::new(
        EtcdSession::new(&opts.etcd, &opts.session, ETCD_TIMEOUT)
            .with_context(|| format!("session {:?} at {}", opts.session, opts.etcd))?,
    );
    let proposed = Config {
        args: opts.tetris_args.clone(),
        headless: opts.headless.is_some(),
    };
    agree_config(coord.as_ref(), &proposed)?;
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_watch(coord.clone(), tx.clone(), stop.clone())?;
    let events = EventLog::create(opts.events.as_deref())?;
    let mode = match &opts.headless {
        Some(h) => Mode::Headless(headless::Feeder::new(h, &opts.axe_after)?),
        None => Mode::Terminal(Box::new(terminal::Terminal::enter(
            tx.clone(),
            opts.axe_host_fd,
        )?)),
    };
    let mut c = Client::new(opts, coord, key, tx, rx, events, mode);
    let end = c.run();
    stop.store(true, Ordering::Relaxed);
    c.finish(end)
}

/// Writes `proposed` as the session's config if there is none; the config in force (said on
/// stderr when it is another).
fn agree_config(coord: &EtcdSession, proposed: &Config) -> anyhow::Result<Config> {
    let bytes = serde_json::to_vec(proposed).context("encoding the config")?;
    let held = coord
        .config_or_init(&bytes)
        .context("reading or creating the session's config in etcd")?;
    let config: Config = serde_json::from_slice(&held).with_context(|| {
        format!(
            "the session's config is not a client's: {}",
            String::from_utf8_lossy(&held)
        )
    })?;
    if config.headless != proposed.headless {
        bail!(
            "the session's game is {} and this client is {}: use another session",
            if config.headless {
                "headless"
            } else {
                "on a terminal"
            },
            if proposed.headless {
                "headless"
            } else {
                "on a terminal"
            },
        );
    }
    if config.args != proposed.args {
        eprintln!(
            "failover-harness: the session already plays with {:?}; following it (this \
             client's arguments were {:?})",
            config.args, proposed.args
        );
    }
    Ok(config)
}

/// Follows the leader key on a thread (see [`follow_leader`]: a quiet watch is checked by a
/// read, and made again when it missed a change or failed).
fn spawn_watch(
    coord: Arc<EtcdSession>,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("hs-client-watch".to_owned())
        .spawn(move || {
            follow_leader(&*coord, &stop, |f| {
                let msg = match f {
                    Followed::Change(c) => Msg::Leader(c),
                    Followed::Rewatch(why) => Msg::WatchFailed(why),
                };
                tx.send(msg).is_ok()
            });
        })
        .context("cannot start the leader watch's thread")?;
    Ok(())
}

/// Headless or on the terminal.
enum Mode {
    Headless(headless::Feeder),
    Terminal(Box<terminal::Terminal>),
}

/// How the session ended.
#[derive(Debug)]
enum End {
    /// The game ended on purpose; what it printed last (a headless game's result line).
    Finished(Vec<u8>),
    /// The game is lost, or the client could not go on: why.
    Lost(String),
    /// The user ended the client.
    Interrupted,
}

/// A connection to a leader's agent (opening or open).
#[derive(Debug)]
struct Conn {
    id: u64,
    node: String,
    /// The leader epoch it was opened for.
    epoch: Epoch,
    writer: Option<TcpStream>,
    /// The agent answered `Leading` for this epoch.
    leading: bool,
    /// Its game was axed: no more keys to it.
    axed: bool,
    /// The end of input was sent on it.
    end_sent: bool,
    last_heard: Instant,
}

impl Conn {
    fn send(&mut self, msg: &ToAgent) -> bool {
        match &mut self.writer {
            Some(w) => link::send(w, msg),
            None => false,
        }
    }

    fn close(&mut self) {
        if let Some(w) = &self.writer {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

struct Client {
    session: String,
    suspect_after: Duration,
    coord: Arc<EtcdSession>,
    key: AuthKey,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    events: EventLog,
    fence: Fence,
    /// The leader etcd names now (`None` while the key is vacant).
    leader: Option<Leader>,
    /// When the current leader was learned of.
    leader_known_at: Instant,
    /// Since when no node leads.
    vacant_since: Option<Instant>,
    /// Some game has led (answered `Leading`) in this session.
    ever_led: bool,
    next_id: u64,
    conn: Option<Conn>,
    retry_at: Option<Instant>,
    log: InputLog,
    /// The leader's spare holds a checkpoint (its last heartbeat said so).
    synced: bool,
    /// A failover under way: since the kill, or since the loss was first seen.
    recovery: Option<Instant>,
    last_rto_ms: Option<f64>,
    /// The highest epoch whose first output was seen.
    first_output_epoch: Epoch,
    /// The highest epoch suspected.
    suspected: Epoch,
    /// Orders the writes and withdrawals of suspicions.
    suspicion_gen: Arc<Suspicions>,
    /// When the last loss check was asked for.
    lost_check: Option<Instant>,
    check_in_flight: bool,
    /// What the current epoch's game wrote (headless: its result line).
    output: Vec<u8>,
    failovers: u64,
    /// The axe key was pressed; the axe waits for a spare that holds a checkpoint.
    axe_pending: bool,
    /// The host-axe key waits the same way (`play --hosts`).
    host_axe_pending: bool,
    /// Since when the leader's spare holds no checkpoint (headless input waits meanwhile).
    unsynced_since: Option<Instant>,
    /// That wait was reported on stderr.
    unsynced_warned: bool,
    end: Option<End>,
    mode: Mode,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &ClientOptions,
        coord: Arc<EtcdSession>,
        key: AuthKey,
        tx: Sender<Msg>,
        rx: Receiver<Msg>,
        events: EventLog,
        mode: Mode,
    ) -> Self {
        Self {
            session: opts.session.clone(),
            suspect_after: opts.suspect,
            coord,
            key,
            tx,
            rx,
            events,
            fence: Fence::new(),
            leader: None,
            leader_known_at: Instant::now(),
            vacant_since: Some(Instant::now()),
            ever_led: false,
            next_id: 0,
            conn: None,
            retry_at: None,
            log: InputLog::new(),
            synced: false,
            recovery: None,
            last_rto_ms: None,
            first_output_epoch: 0,
            suspected: 0,
            suspicion_gen: Arc::new(Suspicions::default()),
            lost_check: None,
            check_in_flight: false,
            output: Vec::new(),
            failovers: 0,
            axe_pending: false,
            host_axe_pending: false,
            unsynced_since: None,
            unsynced_warned: false,
            end: None,
            mode,
        }
    }

    fn run(&mut self) -> End {
        while self.end.is_none() {
            if let Err(e) = self.step() {
                return End::Lost(format!("{e:#}"));
            }
            if self.end.is_some() {
                break;
            }
            let timeout = self.timeout();
            match self.rx.recv_timeout(timeout) {
                Ok(msg) => {
                    if let Err(e) = self.handle(msg) {
                        return End::Lost(format!("{e:#}"));
                    }
                    // Everything already queued, before acting on it.
                    while let Ok(msg) = self.rx.try_recv() {
                        if let Err(e) = self.handle(msg) {
                            return End::Lost(format!("{e:#}"));
                        }
                        if self.end.is_some() {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return End::Lost("the client's threads have all ended".to_owned());
                }
            }
        }
        self.end.take().unwrap_or(End::Interrupted)
    }

    /// How long the loop may sleep.
    fn timeout(&self) -> Duration {
        let now = Instant::now();
        let mut t = TICK;
        if let Some(at) = self.retry_at {
            t = t.min(at.saturating_duration_since(now));
        }
        if let Mode::Headless(f) = &self.mode
            && let Some(at) = f.next_at()
        {
            t = t.min(at.saturating_duration_since(now));
        }
        t
    }

    /// The current connection, if its agent leads the highest epoch seen.
    fn leading(&mut self) -> Option<&mut Conn> {
        let highest = self.fence.highest();
        self.conn
            .as_mut()
            .filter(|c| c.leading && c.epoch == highest && c.writer.is_some())
    }

    /// The leading game an axe may strike now: not axed yet, its spare holding a checkpoint
    /// (killing a game whose spare holds nothing would lose it).
    fn axable(&mut self) -> Option<&mut Conn> {
        let synced = self.synced;
        self.leading().filter(|c| !c.axed && synced)
    }

    /// What is due now: a connection, keys, a suspicion, a loss check.
    fn step(&mut self) -> anyhow::Result<()> {
        self.connect_if_needed();
        self.warn_unprotected();
        if self.axe_pending && self.axable().is_some() {
            self.axe();
        }
        if self.host_axe_pending && self.axable().is_some() {
            self.axe_host();
        }
        self.pump()?;
        self.check_suspicion();
        self.check_lost();
        if let Mode::Terminal(t) = &mut self.mode {
            let row = status_row(
                self.conn
                    .as_ref()
                    .filter(|c| c.leading)
                    .map(|c| c.node.as_str()),
                self.fence.highest(),
                self.failovers,
                self.last_rto_ms,
                self.recovery.is_some() || !self.conn.as_ref().is_some_and(|c| c.leading),
                self.axe_pending || self.host_axe_pending,
            );
            t.status(&row)?;
        }
        Ok(())
    }

    fn connect_if_needed(&mut self) {
        let Some(leader) = &self.leader else { return };
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        if leader.epoch < self.fence.highest() {
            return;
        }
        if self.conn.as_ref().is_some_and(|c| c.epoch >= leader.epoch) {
            return;
        }
        if let Some(mut old) = self.conn.take() {
            old.close();
        }
        let addr: SocketAddr = match leader.node.client_addr.parse() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(addr = leader.node.client_addr, error = %e, "a leader's client address does not parse");
                self.retry_at = Some(Instant::now() + Duration::from_millis(200));
                return;
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        tracing::info!(id, node = leader.node.name, epoch = leader.epoch, %addr, "connecting to the leader");
        self.conn = Some(Conn {
            id,
            node: leader.node.name.clone(),
            epoch: leader.epoch,
            writer: None,
            leading: false,
            axed: false,
            end_sent: false,
            last_heard: Instant::now(),
        });
        self.retry_at = None;
        link::open(
            id,
            addr,
            self.key.clone(),
            ToAgent::Hello {
                session: self.session.clone(),
                epoch: self.fence.highest(),
                suspect_ms: u32::try_from(self.suspect_after.as_millis()).unwrap_or(u32::MAX),
            },
            self.tx.clone(),
        );
    }

    fn handle(&mut self, msg: Msg) -> anyhow::Result<()> {
        match msg {
            Msg::Leader(change) => self.on_leader(change),
            Msg::WatchFailed(why) => {
                tracing::warn!(why, "the leader watch failed; watching again");
            }
            Msg::Connected { id, writer } => match &mut self.conn {
                Some(c) if c.id == id => c.writer = Some(writer),
                _ => {
                    let _ = writer.shutdown(Shutdown::Both);
                }
            },
            Msg::Frame { id, msg } => self.on_frame(id, msg)?,
            Msg::Closed { id, why } => self.on_closed(id, &why),
            Msg::Etcd(reply) => self.on_etcd(reply),
            Msg::Stdin(bytes) => self.on_keys(&bytes),
            Msg::StdinClosed => {
                self.end = Some(End::Lost("the terminal went away".to_owned()));
            }
            Msg::Signal(s) => {
                if let Mode::Terminal(t) = &mut self.mode
                    && t.on_signal(s)?
                {
                    let (rows, cols) = t.game_size();
                    if let Some(c) = self.leading() {
                        c.send(&ToAgent::Resize { rows, cols });
                    }
                } else {
                    self.end = Some(End::Lost(format!("the client got signal {s}")));
                }
            }
        }
        Ok(())
    }

    fn on_leader(&mut self, change: LeaderChange) {
        match change {
            LeaderChange::Elected(l) => {
                tracing::info!(
                    node = l.node.name,
                    epoch = l.epoch,
                    "the watch sees a leader"
                );
                if l.epoch < self.fence.highest() {
                    // An older incarnation read late: the fence knows better.
                    return;
                }
                if let Verdict::Newer { .. } = self.fence.admit(l.epoch) {
                    self.note_leader(l.epoch, &l.node.name);
                }
                if self.leader.as_ref().is_none_or(|old| old.epoch != l.epoch) {
                    self.leader_known_at = Instant::now();
                }
                self.vacant_since = None;
                self.leader = Some(l);
                self.retry_at = None;
            }
            LeaderChange::Vacant { revision } => {
                tracing::info!(revision, "the watch sees no leader");
                if self.ever_led {
                    self.recovery.get_or_insert_with(Instant::now);
                }
                self.leader = None;
                self.vacant_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn note_leader(&mut self, epoch: Epoch, node: &str) {
        self.events.note(
            "leader",
            &[("epoch", Value::from(epoch)), ("node", Value::from(node))],
        );
    }

    fn refuse(&mut self, epoch: Epoch, what: &str) {
        let highest = self.fence.highest();
        tracing::info!(epoch, highest, what, "refused a frame of a stale epoch");
        self.events.note(
            "refused",
            &[
                ("epoch", Value::from(epoch)),
                ("highest", Value::from(highest)),
                ("frame", Value::from(what)),
            ],
        );
    }

    fn on_frame(&mut self, id: u64, msg: ToClient) -> anyhow::Result<()> {
        let epoch = match &msg {
            ToClient::Leading { epoch, .. }
            | ToClient::Output { epoch, .. }
            | ToClient::Heartbeat { epoch, .. }
            | ToClient::Ended { epoch, .. } => *epoch,
            ToClient::NotLeading { epoch } => {
                // Not a leader's word: nothing to fence. It may know of a newer leader.
                let epoch = *epoch;
                if let Some(c) = self.conn.as_mut().filter(|c| c.id == id) {
                    tracing::debug!(epoch, node = c.node, "the agent does not lead (yet)");
                    c.close();
                }
                return Ok(());
            }
        };
        let what = match &msg {
            ToClient::Leading { .. } => "leading",
            ToClient::Output { .. } => "output",
            ToClient::Heartbeat { .. } => "heartbeat",
            ToClient::Ended { .. } => "ended",
            ToClient::NotLeading { .. } => "not_leading",
        };
        let verdict = self.fence.admit(epoch);
        if !verdict.accepted() {
            self.refuse(epoch, what);
            if let Some(c) = self.conn.as_mut().filter(|c| c.id == id) {
                c.close();
            }
            return Ok(());
        }
        let current = self.conn.as_ref().is_some_and(|c| c.id == id);
        if !current {
            // A connection given up for a newer one, whose epoch is still the highest (the
            // same leader reached again): its frames are the same game's, but the current
            // connection speaks for it.
            tracing::debug!(id, epoch, what, "a frame on a connection given up");
            return Ok(());
        }
        if let Verdict::Newer { .. } = verdict {
            let node = self
                .conn
                .as_ref()
                .map(|c| c.node.clone())
                .unwrap_or_default();
            self.note_leader(epoch, &node);
        }
        match msg {
            ToClient::Leading {
                epoch,
                node,
                position,
            } => self.on_leading(epoch, &node, position)?,
            ToClient::Output { epoch, bytes } => {
                self.heard(epoch);
                if let Mode::Terminal(t) = &mut self.mode {
                    t.forward(&bytes)?;
                } else {
                    self.output.extend_from_slice(&bytes);
                }
            }
            ToClient::Heartbeat {
                epoch,
                stamp,
                position,
                spare_synced,
            } => {
                // At once: the agent relays to this client only while its echoes are fresh
                // (the relay's hold, in `hotspare_cluster::proto`).
                if let Some(c) = self.conn.as_mut() {
                    c.send(&ToAgent::Echo { stamp });
                }
                self.heard(epoch);
                self.synced = spare_synced;
                if spare_synced {
                    self.unsynced_since = None;
                } else {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                tracing::trace!(epoch, position, spare_synced, "heartbeat");
            }
            ToClient::Ended {
                epoch,
                finished,
                output,
            } => {
                self.events.note(
                    "ended",
                    &[
                        ("epoch", Value::from(epoch)),
                        ("finished", Value::from(finished)),
                    ],
                );
                if finished {
                    let out = if output.is_empty() {
                        std::mem::take(&mut self.output)
                    } else {
                        output
                    };
                    self.end = Some(End::Finished(out));
                } else {
                    tracing::info!(epoch, "the leader's game was killed: a failover follows");
                    self.recovery.get_or_insert_with(Instant::now);
                    if let Some(mut c) = self.conn.take() {
                        c.close();
                    }
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
            ToClient::NotLeading { .. } => {}
        }
        Ok(())
    }

    /// The agent leads `epoch` and its game accounts for `position` bytes of the log.
    fn on_leading(&mut self, epoch: Epoch, node: &str, position: u64) -> anyhow::Result<()> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        c.leading = true;
        c.epoch = epoch;
        c.node = node.to_owned();
        c.last_heard = Instant::now();
        let first_of_epoch = epoch > self.first_output_epoch;
        if first_of_epoch && self.ever_led {
            // A failover: whatever the dead game wrote is not this one's.
            self.output.clear();
        }
        self.ever_led = true;
        self.synced = false;
        self.unsynced_since = Some(Instant::now());
        self.unsynced_warned = false;
        let replayed = self.log.resume_at(position);
        tracing::info!(epoch, node, position, replayed, "the leader's game leads");
        if let Mode::Terminal(t) = &mut self.mode {
            // A new game, or the same one reached again after a break: either way what it
            // drew meanwhile was shown to nobody.
            let redraw = t.new_game()?;
            self.log.push(&redraw);
            let (rows, cols) = t.game_size();
            if let Some(c) = self.leading() {
                c.send(&ToAgent::Resize { rows, cols });
            }
        }
        if let Mode::Headless(f) = &mut self.mode {
            f.new_leader();
        }
        Ok(())
    }

    /// A frame from the leading game of `epoch`: the end of a recovery if it is its first.
    fn heard(&mut self, epoch: Epoch) {
        let now = Instant::now();
        if epoch == self.suspected && epoch > 0 {
            self.withdraw_suspicion(epoch);
        }
        if let Some(c) = self.conn.as_mut() {
            c.last_heard = now;
        }
        if epoch > self.first_output_epoch {
            let first = self.first_output_epoch > 0;
            self.first_output_epoch = epoch;
            let mut fields = vec![("epoch", Value::from(epoch))];
            if let Some(since) = self.recovery.take() {
                let ms = recovery_ms(since, now);
                self.last_rto_ms = Some(ms);
                fields.push(("recovery_ms", Value::from(ms)));
            }
            if first {
                self.failovers += 1;
            }
            self.events.note("first_output", &fields);
        } else if epoch == self.first_output_epoch {
            // The same game reached again (a connection lost and made again).
            self.recovery = None;
        }
    }

    fn on_closed(&mut self, id: u64, why: &str) {
        let Some(c) = self.conn.as_ref().filter(|c| c.id == id) else {
            return;
        };
        tracing::info!(
            id,
            node = c.node,
            epoch = c.epoch,
            why,
            "the connection to the leader ended"
        );
        if c.leading {
            self.recovery.get_or_insert_with(Instant::now);
        }
        let delay = if c.writer.is_some() {
            RETRY
        } else {
            RETRY_AFTER_ERROR
        };
        self.conn = None;
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Keys the user typed (terminal mode).
    fn on_keys(&mut self, bytes: &[u8]) {
        let Mode::Terminal(t) = &mut self.mode else {
            return;
        };
        let actions = t.keys(bytes);
        for a in actions {
            match a {
                terminal::Action::Keys(k) => self.log.push(&k),
                terminal::Action::Axe => self.axe(),
                terminal::Action::AxeHost => self.axe_host(),
                terminal::Action::Interrupt => {
                    if let Some(c) = self.leading() {
                        c.send(&ToAgent::Signal(libc::SIGINT));
                    } else {
                        self.end = Some(End::Interrupted);
                    }
                }
            }
        }
    }

    /// Asks the leader's agent to SIGKILL its game, once its spare holds a checkpoint (until
    /// then, and while no game leads, the axe waits: killing a game whose spare holds nothing
    /// would lose it).
    fn axe(&mut self) {
        let Some(c) = self.axable() else {
            tracing::info!("axe: waits for a leader whose spare holds a checkpoint");
            self.axe_pending = true;
            return;
        };
        let epoch = c.epoch;
        let sent = c.send(&ToAgent::Axe);
        if sent {
            c.axed = true;
        }
        self.axe_pending = false;
        if sent {
            self.recovery = Some(Instant::now());
            self.events.note("axe", &[("epoch", Value::from(epoch))]);
        }
    }

    /// Asks `play --hosts` to axe the leader's whole host, once its spare holds a checkpoint
    /// (as the axe key waits); the recovery time runs from here, since nothing the client
    /// hears tells when a silent host died.
    fn axe_host(&mut self) {
        let Some(c) = self.axable() else {
            tracing::info!("host axe: waits for a leader whose spare holds a checkpoint");
            self.host_axe_pending = true;
            return;
        };
        let (node, epoch) = (c.node.clone(), c.epoch);
        self.host_axe_pending = false;
        let Mode::Terminal(t) = &mut self.mode else {
            return;
        };
        // Keys still go to the axed host's game until the failover: the log replays what
        // it did not account for.
        if t.axe_host(&node) {
            self.recovery = Some(Instant::now());
            self.events.note(
                "axe-host",
                &[("epoch", Value::from(epoch)), ("node", Value::from(node))],
            );
        }
    }

    /// Gives the leader what it has not had of the log, as the mode allows.
    fn pump(&mut self) -> anyhow::Result<()> {
        let synced = self.synced;
        let Some(conn) = self
            .conn
            .as_mut()
            .filter(|c| c.leading && c.writer.is_some() && !c.axed)
        else {
            return Ok(());
        };
        if conn.epoch != self.fence.highest() {
            return Ok(());
        }
        match &mut self.mode {
            Mode::Terminal(_) => {
                if !self.log.pending().is_empty() && InputPolicy::Immediate.allows(synced) {
                    give(conn, &mut self.log);
                }
            }
            Mode::Headless(feeder) => {
                if !InputPolicy::AfterSync.allows(synced) {
                    return Ok(());
                }
                // A leader silent past a few heartbeats may be cut off: new inputs wait, so
                // that they do not fill the socket's buffer and block this loop in a write
                // (which would delay the suspicion past --suspect-ms).
                if conn.last_heard.elapsed() > HOLD_WHEN_SILENT {
                    return Ok(());
                }
                // What an earlier leader was given and this one has not accounted for first.
                if !self.log.pending().is_empty() {
                    give(conn, &mut self.log);
                    return Ok(());
                }
                if feeder.axe_due(self.log.len() as u64) {
                    let epoch = conn.epoch;
                    if conn.send(&ToAgent::Axe) {
                        conn.axed = true;
                        self.recovery = Some(Instant::now());
                        self.events.note("axe", &[("epoch", Value::from(epoch))]);
                    }
                    return Ok(());
                }
                if let Some(inputs) = feeder.next_inputs(self.log.len() as u64)? {
                    self.log.push(&inputs);
                    give(conn, &mut self.log);
                    return Ok(());
                }
                if feeder.ended() && !conn.end_sent {
                    let length = self.log.len() as u64;
                    if conn.send(&ToAgent::EndInput { offset: length }) {
                        tracing::info!(length, "the script has ended: the input ends");
                        conn.end_sent = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// The suspected leader of `epoch` speaks again: `suspect/<epoch>` is deleted, or a
    /// later silence of the spare alone (a primary|spare partition) would find it and depose
    /// a primary this client hears (the fast path needs two witnesses at the same time).
    fn withdraw_suspicion(&mut self, epoch: Epoch) {
        self.suspected = epoch - 1;
        self.events
            .note("unsuspect", &[("epoch", Value::from(epoch))]);
        let coord = self.coord.clone();
        let generation = self.suspicion_gen.clone();
        let at_gen = generation.bump();
        let spawned = std::thread::Builder::new()
            .name("hs-client-unsuspect".to_owned())
            .spawn(move || {
                let key = coord.key(&format!("suspect/{epoch}"));
                // Tried again until it is gone (the relay's hold counts on no stale
                // suspicion outliving the silence it recorded), at most for the key's own
                // lease, or until a newer suspicion or withdrawal takes over.
                let until = Instant::now() + Duration::from_secs(SUSPECT_TTL_S.unsigned_abs());
                loop {
                    let Some(turn) = generation.turn(at_gen) else {
                        return;
                    };
                    match coord.client().delete(key.as_bytes()) {
                        Ok(_) => return,
                        Err(e) if Instant::now() >= until => {
                            tracing::warn!(epoch, error = %e, "cannot withdraw a suspicion");
                            return;
                        }
                        Err(e) => tracing::debug!(epoch, error = %e, "withdrawal failed; again"),
                    }
                    drop(turn);
                    std::thread::sleep(WITHDRAW_RETRY);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the suspicion's thread");
        }
    }

    /// Says once on stderr when a headless game has waited long for a spare (its input is
    /// given only while one holds a checkpoint: with no host left to run one, it waits until
    /// one comes back).
    fn warn_unprotected(&mut self) {
        if self.unsynced_warned || !matches!(self.mode, Mode::Headless(_)) {
            return;
        }
        let Some(since) = self.unsynced_since else {
            return;
        };
        if since.elapsed() < UNPROTECTED_WARNING {
            return;
        }
        self.unsynced_warned = true;
        let node = self
            .conn
            .as_ref()
            .filter(|c| c.leading)
            .map_or_else(|| "-".to_owned(), |c| c.node.clone());
        eprintln!(
            "failover-harness: the leader ({node}, epoch {}) has had no spare holding a \
             checkpoint for {:.0?}; the script's inputs wait for one (start an agent on another \
             host)",
            self.fence.highest(),
            since.elapsed()
        );
    }

    /// Writes `suspect/<epoch>` when the leader has been silent too long.
    fn check_suspicion(&mut self) {
        let Some(leader) = &self.leader else { return };
        let epoch = leader.epoch;
        if epoch <= self.suspected || epoch != self.fence.highest() {
            return;
        }
        let now = Instant::now();
        let heard = match &self.conn {
            Some(c) if c.epoch == epoch && c.leading => c.last_heard,
            // Never reached yet: suspected only after a longer wait (it may be starting).
            _ => self.leader_known_at + Duration::from_secs(1),
        };
        if now.saturating_duration_since(heard) < self.suspect_after {
            return;
        }
        self.suspected = epoch;
        let coord = self.coord.clone();
        let tx = self.tx.clone();
        let generation = self.suspicion_gen.clone();
        let at_gen = generation.bump();
        let silent_ms = now.saturating_duration_since(heard).as_millis();
        tracing::info!(epoch, silent_ms, "the leader is silent: suspected");
        self.events.note(
            "suspect",
            &[
                ("epoch", Value::from(epoch)),
                (
                    "silent_ms",
                    Value::from(u64::try_from(silent_ms).unwrap_or(0)),
                ),
            ],
        );
        let spawned = std::thread::Builder::new()
            .name("hs-client-suspect".to_owned())
            .spawn(move || {
                let Some(turn) = generation.turn(at_gen) else {
                    // Withdrawn before it was written.
                    return;
                };
                let r = coord
                    .grant(SUSPECT_TTL_S)
                    .and_then(|lease| coord.suspect(epoch, Some(lease)));
                drop(turn);
                let reply = match r {
                    Ok(()) => EtcdReply::Suspected(epoch),
                    Err(e) => EtcdReply::SuspectFailed(epoch, e.to_string()),
                };
                let _ = tx.send(Msg::Etcd(reply));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the suspicion's thread");
        }
    }

    /// With no leader for a while, asks etcd whether any node still holds the game.
    fn check_lost(&mut self) {
        let Some(since) = self.vacant_since else {
            return;
        };
        let vacant = since.elapsed();
        if vacant > LEADERLESS_LIMIT {
            self.end = Some(End::Lost(format!(
                "no node has led session {:?} for {vacant:.0?}: the game is lost",
                self.session
            )));
            return;
        }
        if vacant < LOST_GRACE
            || self.check_in_flight
            || self
                .lost_check
                .is_some_and(|t| t.elapsed() < LOST_CHECK_EVERY)
        {
            return;
        }
        self.check_in_flight = true;
        self.lost_check = Some(Instant::now());
        let coord = self.coord.clone();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("hs-client-lost".to_owned())
            .spawn(move || {
                let reply = match lost(coord.as_ref()) {
                    Ok(v) => EtcdReply::Lost(v),
                    Err(e) => EtcdReply::CheckFailed(e.to_string()),
                };
                let _ = tx.send(Msg::Etcd(reply));
            });
        if spawned.is_err() {
            self.check_in_flight = false;
        }
    }

    fn on_etcd(&mut self, reply: EtcdReply) {
        match reply {
            EtcdReply::Suspected(epoch) => tracing::info!(epoch, "suspicion written"),
            EtcdReply::SuspectFailed(epoch, why) => {
                tracing::warn!(epoch, why, "cannot write the suspicion");
            }
            EtcdReply::Lost(why) => {
                self.check_in_flight = false;
                if let Some(why) = why
                    && self.leader.is_none()
                {
                    self.end = Some(End::Lost(why));
                }
            }
            EtcdReply::CheckFailed(why) => {
                self.check_in_flight = false;
                tracing::warn!(why, "cannot ask etcd whether the game is lost");
            }
        }
    }

    /// Ends the session: the terminal back, the result printed, the exit code.
    fn finish(mut self, end: End) -> anyhow::Result<ExitCode> {
        if let Some(mut c) = self.conn.take() {
            c.close();
        }
        let epoch = self.fence.highest();
        if let End::Lost(why) = &end {
            self.events.note(
                "lost",
                &[
                    ("epoch", Value::from(epoch)),
                    ("why", Value::from(why.as_str())),
                ],
            );
        }
        let headless = matches!(self.mode, Mode::Headless(_));
        if let Mode::Terminal(t) = &mut self.mode {
            t.restore();
        }
        match end {
            End::Finished(out) if headless => {
                headless::print_result(&out)?;
                Ok(ExitCode::SUCCESS)
            }
            End::Finished(_) | End::Interrupted => Ok(ExitCode::SUCCESS),
            End::Lost(why) => {
                eprintln!("failover-harness: {why}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Sends the leader what it has not had of the log.
fn give(conn: &mut Conn, log: &mut InputLog) {
    let offset = log.given() as u64;
    let bytes = log.pending().to_vec();
    let n = bytes.len();
    if conn.send(&ToAgent::Keys { offset, bytes }) {
        log.gave(n);
    }
}

/// Whether the session's game is lost: `Some(why)` when a game has led (the history is not
/// empty) and no node's spare holds a checkpoint.
fn lost(coord: &EtcdSession) -> Result<Option<String>, hotspare_cluster::coordinator::CoordError> {
    if coord.leader()?.is_some() {
        return Ok(None);
    }
    let history = coord.history()?;
    let Some((epoch, node)) = history.last() else {
        return Ok(None);
    };
    let nodes = coord.nodes()?;
    if nodes
        .iter()
        .any(|n| n.state == NodeState::Spare { synced: true })
    {
        return Ok(None);
    }
    let names: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} ({:?})", n.name, n.state))
        .collect();
    Ok(Some(format!(
        "no node leads and none holds a checkpoint of the game (the last leader was {node}, \
         epoch {epoch}; nodes: {}): the game is lost",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )))
}

/// The status row's text: the axe keys, the leader, its epoch, the failovers and the last
/// recovery time.
fn status_row(
    node: Option<&str>,
    epoch: Epoch,
    failovers: u64,
    last_rto_ms: Option<f64>,
    failing_over: bool,
    axe_pending: bool,
) -> String {
    let mut fields = Vec::new();
    if failing_over {
        fields.push("FAILING OVER".to_owned());
    } else if axe_pending {
        fields.push("axe waits for the spare".to_owned());
    }
    fields.push(format!("{} axe", crate::statusrow::AXE_NAME));
    let rto = last_rto_ms.map_or_else(String::new, |ms| format!(" ({ms:.1}ms)"));
    fields.push(format!("failovers {failovers}{rto}"));
    fields.push(format!("leader {}", node.unwrap_or("-")));
    fields.push(format!("epoch {epoch}"));
    fields.join("|")
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;

    use hotspare_cluster::coordinator::NodeInfo;
    use hotspare_cluster::proto::read_frame;

    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A headless client (no etcd call is made by what these tests drive).
    fn client(dir: &Path) -> Client {
        let script = dir.join("script");
        ok(std::fs::write(&script, b"jkl..q"));
        let opts = ClientOptions {
            etcd: "http://127.0.0.1:1".to_owned(),
            session: "t".to_owned(),
            key_file: dir.join("key"),
            suspect: Duration::from_millis(150),
            events: Some(dir.join("events")),
            tetris_args: Vec::new(),
            headless: Some(HeadlessOptions {
                script,
                pace: Duration::ZERO,
            }),
            axe_host_fd: None,
            axe_after: Vec::new(),
        };
        let coord = Arc::new(ok(EtcdSession::new(
            &opts.etcd,
            &opts.session,
            Duration::from_secs(1),
        )));
        let key = ok(AuthKey::new(vec![1u8; 32]));
        let (tx, rx) = mpsc::channel();
        let events = ok(EventLog::create(opts.events.as_deref()));
        let feeder = ok(headless::Feeder::new(
            opts.headless.as_ref().unwrap_or_else(|| panic!("headless")),
            &[],
        ));
        Client::new(&opts, coord, key, tx, rx, events, Mode::Headless(feeder))
    }

    /// Gives `c` an open connection `id` for `epoch`; returns the agent's end.
    fn attach(c: &mut Client, id: u64, epoch: Epoch, node: &str) -> TcpStream {
        let l = ok(TcpListener::bind("127.0.0.1:0"));
        let writer = ok(TcpStream::connect(ok(l.local_addr())));
        let (agent, _) = ok(l.accept());
        c.conn = Some(Conn {
            id,
            node: node.to_owned(),
            epoch,
            writer: Some(writer),
            leading: false,
            axed: false,
            end_sent: false,
            last_heard: Instant::now(),
        });
        agent
    }

    fn leader(name: &str, epoch: Epoch) -> LeaderChange {
        LeaderChange::Elected(Leader {
            node: NodeInfo {
                name: name.to_owned(),
                stream_addr: String::new(),
                client_addr: "127.0.0.1:1".to_owned(),
                state: NodeState::Primary { epoch },
            },
            epoch,
        })
    }

    fn events(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("events"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    #[test]
    fn only_the_newest_suspicion_step_gets_its_turn() {
        let s = Suspicions::default();
        let suspicion = s.bump();
        let withdrawal = s.bump();
        assert!(
            s.turn(suspicion).is_none(),
            "a suspicion written after its withdrawal"
        );
        assert!(s.turn(withdrawal).is_some());
        let newer = s.bump();
        assert!(
            s.turn(withdrawal).is_none(),
            "a withdrawal deleting a newer suspicion"
        );
        assert!(s.turn(newer).is_some());
    }

    #[test]
    fn the_status_row_names_the_leader_the_epoch_and_the_last_recovery() {
        assert_eq!(
            status_row(Some("b"), 13, 2, Some(12.34), false, false),
            "^X axe|failovers 2 (12.3ms)|leader b|epoch 13"
        );
        assert_eq!(
            status_row(None, 13, 2, None, true, false),
            "FAILING OVER|^X axe|failovers 2|leader -|epoch 13"
        );
        assert!(status_row(Some("a"), 5, 0, None, false, true).starts_with("axe waits"));
    }

    #[test]
    fn frames_of_a_lower_epoch_are_refused_once_a_higher_one_is_known() {
        let dir = ok(tempfile::tempdir());
        let mut c = client(dir.path());
        let _agent = attach(&mut c, 1, 5, "a");
        ok(c.on_frame(
            1,
            ToClient::Leading {
                epoch: 5,
                node: "a".into(),
                position: 0,
            },
        ));
        ok(c.on_frame(
            1,
            ToClient::Output {
                epoch: 5,
                bytes: b"x".to_vec(),
            },
        ));
        assert_eq!(c.output, b"x");
        // etcd names a newer leader: epoch 5 is deposed, whatever its agent still says.
        c.on_leader(leader("b", 7));
        ok(c.on_frame(
            1,
            ToClient::Output {
                epoch: 5,
                bytes: b"y".to_vec(),
            },
        ));
        ok(c.on_frame(
            1,
            ToClient::Ended {
                epoch: 5,
                finished: true,
                output: b"{}\n".to_vec(),
            },
        ));
        assert_eq!(c.output, b"x", "output of a deposed epoch was taken");
        assert!(c.end.is_none(), "a deposed epoch ended the session");
        let ev = events(dir.path());
        let refused: Vec<&Value> = ev.iter().filter(|e| e["event"] == "refused").collect();
        assert_eq!(refused.len(), 2, "{ev:?}");
        assert!(refused.iter().all(|e| e["epoch"] == 5 && e["highest"] == 7));
        let leaders: Vec<u64> = ev
            .iter()
            .filter(|e| e["event"] == "leader")
            .filter_map(|e| e["epoch"].as_u64())
            .collect();
        assert_eq!(leaders, [5, 7]);
    }

    #[test]
    fn a_new_leader_is_given_the_log_from_the_position_its_game_accounts_for_and_its_heartbeats_are_echoed()
     {
        let dir = ok(tempfile::tempdir());
        let mut c = client(dir.path());
        // Six inputs were given to epoch 5's game, which died.
        c.log.push(b"jkl..q");
        c.log.gave(6);
        c.on_leader(leader("b", 7));
        let mut agent = attach(&mut c, 2, 7, "b");
        // Its successor's state accounts for two of them.
        ok(c.on_frame(
            2,
            ToClient::Leading {
                epoch: 7,
                node: "b".into(),
                position: 2,
            },
        ));
        ok(c.pump());
        // Nothing before its spare holds a checkpoint.
        assert_eq!(c.log.given(), 2);
        ok(c.on_frame(
            2,
            ToClient::Heartbeat {
                epoch: 7,
                stamp: 42,
                position: 2,
                spare_synced: true,
            },
        ));
        ok(c.pump());
        // The heartbeat's stamp is echoed at once, before the keys.
        let echo: ToAgent = ok(read_frame(&mut agent));
        assert_eq!(echo, ToAgent::Echo { stamp: 42 });
        let keys: ToAgent = ok(read_frame(&mut agent));
        assert_eq!(
            keys,
            ToAgent::Keys {
                offset: 2,
                bytes: b"l..q".to_vec()
            }
        );
        assert_eq!(c.log.given(), 6);
        let first: Vec<Value> = events(dir.path())
            .into_iter()
            .filter(|e| e["event"] == "first_output")
            .collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["epoch"], 7);
    }
}
