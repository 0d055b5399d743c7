//! The primary's link to its spare: a sender thread that owns the stream and puts snapshots on
//! it one at a time, in order; a thread that reads the spare's acks; and, for the socket
//! transports, a thread that accepts spares (a spare that connects gets a new session and a
//! full checkpoint).
//!
//! Sessions are numbered by *generation*. A snapshot is taken for the generation that was
//! live when it was taken and is dropped if that session has ended by its turn: a new session
//! must start with a full checkpoint, which the next snapshot will be.
//!
//! Files: `handle` (the [`Link`] a primary's context holds), `sender` (the thread that
//! writes every frame), `direct` (the open session under its lock, and sync mode's direct
//! path: the application's thread writes a checkpoint with one `write` and reads its ack with
//! one `read` when the sender is idle), `acceptor` (spares' connections and handshakes),
//! `acks` (the ack reader, for async and lazy mode), `standby` (a thread started ahead of
//! its job: a spare's future sender, so a promotion starts no thread), `compact` (a checkpoint log kept within
//! its size limit), `coalesce` (merging copy snapshots that wait for the sender; at most one
//! waits, so a slow spare costs the regions' size, not a snapshot per checkpoint).
//!
//! How a checkpoint reaches the stream is the [`Delivery`] of [`StreamParams`]: woken (async
//! mode: the sender is woken for it), direct (sync mode) or polled (lazy mode: published
//! without a system call, the sender looks every [`ENV_MAX_LAG_US`]). [`ENV_MAX_LAG`] is a
//! different bound, back-pressure: how far the stream may fall behind before a checkpoint
//! waits for the sender.
//!
//! Hang detection: the sender puts a heartbeat frame on a spare's stream whenever it has
//! been idle for [`StreamParams::heartbeat`] ([`DEFAULT_HEARTBEAT`], 100 ms, unless
//! [`ENV_HEARTBEAT_MS`] says otherwise), so a spare can tell a quiet primary from a stopped
//! one; in sync mode a checkpoint waits for its ack at most the ack deadline
//! ([`DEFAULT_ACK_DEADLINE`], 1 s, [`ENV_ACK_DEADLINE_MS`]): a spare that misses it is told
//! goodbye and dropped ([`Link::drop_spare`]), and the application goes on without a spare
//! until the next one connects.

mod acceptor;
mod acks;
mod coalesce;
mod compact;
mod direct;
mod handle;
mod pool;
mod returns;
mod sender;
mod standby;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use handle::{AckWait, Link};
pub use standby::Standby;

use crate::snapshot::Snapshot;
use crate::transport::{TcpConfig, TransportError};
use crate::wire::Hello;

/// Where a primary's checkpoints go.
#[derive(Debug, Clone)]
pub enum LinkConfig {
    /// Nowhere (standalone runs and benchmarks); the snapshots are still taken and written.
    Null,
    /// Into a socket pair drained by a thread (benchmarks: the paper's pipe with a reader).
    Drain,
    /// A checkpoint log file; `append` adds a session to an existing log instead of
    /// replacing it.
    File {
        /// The log.
        path: PathBuf,
        /// Append rather than truncate.
        append: bool,
    },
    /// Listen on a Unix socket `name` in directory `dir` (mode 0700) for spares.
    Unix {
        /// The socket directory.
        dir: PathBuf,
        /// The socket's name in it.
        name: String,
    },
    /// Listen on TCP for authenticated spares.
    Tcp {
        /// The address to listen on.
        addr: SocketAddr,
        /// The key and timeouts.
        config: TcpConfig,
    },
}

/// What became of a checkpoint on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    /// Written to the stream as this checkpoint number.
    Written(u64),
    /// Dropped: no session was open for it by its turn.
    Dropped,
}

#[derive(Debug, Default)]
struct Progress {
    /// The last job the sender finished, and what became of it.
    done_job: u64,
    done: Option<Shipped>,
    /// The last checkpoint the spare acked (or that a sink without acks took).
    acked: u64,
    /// Checkpoints written and their page bytes.
    written: u64,
    bytes: u64,
    /// The number of the last checkpoint written (0: none yet).
    last_written: u64,
    /// The first (full) checkpoint of the open session, once written.
    session_full: Option<u64>,
    /// Checkpoints merged into a later one while they waited for the sender.
    coalesced: u64,
    /// Compaction requests the sender has dealt with.
    compactions: u64,
}

#[derive(Debug, Default)]
struct Shared {
    /// The generation of the open session (0: none yet).
    generation: AtomicU64,
    /// Whether that session is still open.
    live: AtomicBool,
    /// Whether a fork child has not yet been reaped.
    fork_in_flight: AtomicBool,
    /// The descriptor the open session writes to (a fork child writes there too).
    stream_fd: AtomicI32,
    /// A pidfd of the fork child in flight.
    child: Mutex<Option<Arc<std::os::fd::OwnedFd>>>,
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Raised when a spare connects, cleared by the next checkpoint.
    wanted: Wanted,
    /// The copy snapshot waiting for the sender, later ones merged into it, and whether a
    /// lazy sender stopped looking for one.
    queued: Mutex<Slot>,
    /// Jobs submitted so far (the last job's id).
    submitted: AtomicU64,
    /// The open session's writer: the sender thread writes every frame through it, and a
    /// sync checkpoint that finds the sender idle is written through it by the
    /// application's own thread ([`direct`]); one at a time, so frames never interleave.
    session: SessionSlot,
    /// A listener opened off the caller's path ([`Link::open_on`]) could not be: why.
    listen_failed: Mutex<Option<String>>,
    /// Whether `listen_failed` holds a reason (one atomic load per checkpoint).
    listen_failed_set: AtomicBool,
    /// When the application's thread last wrote a checkpoint to the stream itself (the
    /// direct path), as a [`stamp_now`]: the sender's heartbeat clock counts it as traffic.
    direct_wrote: AtomicU64,
}

/// The queue's one place ([`Shared::queued`]). `repr(C)`, the flag first: it shares the
/// cache line of the lock's word, which a checkpoint has just taken (one cold line, not two).
#[derive(Debug, Default)]
#[repr(C)]
struct Slot {
    /// Lazy mode: the sender, idle for [`sender::PARK_AFTER`], has stopped looking at the
    /// slot on its schedule and sleeps until a job comes; whoever fills the slot clears
    /// this and sends it one. Set and cleared under the slot's lock only, and only while
    /// the slot is empty, so a snapshot is never put where nobody will look.
    parked: bool,
    /// The copy snapshot waiting for the sender.
    queued: Option<coalesce::Queued>,
}

impl Slot {
    /// Whether the sender parked; clears the flag (read only when it is not set: the usual
    /// case writes nothing more).
    #[inline(always)]
    fn unpark(&mut self) -> bool {
        if !self.parked {
            return false;
        }
        self.parked = false;
        true
    }
}

/// The origin of the instants kept in atomics ([`stamp_now`], [`stamped`]).
fn origin() -> std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// Now, as nanoseconds since [`origin`] (fits an atomic).
fn stamp_now() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant of a [`stamp_now`] value.
fn stamped(ns: u64) -> std::time::Instant {
    origin() + std::time::Duration::from_nanos(ns)
}

/// The open session (if any) and the number the next session's first checkpoint gets,
/// under one lock: whoever holds it owns the stream.
#[derive(Default)]
struct SessionSlot(Mutex<Session>);

#[derive(Default)]
struct Session {
    open: Option<direct::Open>,
    /// The number the next checkpoint written gets (in this session or the next).
    next_checkpoint: u64,
}

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSlot")
    }
}

/// "A spare connected and holds nothing of this primary yet": a flag and a pipe that is
/// readable while it is raised, so an application that idles in `poll` (a game waiting for a
/// key) wakes up and takes the checkpoint that brings the spare up to date.
#[derive(Debug, Default)]
struct Wanted {
    raised: AtomicBool,
    /// Makes raising (flag and byte) and clearing (flag and drain) one step each, so that a
    /// clear that follows a poll which saw the byte always drains it.
    turn: Mutex<()>,
    /// (read end, write end), both non-blocking; `None` if the pipe could not be made.
    pipe: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
}

impl Wanted {
    fn new() -> Self {
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK);
        if let Err(e) = &pipe {
            tracing::warn!(error = %e, "no checkpoint-wanted pipe; an idle primary syncs a new spare at its next checkpoint");
        }
        Self {
            raised: AtomicBool::new(false),
            turn: Mutex::new(()),
            pipe: pipe.ok(),
        }
    }

    fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn raise(&self) {
        let _turn = self.turn();
        // The flag first: whoever sees the byte then finds the flag raised, and its clear
        // (which waits for this turn to end) drains the byte.
        self.raised.store(true, Ordering::Release);
        if let Some((_, write)) = &self.pipe {
            // A full pipe is readable already.
            let _ = nix::unistd::write(write, &[1]);
        }
    }

    /// Whether a spare waits for its first checkpoint (the next one is full).
    #[inline(always)]
    fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Clears the flag; drains the pipe only when it was raised (one atomic otherwise).
    fn clear(&self) {
        if !self.raised.load(Ordering::Acquire) {
            return;
        }
        let _turn = self.turn();
        self.raised.store(false, Ordering::Release);
        if let Some((read, _)) = &self.pipe {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(read, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

impl Shared {
    /// Records why listening for spares failed on the link's own thread, for the next
    /// checkpoint to report ([`Link::listen_failed`]).
    fn fail_listening(&self, e: &LinkError) {
        tracing::error!(error = %e, "listening for spares failed");
        *self
            .listen_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        self.listen_failed_set.store(true, Ordering::Release);
    }

    /// The session slot. Lock order: the session before `progress` and `queued`.
    fn session(&self) -> MutexGuard<'_, Session> {
        self.session
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session slot if no one holds it; `None` while it is busy (its holder owns the
    /// stream: it is writing frames or waiting for their ack).
    fn try_session(&self) -> Option<MutexGuard<'_, Session>> {
        match self.session.0.try_lock() {
            Ok(s) => Some(s),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    #[inline(always)]
    fn queued(&self) -> MutexGuard<'_, Slot> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[inline(always)]
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panicking holder leaves plain counters behind; they are still meaningful.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Job {
    /// A spare whose handshake is done: its session opens when the sender takes it.
    Spare(acceptor::Handshaken),
    Snapshot {
        id: u64,
        generation: u64,
        snapshot: Snapshot,
    },
    /// Ship the queued copy snapshot ([`Shared::queued`]), if it is still there.
    Queued,
    /// The spare of this generation missed its ack deadline: tell it goodbye and end its
    /// session (the link has marked the session over already).
    DropSpare(u64),
    /// The checkpoint log has outgrown its limit: start the compacted one (a new session,
    /// whose first checkpoint is full), after every snapshot queued before.
    Compact,
    Goodbye,
}

/// Counters of a link, for status displays and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Checkpoints written to the stream.
    pub written: u64,
    /// Page bytes written.
    pub bytes: u64,
    /// The last checkpoint acked by the spare.
    pub acked: u64,
    /// Sessions opened so far (spares connected, or the sink opened).
    pub sessions: u64,
    /// Whether a session is open now.
    pub live: bool,
    /// Whether the open session's spare holds a checkpoint: its full checkpoint was acked
    /// (a sink: written). Until then a new spare protects nothing.
    pub synced: bool,
    /// The number of the last checkpoint written (0: none yet); with `acked`, how far the
    /// spare lags behind.
    pub last_written: u64,
    /// Checkpoints taken and not yet on the stream (the sender is behind): how far the
    /// stream lags behind the application.
    pub pending: u64,
    /// Checkpoints merged into a later one while they waited for the sender (each page
    /// ships once, with its newest contents).
    pub coalesced: u64,
}

impl Shared {
    fn stats(&self) -> LinkStats {
        let p = self.lock();
        let live = self.live.load(Ordering::Acquire);
        LinkStats {
            written: p.written,
            bytes: p.bytes,
            acked: p.acked,
            sessions: self.generation.load(Ordering::Acquire),
            live,
            synced: live && p.session_full.is_some_and(|cp| p.acked >= cp),
            last_written: p.last_written,
            pending: self
                .submitted
                .load(Ordering::Acquire)
                .saturating_sub(p.done_job),
            coalesced: p.coalesced,
        }
    }
}

/// A link's counters, readable from any thread for as long as it is kept (a status display
/// next to the worker); it outlives the link and then shows its last counters.
#[derive(Debug, Clone)]
pub struct LinkProbe {
    shared: Arc<Shared>,
}

impl LinkProbe {
    /// The link's counters now.
    pub fn stats(&self) -> LinkStats {
        self.shared.stats()
    }
}

/// What a snapshot taken now is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The session's generation.
    pub generation: u64,
    /// Whether it must be full (the first of its session).
    pub full: bool,
    /// The descriptor the session writes to, for a fork child.
    pub stream_fd: i32,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Spare(h) => write!(f, "Spare({})", h.peer),
            Job::Snapshot { id, generation, .. } => write!(f, "Snapshot({id}, gen {generation})"),
            Job::Queued => f.write_str("Queued"),
            Job::DropSpare(generation) => write!(f, "DropSpare(gen {generation})"),
            Job::Compact => write!(f, "Compact"),
            Job::Goodbye => f.write_str("Goodbye"),
        }
    }
}

/// The stream's parameters for every session of a link.
#[derive(Debug, Clone)]
pub struct StreamParams {
    /// The epoch of this primary.
    pub epoch: u64,
    /// The number of its first checkpoint.
    pub first_checkpoint: u64,
    /// The hello (the region table).
    pub hello: Hello,
    /// Whether a sink without acks should be synced to disk at each commit.
    pub sync_sink: bool,
    /// After how long without a frame the sender tells a spare it is alive (`None`: never).
    /// Sinks without acks (logs) get none.
    pub heartbeat: Option<std::time::Duration>,
    /// A checkpoint log that grows past this many bytes is compacted: the sender starts a
    /// new log holding the latest checkpoint as a full one and puts it in the old one's place
    /// once that checkpoint is whole (`None`: never). Only for [`LinkConfig::File`].
    pub log_max_bytes: Option<u64>,
    /// How checkpoints reach the stream.
    pub delivery: Delivery,
    /// In sync mode ([`Delivery::Direct`]), how long the wait for an ack looks for it before
    /// sleeping, while acks come that quickly ([`crate::transport::spin`]; zero: never).
    pub ack_spin: std::time::Duration,
}

/// How a checkpoint gets from `checkpoint()` onto the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Async mode: the snapshot is handed to the sender thread, which is woken for it
    /// (unless it is busy anyway, or an older snapshot still waits: then it is merged).
    #[default]
    Woken,
    /// Sync mode: the application's thread writes the checkpoint to the spare's socket
    /// itself (one `write`) and reads the ack itself (one `read`) whenever the sender has
    /// nothing ahead of it; otherwise the sender writes it and the application's thread
    /// reads the ack. No ack reader thread runs.
    Direct,
    /// Lazy mode: the snapshot is published in the sender's slot without a system call; the
    /// sender looks at the slot every so often (at most this long after a checkpoint was
    /// taken, plus the time to write the one before) and ships what it finds.
    Polled(std::time::Duration),
}

/// The environment variable for lazy mode's bound ([`Delivery::Polled`]) in microseconds:
/// how long a checkpoint may wait before the sender ships it (default
/// [`DEFAULT_MAX_LAG_US`]).
pub const ENV_MAX_LAG_US: &str = "HS_MAX_LAG_US";
/// Lazy mode's default bound: 1 ms.
pub const DEFAULT_MAX_LAG_US: u64 = 1000;

/// The environment variable that sets [`StreamParams::log_max_bytes`] (0: never compact).
pub const ENV_LOG_MAX_BYTES: &str = "HS_LOG_MAX_BYTES";
/// How large a checkpoint log grows before it is compacted to its latest checkpoint.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 << 20;
/// The environment variable that sets [`StreamParams::heartbeat`] in milliseconds.
pub const ENV_HEARTBEAT_MS: &str = "HS_HEARTBEAT_MS";
/// How long a spare's stream may stay idle before the sender sends a heartbeat.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(100);
/// The environment variable that sets the sync ack deadline in milliseconds.
pub const ENV_ACK_DEADLINE_MS: &str = "HS_ACK_DEADLINE_MS";
/// How long a sync checkpoint waits for its spare's ack before the spare is dropped.
pub const DEFAULT_ACK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The environment variable for the back-pressure bound ([`MaxLag`]): how far the stream
/// may fall behind the application before `checkpoint()` *waits* for the sender; unset,
/// `checkpoint()` never waits for the sender in async and lazy mode. (Not to be confused
/// with [`ENV_MAX_LAG_US`], lazy mode's shipping delay: that one never makes
/// `checkpoint()` wait; in lazy mode a time given here must exceed it.)
pub const ENV_MAX_LAG: &str = "HS_MAX_LAG";

/// Back-pressure: how far the stream may fall behind before a checkpoint waits for the
/// sender: `N` checkpoints taken and not yet on the stream, or `Nus`, the oldest checkpoint
/// waiting for the sender at most `N` microseconds old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxLag {
    /// At most this many checkpoints not yet on the stream (at least 1).
    Checkpoints(u64),
    /// The oldest checkpoint waiting for the sender at most this old.
    Time(std::time::Duration),
}

impl std::str::FromStr for MaxLag {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LinkError::MaxLag {
            value: s.to_owned(),
        };
        match s.strip_suffix("us") {
            Some(us) => us
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| MaxLag::Time(std::time::Duration::from_micros(n)))
                .ok_or_else(bad),
            None => s
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .map(MaxLag::Checkpoints)
                .ok_or_else(bad),
        }
    }
}

impl MaxLag {
    /// The bound in [`ENV_MAX_LAG`], if it is set.
    pub fn from_env() -> Result<Option<Self>, LinkError> {
        match std::env::var_os(ENV_MAX_LAG) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok_or_else(|| LinkError::MaxLag {
                    value: v.to_string_lossy().into_owned(),
                })?
                .parse()
                .map(Some),
        }
    }
}

/// What went wrong on the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// [`ENV_MAX_LAG`] holds neither a count nor a time.
    #[error(
        "{ENV_MAX_LAG}={value:?} is neither a number of checkpoints (\"100\") nor of microseconds (\"500us\"), above 0"
    )]
    MaxLag {
        /// The value found.
        value: String,
    },
    /// In lazy mode, an [`ENV_MAX_LAG`] time that does not exceed the lazy bound: every
    /// checkpoint would wait for the sender's next look.
    #[error(
        "{ENV_MAX_LAG}={max_lag_us}us makes checkpoints wait for lazy mode's sender, which ships within {ENV_MAX_LAG_US}={lazy_us}: give {ENV_MAX_LAG} above it (or a count)"
    )]
    LagBelowLazy {
        /// The back-pressure bound, microseconds.
        max_lag_us: u64,
        /// Lazy mode's bound, microseconds.
        lazy_us: u64,
    },
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The sender thread ended (it panicked).
    #[error("the checkpoint sender thread is gone")]
    SenderGone,
    /// The checkpoint log's first frame could not be written.
    #[error("writing the hello to checkpoint log {path:?} failed (see the log)")]
    Sink {
        /// The log.
        path: PathBuf,
    },
    /// A staging buffer for a copy snapshot could not be mapped.
    #[error("mapping a staging buffer for a copy snapshot failed: {0}")]
    Staging(std::io::Error),
    /// /dev/null could not be opened (for fork children of a null link).
    #[error("opening /dev/null failed: {0}")]
    DevNull(std::io::Error),
    /// Listening for spares, done on the link's own thread ([`Link::open_on`]), failed.
    #[error("listening for spares at {at} failed: {why}")]
    Listen {
        /// Where.
        at: String,
        /// Why.
        why: String,
    },
    /// A thread could not start.
    #[error("starting thread {name} failed: {source}")]
    Spawn {
        /// The thread.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &'static str,
    f: F,
) -> Result<JoinHandle<()>, LinkError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|source| LinkError::Spawn { name, source })
}

fn lock_child(shared: &Shared) -> MutexGuard<'_, Option<Arc<std::os::fd::OwnedFd>>> {
    shared
        .child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
