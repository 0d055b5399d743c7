//! The application's interface (the paper's `hs_init`, `hs_cpt`, `hs_sigreg`): a [`HotSpare`]
//! builder names the regions, the worker, the signal handlers, the strategy, the mode and the
//! link; [`HotSpare::run`] plays the role it is given:
//!
//! - **standalone** / **primary**: map the regions, call `init` (a fresh start), take a full
//!   checkpoint, call the worker. The worker calls [`Context::checkpoint`] whenever its state
//!   is consistent. A standalone run writes to its link (null unless asked) without waiting for
//!   anyone; a primary listens for spares and, in sync mode, waits for the first one.
//! - **spare**: map the same regions, connect to the primary and replicate its checkpoints
//!   into a [`Replica`] until the stream ends. If the primary said goodbye (it finished on
//!   purpose) the spare ends too. Otherwise the primary died: the spare is promoted: it copies
//!   the last completed checkpoint into its regions at the same addresses, restores the
//!   registered descriptors and signal handlers, opens the link as the new primary (new
//!   epoch, listening where [`HotSpare::listen_addr`] / [`HotSpare::listen_name`] say, by
//!   default the address it connected to) and calls the worker directly, never `main()`.
//! - **cluster spare** (a spare given an order descriptor, [`HotSpare::promote_fd`],
//!   `HS_PROMOTE_FD`): the same, except that it never takes over on its own. A stream that
//!   ends (the primary died, an error, a deadline) leaves it holding its last whole
//!   checkpoint, waiting; it takes over only on the order `promote <EPOCH>`, with exactly that
//!   epoch, even while the stream is still open (it stops reading it). End of file on the
//!   descriptor ends it with [`Outcome::Dismissed`]; a refused order is
//!   [`HsError::PromoteRefused`]. See [`crate::orders`].
//! - **resume**: rebuild the last complete checkpoint from a checkpoint log and continue from
//!   it as a promoted spare would, appending to the same log.
//!
//! The role and the link can come from the environment a supervisor sets
//! ([`HotSpare::from_env`]): `HS_ROLE` (`standalone`, `primary`, `spare`), `HS_TRANSPORT`
//! (`null`, `file`, `unix`, `tcp`), `HS_SOCKET_DIR` and `HS_SOCKET_NAME` (unix), `HS_TCP_ADDR`
//! and `HS_KEY` (tcp), `HS_LOG_FILE` (file), `HS_EPOCH`, `HS_MODE` (`async`, `sync`, `lazy`; see [`Mode`]), `HS_MAX_LAG_US` (lazy mode's
//! bound, microseconds, default 1000; refused with another mode), `HS_SPIN_US` (sync mode,
//! on both sides: how long a spare's reads, and the primary's wait for an ack, look for input
//! before sleeping, microseconds, default 100, 0 never; see [`crate::transport::spin`]),
//! `HS_STRATEGY` (`copy`, `fork`, `cbw`, `adaptive`), `HS_TRACKER` (`uffd`, `mprotect`, `full`),
//! and the hang detection's times in milliseconds: `HS_ACK_DEADLINE_MS` (sync mode: how long
//! a checkpoint waits for the spare's ack before the spare is dropped; default 1000),
//! `HS_HEARTBEAT_MS` (a primary's idle stream gets a heartbeat this often; default 100),
//! `HS_SUSPECT_MS` (a spare that hears nothing for this long reports it; default 300) and
//! `HS_SILENCE_FD` (the descriptor a spare writes that report to: `{"silent_ms":N}`, then
//! `{"heard":true}`, and `{"holding":C,"epoch":E}` when it first holds a whole checkpoint of
//! a session; see [`crate::silence`]). A spare never takes over because its primary is
//! silent: only when its stream ends (or, with `HS_PROMOTE_FD=N`, on the order read from
//! descriptor N). `HS_LISTEN_ADDR` (tcp) and `HS_LISTEN_NAME` (unix, a name in
//! `HS_SOCKET_DIR`) say where a primary, fresh or promoted, listens for its spares when that
//! is not the address a spare connects to (`HS_TCP_ADDR`, `HS_SOCKET_NAME`): a promoted game
//! listens at its own address at once instead of waiting for its dead primary's to be
//! released. Every value is checked; a bad one is an [`HsError::Config`] naming the variable
//! and value. `HS_PROBE_FILE`, read only by a build with the `probe` feature, names the file
//! that gets each checkpoint step's times at the end of the run (see [`crate::probe`]).
//!
//! A failed [`Context::checkpoint`] loses nothing: the pages its scan reported are carried
//! into the next checkpoint (and when the scan itself failed, the next checkpoint is full),
//! so a worker that handles the error and checkpoints again ships a consistent image.

use std::error::Error;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[cfg(feature = "fault-injection")]
use crate::fault;
use crate::fault::Step;
use crate::link::{self, AckWait, Link, LinkConfig, LinkError, LinkProbe, LinkStats, StreamParams};
use crate::meta::{
    Blobs, FdKind, FdRegistry, Handler, LostConnection, MetaError, MetadataRef, RegionInfo,
    SignalRegistry,
};
use crate::orders::{Order, Orders};
use crate::probe::{self, Mark};
use crate::region::{Region, RegionError, RegionId, Slot};
use crate::replica::{Committed, Replica, ReplicaConfig, ReplicaError};
use crate::session::{self, SessionError};
use crate::silence::{self, SilenceWatch};
use crate::snapshot::cbw::CbwState;
use crate::snapshot::{self, Copied, CostModel, Run, Snapshot, Strategy};
use crate::sys::PAGE_SIZE;
use crate::track::{self, Backend, DirtyPages, TrackError, Tracker};
use crate::transport::{self, Endpoint, HANDSHAKE_TIMEOUT, TcpConfig, TransportError};
use crate::wire::{Farewell, Hello, WireError};

/// The error a worker (or `init`) returns.
pub type WorkerError = Box<dyn Error + Send + Sync>;
/// What a worker (returning a `T`) or `init` returns.
pub type WorkerResult<T = ()> = Result<T, WorkerError>;
type WorkerFn<T> = Box<dyn FnOnce(&mut Context) -> WorkerResult<T>>;

/// Environment variable: the role (`standalone`, `primary`, `spare`).
pub const ENV_ROLE: &str = "HS_ROLE";
/// Environment variable: the transport (`null`, `file`, `unix`, `tcp`).
pub const ENV_TRANSPORT: &str = "HS_TRANSPORT";
/// Environment variable: the Unix socket directory.
pub const ENV_SOCKET_DIR: &str = "HS_SOCKET_DIR";
/// Environment variable: the Unix socket name.
pub const ENV_SOCKET_NAME: &str = "HS_SOCKET_NAME";
/// Environment variable: the TCP address (listen as primary, connect as spare).
pub const ENV_TCP_ADDR: &str = "HS_TCP_ADDR";
/// Environment variable: where a primary (fresh or promoted) listens for spares over TCP,
/// if not at `HS_TCP_ADDR`.
pub const ENV_LISTEN_ADDR: &str = "HS_LISTEN_ADDR";
/// Environment variable: the Unix socket name (in `HS_SOCKET_DIR`) a primary (fresh or
/// promoted) listens at, if not `HS_SOCKET_NAME`.
pub const ENV_LISTEN_NAME: &str = "HS_LISTEN_NAME";
pub use crate::orders::ENV_PROMOTE_FD;
/// Environment variable: the checkpoint log for the `file` transport.
pub const ENV_LOG_FILE: &str = "HS_LOG_FILE";
/// Environment variable: the epoch of a primary (a promoted spare uses one above every epoch
/// it has seen and above this).
pub const ENV_EPOCH: &str = "HS_EPOCH";
/// Environment variable: `async` or `sync`.
pub const ENV_MODE: &str = "HS_MODE";
/// Environment variable: `copy`, `fork` or `adaptive`.
pub const ENV_STRATEGY: &str = "HS_STRATEGY";

/// What a process does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Runs the worker, checkpointing to its link without waiting for a spare.
    Standalone,
    /// Runs the worker and serves spares.
    Primary,
    /// Replicates a primary until it dies, then takes over.
    Spare,
    /// Continues from the last complete checkpoint of this log.
    Resume(PathBuf),
}

/// When [`Context::checkpoint`] returns, and how the checkpoint gets to the spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Once the snapshot is taken: it is handed to the link's sender thread, which is woken
    /// for it (one `futex` wake, none while the sender is busy anyway) and ships it while
    /// the worker goes on.
    Async,
    /// Once the spare acked the checkpoint: nothing committed is ever lost. When the sender
    /// is idle the worker's own thread writes the checkpoint (one `write`) and reads the ack
    /// (one `read`); no thread is woken on the way out or back.
    Sync,
    /// Once the snapshot is copied and published: no system call at all. The sender looks
    /// for a published checkpoint every `max_lag` ([`HotSpare::lazy`], `HS_MAX_LAG_US`,
    /// default 1000 us) and ships the newest, so the spare is at most that far (plus one
    /// write) behind; a failover loses at most the moves of that window, which a supervisor
    /// that logs its inputs replays. After a second without checkpoints the sender stops
    /// looking, and the next checkpoint wakes it (one system call, that checkpoint only).
    ///
    /// With the copy strategy (or the adaptive one once its model copies checkpoints this
    /// size whatever it observes, [`CostModel::copies_only`]) and the `full` tracker (every
    /// page of the regions, every time), a checkpoint whose plan stands (the same session, the metadata unchanged)
    /// runs a path built for it: a few atomic loads, the copy into a pooled buffer and the
    /// publication, nothing else ([`Checkpoint::planned`] is `false`). At a person's pace
    /// every line of code a checkpoint runs is a cache miss of its own, so the fewer lines
    /// the shorter the stall.
    Lazy {
        /// How long a checkpoint may wait before the sender ships it.
        max_lag: Duration,
    },
}

impl Mode {
    /// Lazy mode with the default bound ([`link::DEFAULT_MAX_LAG_US`]).
    pub const LAZY: Mode = Mode::Lazy {
        max_lag: Duration::from_micros(link::DEFAULT_MAX_LAG_US),
    };

    /// The mode's name, as `HS_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
            Mode::Lazy { .. } => "lazy",
        }
    }

    fn delivery(self) -> link::Delivery {
        match self {
            Mode::Async => link::Delivery::Woken,
            Mode::Sync => link::Delivery::Direct,
            Mode::Lazy { max_lag } => link::Delivery::Polled(max_lag),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(Mode::Async),
            "sync" => Ok(Mode::Sync),
            "lazy" => Ok(Mode::LAZY),
            other => Err(format!("{other:?} names no mode; use async, sync or lazy")),
        }
    }
}

/// Parses an `HS_MAX_LAG_US` value: microseconds, 1 to 10 000 000.
pub fn parse_max_lag_us(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .ok()
        .filter(|us| (1..=10_000_000).contains(us))
        .map(Duration::from_micros)
        .ok_or_else(|| "a number of microseconds from 1 to 10000000".to_owned())
}

/// What went wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum HsError {
    /// Mapping or using a region failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Dirty-page tracking failed.
    #[error(transparent)]
    Track(#[from] TrackError),
    /// Capturing or restoring metadata failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The link to the spare failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Connecting to the primary failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A session with the primary failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A checkpoint log holds no complete checkpoint.
    #[error("checkpoint log {path:?} holds no complete checkpoint to resume from")]
    EmptyLog {
        /// The log.
        path: PathBuf,
    },
    /// `fork()` or a pipe for a fork snapshot failed.
    #[error("forking a snapshot child failed: {0}")]
    Fork(std::io::Error),
    /// A failure injected by a test (the `fault-injection` feature only).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    #[error("injected failure at the {0:?} step")]
    Injected(Step),
    /// A setting is invalid.
    #[error("invalid {what} {value:?}: {why}")]
    Config {
        /// The setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why.
        why: String,
    },
    /// As spare: the primary died before any checkpoint reached this spare, so there is no
    /// state to take over (starting afresh would silently lose the primary's).
    #[error(
        "the primary died before its first checkpoint reached this spare: nothing to take over"
    )]
    NothingToPromote,
    /// As cluster spare: the supervisor's order on the promote descriptor was refused (not
    /// an order, an epoch not above every epoch this spare saw, no whole checkpoint held, or
    /// the descriptor could not be read). A game exits with status 3 for it.
    #[error("promote order {order:?} refused: {why}")]
    PromoteRefused {
        /// The order as read.
        order: String,
        /// Why it was refused.
        why: String,
    },
    /// No worker was given.
    #[error("no worker was registered")]
    NoWorker,
    /// The checkpoint names another worker than this process registered.
    #[error("the checkpoint's worker is {found:?}, but this process registered {want:?}")]
    WorkerName {
        /// The checkpoint's.
        found: Option<String>,
        /// Ours.
        want: String,
    },
    /// The checkpoint's regions differ from this process's.
    #[error("the checkpoint's regions {found:?} differ from this process's {want:?}")]
    RegionTable {
        /// The checkpoint's.
        found: Vec<RegionInfo>,
        /// Ours.
        want: Vec<RegionInfo>,
    },
    /// An unknown region id.
    #[error("region {0} is not registered")]
    NoRegion(RegionId),
    /// The worker (or init) failed.
    #[error("the worker failed: {0}")]
    Worker(WorkerError),
    /// The spare never reached a primary.
    #[error("no primary answered at {at} within {waited:?}: {last}")]
    NoPrimary {
        /// Where.
        at: String,
        /// How long it tried.
        waited: Duration,
        /// The last error.
        last: String,
    },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T = ()> {
    /// The worker returned (as primary, standalone, resumed or promoted spare).
    Finished {
        /// What the worker returned.
        value: T,
        /// Whether this process started from a checkpoint (promotion or resume).
        restored: Option<Restored>,
        /// The link's counters at the end.
        stats: LinkStats,
    },
    /// As spare: the primary finished on purpose; nothing to take over.
    PrimaryFinished {
        /// The last checkpoint replicated.
        checkpoint: Option<u64>,
    },
    /// As spare: the primary lives on but dropped this spare (it missed the primary's ack
    /// deadline, e.g. it was stopped or starved); it did not take over. A supervisor
    /// starts another spare if it wants one.
    Dropped {
        /// The last checkpoint replicated.
        checkpoint: Option<u64>,
    },
    /// As cluster spare ([`HotSpare::promote_fd`]): the order descriptor reached its end
    /// before any order, so the spare ended without taking over (a game exits 0, silently).
    Dismissed {
        /// The last checkpoint replicated.
        checkpoint: Option<u64>,
    },
}

/// Where a restored process came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The checkpoint's number.
    pub checkpoint: u64,
    /// The epoch of the primary that wrote it.
    pub from_epoch: u64,
    /// This process's epoch.
    pub epoch: u64,
}

/// What [`Context::checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Pages in the checkpoint (all of them for a full one).
    pub pages: u64,
    /// Whether it was full.
    pub full: bool,
    /// How it was taken; `None` when no session was open (nothing to ship it to).
    pub strategy: Option<Strategy>,
    /// In sync mode: whether the spare acked it.
    pub acked: bool,
    /// In sync mode: the spare missed the ack deadline and was dropped (told goodbye); the
    /// checkpoint is not acked, and the next ones have no spare until a new one connects.
    pub spare_dropped: bool,
    /// Whether it was planned step by step (scan, session, metadata, strategy). `false` for
    /// lazy mode's steady checkpoint, which only copies and publishes: the copy strategy,
    /// the `full` tracker, a session that goes on, and metadata that stands.
    pub planned: bool,
}

/// Builds and runs a hot-spare process whose worker returns a `T`.
pub struct HotSpare<T = ()> {
    name: String,
    regions: Vec<(RegionId, usize)>,
    init: Option<WorkerFn<()>>,
    worker: Option<WorkerFn<T>>,
    signals: SignalRegistry,
    strategy: Strategy,
    mode: Mode,
    role: Role,
    link: LinkConfig,
    epoch: u64,
    spare_wait: Duration,
    /// How long a spare's reads, and a sync primary's wait for an ack, look for input
    /// before sleeping ([`HotSpare::spin`], `HS_SPIN_US`).
    spin: Duration,
    /// Forced by [`HotSpare::tracker`].
    tracker: Option<Backend>,
    /// Named by `HS_TRACKER` (read by [`HotSpare::from_env`]).
    env_tracker: Option<Backend>,
    /// [`HotSpare::default_tracker`].
    default_tracker: Option<Backend>,
    /// Why a resumed log was not read to its end, for the worker's [`Context::log_warning`].
    log_warning: Option<String>,
    /// Sync mode: how long a checkpoint waits for its ack (`None`: without limit).
    ack_deadline: Option<Duration>,
    /// A primary's idle stream gets a heartbeat this often (`None`: never).
    heartbeat: Option<Duration>,
    /// A checkpoint log past this size is compacted (`None`: never).
    log_max_bytes: Option<u64>,
    /// A spare reports a silence of its primary this long.
    suspect: Duration,
    /// The descriptor a spare reports silences on.
    silence_fd: Option<RawFd>,
    /// Where a primary listens over TCP, if not at the link's address.
    listen_addr: Option<SocketAddr>,
    /// The Unix socket name a primary listens at, if not the link's.
    listen_name: Option<String>,
    /// A cluster spare's order descriptor.
    promote_fd: Option<RawFd>,
}

impl<T> std::fmt::Debug for HotSpare<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotSpare")
            .field("name", &self.name)
            .field("regions", &self.regions)
            .field("strategy", &self.strategy)
            .field("mode", &self.mode)
            .field("role", &self.role)
            .field("link", &self.link)
            .field("epoch", &self.epoch)
            .field("spin", &self.spin)
            .finish_non_exhaustive()
    }
}

impl HotSpare<()> {
    /// A process whose worker is registered as `name` (the spare checks the checkpoint names
    /// the same worker). Defaults: standalone, null link, adaptive strategy, async mode.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            regions: Vec::new(),
            init: None,
            worker: None,
            signals: SignalRegistry::new(),
            strategy: Strategy::Adaptive,
            mode: Mode::Async,
            role: Role::Standalone,
            link: LinkConfig::Null,
            epoch: 1,
            spare_wait: Duration::from_secs(10),
            spin: transport::spin::DEFAULT_SPIN,
            tracker: None,
            env_tracker: None,
            default_tracker: None,
            log_warning: None,
            ack_deadline: Some(link::DEFAULT_ACK_DEADLINE),
            heartbeat: Some(link::DEFAULT_HEARTBEAT),
            log_max_bytes: Some(link::DEFAULT_LOG_MAX_BYTES),
            suspect: silence::DEFAULT_SUSPECT,
            silence_fd: None,
            listen_addr: None,
            listen_name: None,
            promote_fd: None,
        }
    }
}

impl<T> HotSpare<T> {
    /// Registers a region of `len` bytes (rounded up to pages) at the address derived from
    /// `id`, the same in every process of the binary.
    pub fn region(mut self, id: RegionId, len: usize) -> Self {
        self.regions
            .push((id, len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE));
        self
    }

    /// What a fresh start runs before the first checkpoint (not run on promotion or resume).
    pub fn init(mut self, f: impl FnOnce(&mut Context) -> WorkerResult + 'static) -> Self {
        self.init = Some(Box::new(f));
        self
    }

    /// The worker: the application's main loop, called on a fresh start after `init` and on
    /// promotion after the restore. What it returns comes back in [`Outcome::Finished`].
    pub fn worker<U>(
        self,
        f: impl FnOnce(&mut Context) -> WorkerResult<U> + 'static,
    ) -> HotSpare<U> {
        HotSpare {
            name: self.name,
            regions: self.regions,
            init: self.init,
            worker: Some(Box::new(f)),
            signals: self.signals,
            strategy: self.strategy,
            mode: self.mode,
            role: self.role,
            link: self.link,
            epoch: self.epoch,
            spare_wait: self.spare_wait,
            spin: self.spin,
            tracker: self.tracker,
            env_tracker: self.env_tracker,
            default_tracker: self.default_tracker,
            log_warning: self.log_warning,
            ack_deadline: self.ack_deadline,
            heartbeat: self.heartbeat,
            log_max_bytes: self.log_max_bytes,
            suspect: self.suspect,
            silence_fd: self.silence_fd,
            listen_addr: self.listen_addr,
            listen_name: self.listen_name,
            promote_fd: self.promote_fd,
        }
    }

    /// Defines a signal handler under `name` in this process's table (every process of the
    /// binary defines the same names); the worker registers it for a signal with
    /// [`Context::signals`] (`hs_sigreg`), and a promoted spare reinstalls it by name.
    ///
    /// # Safety
    /// `handler` must be async-signal-safe (see [`SignalRegistry::define`]).
    pub unsafe fn signal_handler(mut self, name: &str, handler: Handler) -> Result<Self, HsError> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.signals.define(name, handler) }.map_err(MetaError::from)?;
        Ok(self)
    }

    /// How checkpoints are taken.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// When [`Context::checkpoint`] returns.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Lazy mode ([`Mode::Lazy`]): `checkpoint()` only copies and publishes; the sender ships
    /// the newest checkpoint at most `max_lag` after it was taken (plus one write).
    pub fn lazy(mut self, max_lag: Duration) -> Self {
        self.mode = Mode::Lazy { max_lag };
        self
    }

    /// The role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Where checkpoints go (as primary) or come from (as spare: unix and tcp).
    pub fn link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }

    /// The epoch of a primary (default 1; 0 and `u64::MAX` are refused by [`HotSpare::run`]).
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// How long a spare tries to reach its primary, and how long a sync primary waits for
    /// its first spare (default 10 s).
    pub fn spare_wait(mut self, wait: Duration) -> Self {
        self.spare_wait = wait;
        self
    }

    /// Sync mode (on both sides: a spare knows its primary's mode from its own settings):
    /// how long a spare's reads look for the next checkpoint, and the primary's wait looks
    /// for its ack, before they sleep, while input comes that quickly (default 100 us; zero:
    /// never, and a sync checkpoint is exactly one `write` and one `read`; see
    /// [`transport::spin`]). Back to back, each side's write then wakes nobody. In async and
    /// lazy mode nothing spins: the application does not wait for the spare.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Sync mode: how long a checkpoint waits for the spare's ack before the spare is dropped
    /// (default 1 s; `None`: without limit).
    pub fn ack_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// How long a primary's stream to its spare may stay idle before it sends a heartbeat
    /// (default 100 ms; `None`: never).
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.heartbeat = every;
        self
    }

    /// A checkpoint log (`LinkConfig::File`) that grows past `bytes` is compacted to its
    /// latest checkpoint, as a full one (default 4 MiB; `None`: never).
    pub fn log_max_bytes(mut self, bytes: Option<u64>) -> Self {
        self.log_max_bytes = bytes;
        self
    }

    /// As spare: how long the primary may stay silent before the spare reports it (default
    /// 300 ms); a silence never makes the spare take over.
    pub fn suspect(mut self, after: Duration) -> Self {
        self.suspect = after;
        self
    }

    /// As spare: the descriptor silence reports are written to (see [`crate::silence`]).
    pub fn silence_fd(mut self, fd: Option<RawFd>) -> Self {
        self.silence_fd = fd;
        self
    }

    /// Over TCP: where this process listens for spares as primary, fresh or promoted (default:
    /// the link's address, the one a spare connects to).
    pub fn listen_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.listen_addr = addr;
        self
    }

    /// Over a Unix socket: the name (in the link's directory) this process listens at as
    /// primary, fresh or promoted (default: the link's name, the one a spare connects to).
    /// One path component.
    pub fn listen_name(mut self, name: Option<&str>) -> Self {
        self.listen_name = name.map(str::to_owned);
        self
    }

    /// As spare: take over only on the order `promote <EPOCH>` read from descriptor `fd`
    /// (a cluster agent's), never because the stream ended; see [`crate::orders`].
    pub fn promote_fd(mut self, fd: Option<RawFd>) -> Self {
        self.promote_fd = fd;
        self
    }

    /// Forces a tracking backend instead of probing (and `HS_TRACKER`).
    pub fn tracker(mut self, backend: Backend) -> Self {
        self.tracker = Some(backend);
        self
    }

    /// The tracking backend to use unless `HS_TRACKER` names one (instead of probing).
    pub fn default_tracker(mut self, backend: Backend) -> Self {
        self.default_tracker = Some(backend);
        self
    }

    /// Applies the `HS_*` variables a supervisor sets (see the module docs); unset or empty
    /// ones leave the builder's settings. A value that is not valid (not UTF-8, not one of
    /// the names, not a number, an epoch of 0, ...) is an [`HsError::Config`] naming the
    /// variable and the value.
    pub fn from_env(self) -> Result<Self, HsError> {
        self.from_vars(|name| std::env::var_os(name))
    }

    /// [`HotSpare::from_env`] with the variables looked up by `get` instead of in this
    /// process's environment.
    pub fn from_vars(mut self, get: impl Fn(&str) -> Option<OsString>) -> Result<Self, HsError> {
        let bad = |what, value: &str, why: &str| HsError::Config {
            what,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let mut utf8 = Ok(());
        let mut var = |name: &'static str| match get(name).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => match v.into_string() {
                Ok(s) => Some(s),
                Err(raw) => {
                    if utf8.is_ok() {
                        utf8 = Err(bad(name, &raw.to_string_lossy(), "not UTF-8"));
                    }
                    None
                }
            },
        };
        let role = var(ENV_ROLE);
        let transport = var(ENV_TRANSPORT);
        let log_file = var(ENV_LOG_FILE);
        let socket_dir = var(ENV_SOCKET_DIR);
        let socket_name = var(ENV_SOCKET_NAME);
        let tcp_addr = var(ENV_TCP_ADDR);
        let epoch = var(ENV_EPOCH);
        let mode = var(ENV_MODE);
        let max_lag_us = var(link::ENV_MAX_LAG_US);
        let spin_us = var(transport::spin::ENV_SPIN_US);
        let strategy = var(ENV_STRATEGY);
        let tracker = var(track::ENV_OVERRIDE);
        let ack_deadline = var(link::ENV_ACK_DEADLINE_MS);
        let heartbeat = var(link::ENV_HEARTBEAT_MS);
        let log_max_bytes = var(link::ENV_LOG_MAX_BYTES);
        let suspect = var(silence::ENV_SUSPECT_MS);
        let silence_fd = var(silence::ENV_SILENCE_FD);
        let listen_addr = var(ENV_LISTEN_ADDR);
        let listen_name = var(ENV_LISTEN_NAME);
        let promote_fd = var(ENV_PROMOTE_FD);
        utf8?;
        let millis = |name: &'static str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| bad(name, v, "a number of milliseconds above 0"))
        };
        if let Some(v) = ack_deadline {
            self.ack_deadline = Some(millis(link::ENV_ACK_DEADLINE_MS, &v)?);
        }
        if let Some(v) = heartbeat {
            self.heartbeat = Some(millis(link::ENV_HEARTBEAT_MS, &v)?);
        }
        if let Some(v) = suspect {
            self.suspect = millis(silence::ENV_SUSPECT_MS, &v)?;
        }
        if let Some(v) = log_max_bytes {
            let bytes: u64 = v.parse().map_err(|_| {
                bad(
                    link::ENV_LOG_MAX_BYTES,
                    &v,
                    "a number of bytes (0: never compact)",
                )
            })?;
            self.log_max_bytes = (bytes > 0).then_some(bytes);
        }
        let open_fd = |name: &'static str, v: &str| {
            let fd: RawFd = v
                .parse()
                .ok()
                .filter(|&fd| fd >= 0)
                .ok_or_else(|| bad(name, v, "a descriptor number"))?;
            crate::sys::fd::cloexec(fd)
                .map_err(|e| bad(name, v, &format!("the descriptor is not open ({e})")))?;
            Ok::<_, HsError>(fd)
        };
        if let Some(v) = silence_fd {
            self.silence_fd = Some(open_fd(silence::ENV_SILENCE_FD, &v)?);
        }
        if let Some(v) = promote_fd {
            self.promote_fd = Some(open_fd(ENV_PROMOTE_FD, &v)?);
        }
        if let Some(a) = listen_addr {
            self.listen_addr =
                Some(a.parse().map_err(|e: std::net::AddrParseError| {
                    bad(ENV_LISTEN_ADDR, &a, &e.to_string())
                })?);
        }
        if let Some(v) = &listen_name {
            if !plain_name(v) {
                return Err(bad(
                    ENV_LISTEN_NAME,
                    v,
                    "a socket name is one path component",
                ));
            }
            self.listen_name = Some(v.clone());
        }
        // A key is bytes, not text.
        let key = get(transport::tcp::KEY_ENV)
            .filter(|v| !v.is_empty())
            .map(std::os::unix::ffi::OsStringExt::into_vec);
        if let Some(v) = tracker {
            self.env_tracker = Some(v.parse().map_err(|_: TrackError| {
                bad(track::ENV_OVERRIDE, &v, "use uffd, mprotect or full")
            })?);
        }
        if let Some(v) = role {
            self.role = match v.as_str() {
                "standalone" => Role::Standalone,
                "primary" => Role::Primary,
                "spare" => Role::Spare,
                _ => return Err(bad(ENV_ROLE, &v, "use standalone, primary or spare")),
            };
        }
        if let Some(v) = &socket_name
            && !plain_name(v)
        {
            return Err(bad(
                ENV_SOCKET_NAME,
                v,
                "a socket name is one path component",
            ));
        }
        if let Some(v) = transport {
            self.link = match v.as_str() {
                "null" => LinkConfig::Null,
                "file" => {
                    let path = log_file
                        .ok_or_else(|| bad(ENV_LOG_FILE, "", "the file transport needs it"))?;
                    LinkConfig::File {
                        path: path.into(),
                        append: false,
                    }
                }
                "unix" => LinkConfig::Unix {
                    dir: socket_dir.map_or_else(transport::unix::default_dir, Into::into),
                    name: socket_name.unwrap_or_else(|| self.name.clone()),
                },
                "tcp" => {
                    let a = tcp_addr
                        .ok_or_else(|| bad(ENV_TCP_ADDR, "", "the tcp transport needs it"))?;
                    let addr = a.parse().map_err(|e: std::net::AddrParseError| {
                        bad(ENV_TCP_ADDR, &a, &e.to_string())
                    })?;
                    let key = key
                        .map(|k| {
                            transport::AuthKey::new(k).map_err(|e| {
                                bad(transport::tcp::KEY_ENV, "(not shown)", &e.to_string())
                            })
                        })
                        .transpose()?;
                    LinkConfig::Tcp {
                        addr,
                        config: TcpConfig::new(key),
                    }
                }
                _ => return Err(bad(ENV_TRANSPORT, &v, "use null, file, unix or tcp")),
            };
        }
        if let Some(v) = epoch {
            let e: u64 = v
                .parse()
                .map_err(|e: std::num::ParseIntError| bad(ENV_EPOCH, &v, &e.to_string()))?;
            check_epoch(e).map_err(|why| bad(ENV_EPOCH, &v, why))?;
            self.epoch = e;
        }
        if let Some(v) = mode {
            self.mode = v.parse().map_err(|e: String| bad(ENV_MODE, &v, &e))?;
        }
        if let Some(v) = max_lag_us {
            let max_lag = parse_max_lag_us(&v).map_err(|e| bad(link::ENV_MAX_LAG_US, &v, &e))?;
            match self.mode {
                Mode::Lazy { .. } => self.mode = Mode::Lazy { max_lag },
                other => {
                    return Err(bad(
                        link::ENV_MAX_LAG_US,
                        &v,
                        &format!("it is lazy mode's bound, and the mode is {}", other.name()),
                    ));
                }
            }
        }
        if let Some(v) = spin_us {
            self.spin = v
                .parse::<u64>()
                .ok()
                .filter(|&us| us <= 1_000_000)
                .map(Duration::from_micros)
                .ok_or_else(|| {
                    bad(
                        transport::spin::ENV_SPIN_US,
                        &v,
                        "a number of microseconds from 0 to 1000000",
                    )
                })?;
        }
        if let Some(v) = strategy {
            self.strategy = v.parse().map_err(|e: String| bad(ENV_STRATEGY, &v, &e))?;
        }
        Ok(self)
    }

    /// Plays the role (see the module docs).
    pub fn run(self) -> Result<Outcome<T>, HsError> {
        let outcome = self.play();
        // The checkpoints' step times, if asked for (the `probe` feature).
        probe::report_to_env_file();
        outcome
    }

    fn play(mut self) -> Result<Outcome<T>, HsError> {
        if self.worker.is_none() {
            return Err(HsError::NoWorker);
        }
        check_epoch(self.epoch).map_err(|why| HsError::Config {
            what: "epoch",
            value: self.epoch.to_string(),
            why: why.to_owned(),
        })?;
        self.listening()?;
        let regions = self
            .regions
            .iter()
            .map(|&(id, len)| Region::map(id, len))
            .collect::<Result<Vec<_>, _>>()?;
        match self.role.clone() {
            Role::Standalone | Role::Primary => {
                let epoch = self.epoch;
                self.fresh(regions, epoch)
            }
            Role::Spare => self.spare(regions),
            Role::Resume(path) => {
                let (replica, end) = transport::file::rebuild(&path, ReplicaConfig::default())?;
                let epoch = next_epoch(replica.highest_epoch(), self.epoch - 1)?;
                let Some(committed) = replica.into_committed() else {
                    return Err(HsError::EmptyLog { path });
                };
                // A torn tail (the writer died mid-frame) and a damaged frame (a checkpoint
                // whose page or metadata body fails its checksum) end the replay alike: at
                // the last whole checkpoint before them. A torn tail is what a crash leaves;
                // damage is news the worker is told, once.
                if let Some(e) = &end.error {
                    tracing::info!(log = %path.display(), error = %e, "the log's replay ended early");
                }
                let damage = end
                    .error
                    .filter(|e| !matches!(e, ReplicaError::Wire(WireError::Truncated { .. })));
                let appends = matches!(self.link, LinkConfig::Null);
                self.log_warning = damage.map(|e| {
                    let warning = format!(
                        "checkpoint log {}: {e}; resuming from checkpoint {}, the last whole one \
                         before it{}",
                        path.display(),
                        committed.checkpoint,
                        if appends {
                            " (the log is cut there and goes on from it)"
                        } else {
                            ""
                        }
                    );
                    tracing::warn!("{warning}");
                    warning
                });
                if appends {
                    self.link = LinkConfig::File { path, append: true };
                }
                self.restored(regions, committed, epoch, None)
            }
        }
    }

    /// The link a primary opens: the configured one, at the listening address or name when
    /// one is set. A listening address for another transport is a configuration error.
    fn listening(&self) -> Result<LinkConfig, HsError> {
        let mismatch = |what, value: String, transport| HsError::Config {
            what,
            value,
            why: format!(
                "it is for the {transport} transport, but the link is {:?}",
                self.link
            ),
        };
        if let Some(addr) = self.listen_addr
            && !matches!(self.link, LinkConfig::Tcp { .. })
        {
            return Err(mismatch(ENV_LISTEN_ADDR, addr.to_string(), "tcp"));
        }
        if let Some(name) = &self.listen_name
            && !matches!(self.link, LinkConfig::Unix { .. })
        {
            return Err(mismatch(ENV_LISTEN_NAME, name.clone(), "unix"));
        }
        if let Some(name) = &self.listen_name
            && !plain_name(name)
        {
            return Err(HsError::Config {
                what: ENV_LISTEN_NAME,
                value: name.clone(),
                why: "a socket name is one path component".to_owned(),
            });
        }
        Ok(match (&self.link, self.listen_addr, &self.listen_name) {
            (LinkConfig::Tcp { config, .. }, Some(addr), _) => LinkConfig::Tcp {
                addr,
                config: config.clone(),
            },
            (LinkConfig::Unix { dir, .. }, _, Some(name)) => LinkConfig::Unix {
                dir: dir.clone(),
                name: name.clone(),
            },
            (link, _, _) => link.clone(),
        })
    }

    fn context(&mut self, regions: Vec<Region>) -> Result<Context, HsError> {
        let env_set = std::env::var_os(track::ENV_OVERRIDE).is_some_and(|v| !v.is_empty());
        let mut tracker = match (self.tracker, self.env_tracker, self.default_tracker) {
            (Some(b), _, _) | (None, Some(b), _) => track::create(b)?,
            (None, None, Some(b)) if !env_set => track::create(b)?,
            _ => track::select()?,
        };
        for r in &regions {
            tracker.register(r)?;
        }
        let table = regions.iter().map(RegionInfo::from).collect();
        let constant_report = tracker.backend() == Backend::Full;
        Ok(Context {
            name: self.name.clone(),
            regions,
            table,
            tracker,
            fds: FdRegistry::new(),
            signals: std::mem::take(&mut self.signals),
            blobs: Blobs::default(),
            strategy: self.strategy,
            mode: self.mode,
            link: None,
            runs: Vec::new(),
            meta: Vec::new(),
            meta_fresh: false,
            restored: None,
            lost: Vec::new(),
            log_warning: None,
            role: self.role.clone(),
            epoch: self.epoch,
            model: None,
            pending: None,
            report: DirtyPages::default(),
            constant_report,
            steady: Steady::default(),
            plan: Copied::UNKNOWN_PLAN,
            force_full: false,
            cbw: CbwState::new(),
            ack_deadline: None,
        })
    }

    /// Opens the context's link; on `standby` (a promoted spare's thread started while it
    /// waited) when given: see [`Link::open_on`].
    fn open_link(
        &self,
        ctx: &mut Context,
        epoch: u64,
        first_checkpoint: u64,
        standby: Option<link::Standby>,
    ) -> Result<(), HsError> {
        let params = StreamParams {
            epoch,
            first_checkpoint,
            hello: Hello {
                page_size: PAGE_SIZE as u32,
                regions: ctx.table.clone(),
            },
            sync_sink: self.mode == Mode::Sync,
            heartbeat: self.heartbeat,
            log_max_bytes: self.log_max_bytes,
            delivery: self.mode.delivery(),
            ack_spin: self.spin,
        };
        let link = Link::open_on(&self.listening()?, params, standby)?;
        tracing::info!(link = link.describe(), epoch, role = ?self.role, "link open");
        // A fresh primary in sync mode waits for its first spare; a promoted or resumed one
        // goes on at once (the user is waiting) and its next spare catches up with a full
        // checkpoint.
        if self.mode == Mode::Sync && self.role == Role::Primary && first_checkpoint == 1 {
            let waited = Instant::now();
            if !link.wait_live(self.spare_wait) {
                tracing::warn!(waited = ?waited.elapsed(), "no spare connected; going on without one");
            }
        }
        ctx.epoch = epoch;
        ctx.ack_deadline = self.ack_deadline;
        ctx.link = Some(link);
        Ok(())
    }

    fn fresh(mut self, regions: Vec<Region>, epoch: u64) -> Result<Outcome<T>, HsError> {
        let mut ctx = self.context(regions)?;
        self.open_link(&mut ctx, epoch, 1, None)?;
        if let Some(init) = self.init.take() {
            init(&mut ctx).map_err(HsError::Worker)?;
        }
        self.work(ctx)
    }

    fn work(mut self, mut ctx: Context) -> Result<Outcome<T>, HsError> {
        ctx.checkpoint()?;
        if let Some(link) = ctx.link.as_mut() {
            // A promoted spare's listener waits for the worker's first checkpoint.
            link.release_listener_at_next_checkpoint();
        }
        let worker = self.worker.take().ok_or(HsError::NoWorker)?;
        let result = worker(&mut ctx);
        let stats = match ctx.link.take() {
            Some(link) => link.finish()?,
            None => LinkStats::default(),
        };
        let value = result.map_err(HsError::Worker)?;
        Ok(Outcome::Finished {
            value,
            restored: ctx.restored,
            stats,
        })
    }

    fn restored(
        mut self,
        mut regions: Vec<Region>,
        committed: Committed,
        epoch: u64,
        standby: Option<link::Standby>,
    ) -> Result<Outcome<T>, HsError> {
        if committed.metadata.worker.as_deref() != Some(self.name.as_str()) {
            return Err(HsError::WorkerName {
                found: committed.metadata.worker,
                want: self.name,
            });
        }
        restore_image(&mut regions, &committed)?;
        // The descriptors go back to their numbers before the library opens any of its own
        // (tracker, link), so a restored number never lands on one of ours.
        let lost = committed.metadata.restore(&mut self.signals)?;
        let mut ctx = self.context(regions)?;
        ctx.fds = FdRegistry::adopt_restored(&committed.metadata.fds);
        ctx.lost = lost;
        ctx.blobs = Blobs::from_map(committed.metadata.blobs.clone(), &Blobs::default())
            .map_err(MetaError::from)?;
        ctx.log_warning = self.log_warning.take();
        ctx.restored = Some(Restored {
            checkpoint: committed.checkpoint,
            from_epoch: committed.epoch,
            epoch,
        });
        tracing::info!(
            checkpoint = committed.checkpoint,
            from_epoch = committed.epoch,
            epoch,
            "restored"
        );
        self.open_link(&mut ctx, epoch, committed.checkpoint + 1, standby)?;
        self.work(ctx)
    }

    fn connect(&self) -> Result<Box<dyn Endpoint>, HsError> {
        match &self.link {
            LinkConfig::Unix { dir, name } => Ok(Box::new(transport::unix::connect(dir, name)?)),
            LinkConfig::Tcp { addr, config } => {
                Ok(Box::new(transport::tcp::connect(*addr, config)?))
            }
            other => Err(HsError::Config {
                what: "spare link",
                value: format!("{other:?}"),
                why: "a spare connects over unix or tcp".to_owned(),
            }),
        }
    }

    /// Connects to the primary, retrying for `wait`; a cluster spare stops trying once its
    /// order (or the end of its order descriptor) arrived (`Ok(None)`).
    fn connect_retrying(
        &self,
        wait: Duration,
        orders: Option<&Orders>,
    ) -> Result<Option<Box<dyn Endpoint>>, HsError> {
        let start = Instant::now();
        loop {
            if orders.is_some_and(Orders::arrived) {
                return Ok(None);
            }
            match self.connect() {
                Ok(ep) => return Ok(Some(ep)),
                Err(e @ HsError::Config { .. }) => return Err(e),
                Err(e) if start.elapsed() >= wait => {
                    return Err(HsError::NoPrimary {
                        at: format!("{:?}", self.link),
                        waited: start.elapsed(),
                        last: e.to_string(),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn spare(self, regions: Vec<Region>) -> Result<Outcome<T>, HsError> {
        let mut replica = Replica::new(ReplicaConfig::default());
        // The sender of the link it opens if promoted, started now while it waits: a
        // promotion starts no thread and waits for no bind before the worker runs.
        let standby = match link::Standby::start("hs-sender") {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no standby sender; a promotion starts its own");
                None
            }
        };
        let orders = match self.promote_fd {
            Some(fd) => Some(Orders::start(fd).map_err(|e| HsError::Config {
                what: ENV_PROMOTE_FD,
                value: fd.to_string(),
                why: format!("no thread to read the orders: {e}"),
            })?),
            None => None,
        };
        let mut watch = SilenceWatch::new(self.suspect, self.silence_fd);
        let mut next = self.connect_retrying(self.spare_wait, orders.as_ref())?;
        while let Some(mut ep) = next.take() {
            if let Some(o) = &orders {
                let armed = o.watch_stream(&*ep).map_err(|e| HsError::Config {
                    what: ENV_PROMOTE_FD,
                    value: ep.describe(),
                    why: format!("no second handle on the stream for the order to cut: {e}"),
                })?;
                if !armed {
                    break;
                }
            }
            // Only a sync primary waits for the spare: in async and lazy mode a spinning
            // spare would take a processor from the application for nothing.
            ep.spin_for_input(if self.mode == Mode::Sync {
                self.spin
            } else {
                Duration::ZERO
            });
            let served = session::serve_spare_watched(
                &mut replica,
                &mut ep,
                HANDSHAKE_TIMEOUT,
                Some(&mut watch),
            );
            if let Some(o) = &orders {
                o.unwatch();
            }
            match replica.farewell() {
                Some(Farewell::Finished) => {
                    return Ok(Outcome::PrimaryFinished {
                        checkpoint: replica.checkpoint(),
                    });
                }
                Some(Farewell::Dropped) => {
                    return Ok(Outcome::Dropped {
                        checkpoint: replica.checkpoint(),
                    });
                }
                None => {}
            }
            let primary_gone = match &served {
                Ok(end) => end.error.as_ref().is_none_or(stream_broke),
                Err(SessionError::Wire { source, .. }) => {
                    matches!(source, WireError::Io(_) | WireError::Truncated { .. })
                }
                Err(_) => false,
            };
            tracing::info!(?served, primary_gone, checkpoint = ?replica.checkpoint(), "stream from the primary ended");
            let _ = ep.shutdown();
            // Our connection's descriptor must not hold a number the restore wants.
            drop(ep);
            if orders.as_ref().is_some_and(Orders::arrived) {
                break;
            }
            if !primary_gone {
                // A refused stream: the primary lives; a new session brings a full checkpoint.
                match self.connect() {
                    Ok(e) => next = Some(e),
                    Err(e) => tracing::info!(error = %e, "the primary does not answer any more"),
                }
            }
        }
        match &orders {
            None => self.promote(regions, replica, standby),
            // A cluster spare waits for its order, whatever became of the stream.
            Some(o) => match o.wait() {
                Order::Promote(epoch) => self.promote_to(regions, replica, epoch, standby),
                Order::Dismissed => {
                    tracing::info!(checkpoint = ?replica.checkpoint(), "dismissed without an order");
                    Ok(Outcome::Dismissed {
                        checkpoint: replica.checkpoint(),
                    })
                }
                Order::Junk(line) => Err(HsError::PromoteRefused {
                    order: line,
                    why: "not an order: the only order is `promote <EPOCH>`".to_owned(),
                }),
                Order::Failed(why) => Err(HsError::PromoteRefused {
                    order: String::new(),
                    why,
                }),
            },
        }
    }

    fn promote(
        self,
        regions: Vec<Region>,
        replica: Replica,
        standby: Option<link::Standby>,
    ) -> Result<Outcome<T>, HsError> {
        let epoch = next_epoch(replica.highest_epoch(), self.epoch)?;
        match replica.into_committed() {
            Some(committed) => self
                .role(Role::Primary)
                .restored(regions, committed, epoch, standby),
            // Starting afresh would silently throw the primary's state away.
            None => Err(HsError::NothingToPromote),
        }
    }

    /// Promotes a cluster spare on its order: exactly `epoch`, which must be above every
    /// epoch the spare saw, from the last whole checkpoint it holds.
    fn promote_to(
        self,
        regions: Vec<Region>,
        replica: Replica,
        epoch: u64,
        standby: Option<link::Standby>,
    ) -> Result<Outcome<T>, HsError> {
        let refused = |why: String| HsError::PromoteRefused {
            order: format!("promote {epoch}"),
            why,
        };
        if let Err(why) = check_epoch(epoch) {
            return Err(refused(why.to_owned()));
        }
        let seen = replica.highest_epoch().unwrap_or(0);
        if epoch <= seen {
            return Err(refused(format!(
                "epoch {epoch} is not above epoch {seen}, the highest this spare saw"
            )));
        }
        let Some(committed) = replica.into_committed() else {
            return Err(refused(
                "this spare holds no whole checkpoint to take over from".to_owned(),
            ));
        };
        tracing::info!(
            epoch,
            checkpoint = committed.checkpoint,
            "promoted by order"
        );
        self.role(Role::Primary)
            .restored(regions, committed, epoch, standby)
    }
}

/// Whether a socket name is one path component.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// Why `epoch` cannot be a primary's: 0 is no epoch (a restored process takes the one above
/// it), and `u64::MAX` leaves none above it for a promoted spare.
fn check_epoch(epoch: u64) -> Result<(), &'static str> {
    match epoch {
        0 => Err("epochs start at 1"),
        u64::MAX => Err("a promoted spare needs an epoch above it"),
        _ => Ok(()),
    }
}

/// The epoch of a restored process: one above every epoch it saw and above `floor`.
fn next_epoch(seen: Option<u64>, floor: u64) -> Result<u64, HsError> {
    let highest = seen.unwrap_or(0).max(floor);
    highest.checked_add(1).ok_or_else(|| HsError::Config {
        what: "epoch",
        value: highest.to_string(),
        why: "no epoch above it is left".to_owned(),
    })
}

/// Whether a replica's stream error means the stream broke (the primary is gone) rather than
/// that a frame was refused (the primary lives and should start over).
fn stream_broke(e: &ReplicaError) -> bool {
    matches!(
        e,
        ReplicaError::Wire(WireError::Io(_) | WireError::Truncated { .. })
    )
}

/// Copies a checkpoint's image into `regions`, which must be the checkpoint's regions (same
/// ids, addresses and lengths).
pub fn restore_image(regions: &mut [Region], committed: &Committed) -> Result<(), HsError> {
    let mut want: Vec<RegionInfo> = regions.iter().map(RegionInfo::from).collect();
    let mut found = committed.image.table();
    want.sort();
    found.sort();
    if want != found {
        return Err(HsError::RegionTable { found, want });
    }
    for r in regions.iter_mut() {
        let id = r.id();
        let bytes = committed.image.region(id.0).ok_or(HsError::NoRegion(id))?;
        crate::memcopy::copy_bytes(r.as_bytes_mut(), bytes);
    }
    Ok(())
}

/// What the worker sees: its regions, the registries, and [`Context::checkpoint`].
pub struct Context {
    name: String,
    regions: Vec<Region>,
    table: Vec<RegionInfo>,
    tracker: Box<dyn Tracker>,
    fds: FdRegistry,
    signals: SignalRegistry,
    blobs: Blobs,
    strategy: Strategy,
    mode: Mode,
    link: Option<Link>,
    runs: Vec<Run>,
    /// The metadata as last encoded.
    meta: Vec<u8>,
    /// Whether `meta` still says what a capture and encoding would say now.
    meta_fresh: bool,
    restored: Option<Restored>,
    /// The connections the restore could only re-create as dead ones.
    lost: Vec<LostConnection>,
    /// Resumed from a log not read to its end: why.
    log_warning: Option<String>,
    role: Role,
    epoch: u64,
    model: Option<CostModel>,
    /// The pages a failed checkpoint's scan reported: the next checkpoint ships them too.
    pending: Option<DirtyPages>,
    /// The last shipped report, kept for its vectors ([`Tracker::collect_dirty_into`]).
    report: DirtyPages,
    /// The tracker is the `full` backend: every scan reports every page of the regions,
    /// which never change after the context is built, so a report and the runs planned
    /// from it, once made, stand for every later checkpoint (a person's-pace checkpoint
    /// then leaves the tracker's and the report's memory cold; see [`Steady`]).
    constant_report: bool,
    /// What of `report` and `runs` is known to stand ([`Steady`]).
    steady: Steady,
    /// The number of the plan `runs` and `meta` hold ([`Copied::plan`]): counts the
    /// checkpoints planned in full.
    plan: u64,
    /// The last scan failed, so pages may be unaccounted for: the next checkpoint is full.
    force_full: bool,
    /// Sync mode: how long a checkpoint waits for its ack.
    ack_deadline: Option<Duration>,
    /// The `cbw` strategy's areas and the snapshot whose pages may still be pending.
    cbw: CbwState,
}

/// What a [`Context`] with the `full` tracker made once and need not make again: at a
/// person's pace, every structure a checkpoint touches is a cold cache line or page, so what
/// stands is left untouched. Cleared (both) whenever a scan runs.
#[derive(Debug, Default, Clone, Copy)]
struct Steady {
    /// `report` is the scan's report (the `full` backend's, which never changes).
    report: bool,
    /// `runs` is `report`'s plan.
    runs: bool,
    /// Lazy mode, copy strategy, and nothing of the last checkpoint's plan can change but
    /// the session (which [`Link::publish_steady`] looks at): the next checkpoint copies and
    /// publishes without planning, while the metadata stands (`Context::meta_fresh`).
    lazy_copy: bool,
}

/// The adaptive strategy's model for this process, or a fallback that always copies when
/// calibration fails (copying is always correct, only slower for large dirty sets).
fn calibrated(regions: &[Region]) -> CostModel {
    match CostModel::calibrate(regions) {
        Ok(m) => {
            tracing::info!(
                copy_ns_per_byte = m.copy_ns_per_byte,
                fork_us = m.fork_ns / 1e3,
                cbw_us = m.cbw_ns / 1e3,
                crossover_bytes = m.crossover_bytes(),
                "adaptive strategy calibrated"
            );
            m
        }
        Err(e) => {
            tracing::warn!(error = %e, "calibrating the adaptive strategy failed; copying always");
            CostModel::new(0.0, 0.0, f64::INFINITY)
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // No page of a cbw snapshot may be pending, nor an area seen by the fault handler,
        // once the regions are gone.
        self.cbw.retire();
        // The tracker lets go of each region before the region is unmapped (the mprotect
        // backend would otherwise keep claiming an address range nothing is mapped at).
        for r in &self.regions {
            if let Err(e) = self.tracker.unregister(r.id()) {
                tracing::warn!(region = %r.id(), error = %e, "unregistering a region failed");
            }
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("table", &self.table)
            .field("tracker", &self.tracker.backend())
            .field("strategy", &self.strategy)
            .field("mode", &self.mode)
            .field("restored", &self.restored)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Region `id`.
    pub fn region(&self, id: RegionId) -> Result<&Region, HsError> {
        self.regions
            .iter()
            .find(|r| r.id() == id)
            .ok_or(HsError::NoRegion(id))
    }

    /// Region `id`, mutably.
    pub fn region_mut(&mut self, id: RegionId) -> Result<&mut Region, HsError> {
        self.regions
            .iter_mut()
            .find(|r| r.id() == id)
            .ok_or(HsError::NoRegion(id))
    }

    /// Places `value` in region `id` as its root ([`Region::place`]): a restored process
    /// finds it with [`Context::root`].
    pub fn place<T>(&mut self, id: RegionId, value: T) -> Result<Slot<T>, HsError>
    where
        T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout + zerocopy::Immutable,
    {
        Ok(self.region_mut(id)?.place(value)?)
    }

    /// The slot of region `id`'s root value, placed by [`Context::place`] in this process or
    /// in the one it was restored from.
    pub fn root<T>(&self, id: RegionId) -> Result<Slot<T>, HsError>
    where
        T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable,
    {
        Ok(self.region(id)?.root()?)
    }

    /// The value at `slot` of region `id`.
    pub fn get<T>(&self, id: RegionId, slot: Slot<T>) -> Result<&T, HsError>
    where
        T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout + zerocopy::Immutable,
    {
        Ok(self.region(id)?.get(slot)?)
    }

    /// The value at `slot` of region `id`, mutably.
    pub fn get_mut<T>(&mut self, id: RegionId, slot: Slot<T>) -> Result<&mut T, HsError>
    where
        T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout + zerocopy::Immutable,
    {
        Ok(self.region_mut(id)?.get_mut(slot)?)
    }

    /// The registered file descriptors (register what a promoted spare must have).
    pub fn fds(&mut self) -> &mut FdRegistry {
        self.meta_fresh = false;
        &mut self.fds
    }

    /// The signal handler registry: `register` is `hs_sigreg`.
    pub fn signals(&mut self) -> &mut SignalRegistry {
        self.meta_fresh = false;
        &mut self.signals
    }

    /// Application blobs, carried by every checkpoint.
    pub fn blobs(&mut self) -> &mut Blobs {
        self.meta_fresh = false;
        &mut self.blobs
    }

    /// The dirty-page tracking backend in use.
    pub fn tracker(&self) -> Backend {
        self.tracker.backend()
    }

    /// Zeroes `[offset, offset + len)` of region `id` (page aligned), giving the memory back
    /// to the kernel; the next checkpoint ships the zeroed pages.
    pub fn discard(&mut self, id: RegionId, offset: usize, len: usize) -> Result<(), HsError> {
        let region = self
            .regions
            .iter_mut()
            .find(|r| r.id() == id)
            .ok_or(HsError::NoRegion(id))?;
        self.cbw.settle();
        Ok(self.tracker.discard(region, offset, len)?)
    }

    /// Makes `[offset, offset + len)` of region `id` (page aligned) safe as the destination
    /// of a kernel write such as `read(2)` into the region, and counts the pages as written.
    pub fn prepare_kernel_write(
        &mut self,
        id: RegionId,
        offset: usize,
        len: usize,
    ) -> Result<(), HsError> {
        // A cbw snapshot's pages are read-only until copied: the kernel would fail with EFAULT.
        self.cbw.settle();
        Ok(self.tracker.prepare_kernel_write(id, offset, len)?)
    }

    /// Where this process was restored from, if it was.
    pub fn restored(&self) -> Option<Restored> {
        self.restored
    }

    /// The registered connected sockets that the restore could only re-create as dead
    /// connections (their numbers hold fresh unconnected sockets: reads fail, `poll` reports
    /// `POLLHUP`); empty on a fresh start. A worker reconnects or forgets them.
    pub fn lost_connections(&self) -> &[LostConnection] {
        &self.lost
    }

    /// A process resumed from a checkpoint log that was not read to its end (a torn tail, a
    /// damaged checkpoint): what was wrong and where it resumed. `None` otherwise.
    pub fn log_warning(&self) -> Option<&str> {
        self.log_warning.as_deref()
    }

    /// This process's role as it started.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The link's counters.
    pub fn link_stats(&self) -> LinkStats {
        self.link.as_ref().map(Link::stats).unwrap_or_default()
    }

    /// A handle on the link's counters that another thread can keep (e.g. to report them
    /// while the worker waits); `None` before the link is open.
    pub fn link_probe(&self) -> Option<LinkProbe> {
        self.link.as_ref().map(Link::probe)
    }

    /// Readable while a spare that connected holds nothing of this primary yet; cleared by
    /// the next checkpoint (which is full and goes to it). A worker that may idle, waiting
    /// for input, polls it with its input and checkpoints when it is readable, so a new spare
    /// is protecting the state at once rather than at the next change. `None` without a link.
    pub fn checkpoint_wanted_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.link.as_ref().and_then(Link::wanted_fd)
    }

    /// Waits until every checkpoint taken so far is on the stream (or dropped for want of a
    /// session) and no fork child is left.
    pub fn flush(&self) -> Result<(), HsError> {
        if let Some(link) = &self.link {
            link.wait_idle()?;
        }
        Ok(())
    }

    /// SIGKILLs the fork snapshot child in flight, if any (for supervisors and failure
    /// tests): the session it was writing ends and the next spare starts with a full
    /// checkpoint. Returns whether a child was signalled.
    pub fn kill_snapshot_child(&self) -> bool {
        self.link.as_ref().is_some_and(Link::kill_fork_child)
    }

    /// Calibrates the adaptive strategy's cost model now (it is otherwise calibrated at the
    /// first adaptive checkpoint); call it once the regions are populated.
    pub fn calibrate(&mut self) -> CostModel {
        let m = calibrated(&self.regions);
        self.model = Some(m);
        // Whether the next checkpoint is timed for the model is decided again.
        self.steady.lazy_copy = false;
        self.prewarm();
        m
    }

    /// Gives the link a copy buffer as large as every region together, its pages touched, so
    /// the first copies do not pay page faults (the adaptive strategy calls it once).
    fn prewarm(&mut self) {
        let total = self.regions.iter().map(Region::len).sum();
        if let Some(link) = &mut self.link
            && let Err(e) = link.prewarm(total)
        {
            tracing::warn!(error = %e, "no staging buffer ahead of time");
        }
    }

    /// `hs_cpt`: takes a checkpoint of the regions and the metadata as they are now. In
    /// async mode it returns once the snapshot is taken; in sync mode once the spare acked.
    /// With no session open (no spare yet) it only starts a new tracking interval: the next
    /// session begins with a full checkpoint anyway.
    ///
    /// When it fails, nothing is lost: the pages it found written are shipped by the next
    /// checkpoint (the next one is full if the scan itself failed), so the worker may handle
    /// the error and checkpoint again.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, HsError> {
        probe::mark(Mark::Enter);
        if self.steady.lazy_copy
            && self.meta_fresh
            && !injecting()
            && let Some(link) = &mut self.link
            && let Some(published) =
                link.publish_steady(&self.regions, &self.runs, &self.meta, self.plan)
        {
            return self.published(published);
        }
        self.checkpoint_planned()
    }

    /// What [`Context::checkpoint`]'s steady lazy path ([`Link::publish_steady`]) returns.
    #[inline(always)]
    fn published(&mut self, published: Result<u64, LinkError>) -> Result<Checkpoint, HsError> {
        probe::mark(Mark::Submitted);
        let done = match published {
            Ok(_) => Ok(Checkpoint {
                pages: snapshot::page_count(&self.runs),
                full: false,
                strategy: Some(Strategy::Copy),
                acked: false,
                spare_dropped: false,
                planned: false,
            }),
            Err(e) => {
                // Every page is in every report of the `full` tracker: the next checkpoint,
                // planned in full, ships them.
                self.steady = Steady::default();
                Err(e.into())
            }
        };
        probe::mark(Mark::Leave);
        probe::end();
        done
    }

    /// Whether the next checkpoint of the planned runs is a copy that nothing times: the
    /// copy strategy without a cost model, or a model (the adaptive strategy's) that copies
    /// checkpoints this size whatever it observes of them ([`CostModel::copies_only`]).
    fn copies_untimed(&self) -> bool {
        let bytes = snapshot::page_count(&self.runs) * PAGE_SIZE as u64;
        match (self.strategy, &self.model) {
            (Strategy::Copy, None) => true,
            (Strategy::Copy | Strategy::Adaptive, Some(m)) => m.copies_only(bytes),
            _ => false,
        }
    }

    /// [`Context::checkpoint`] with every step: scan, plan, metadata, strategy, snapshot.
    #[inline(never)]
    fn checkpoint_planned(&mut self) -> Result<Checkpoint, HsError> {
        // `runs` and `meta` may change below: pooled snapshots that hold them are not
        // known to hold these ones.
        self.plan += 1;
        // The last cbw snapshot's pages not copied yet are copied now (normally the sender
        // has done it): the scan starts a new interval and may protect them anew.
        self.cbw.settle();
        probe::mark(Mark::Settled);
        // The last report's vectors, reused: a steady-state scan allocates nothing. The
        // `full` backend's report, once made, is the report of every scan: not made again.
        let mut dirty = std::mem::take(&mut self.report);
        let scanned = if self.steady.report && self.pending.is_none() {
            Ok(())
        } else {
            self.steady = Steady::default();
            self.tracker
                .collect_dirty_into(&mut dirty)
                .map_err(HsError::from)
        };
        let dirty = match scanned.and_then(|()| inject(Step::Scan)).map(|()| dirty) {
            Ok(d) => d,
            Err(e) => {
                // Some regions may have started a new interval already: their pages are
                // known to no one.
                self.force_full = true;
                return Err(e);
            }
        };
        let dirty = match self.pending.take() {
            Some(earlier) => merge(earlier, dirty),
            None => dirty,
        };
        probe::mark(Mark::Scanned);
        let taken = self.ship(&dirty);
        if taken.is_err() {
            self.pending = Some(dirty);
            self.steady = Steady::default();
        } else {
            self.report = dirty;
            self.steady.report = self.constant_report;
            // The next checkpoint, alike but for the bytes, may skip the planning.
            self.steady.lazy_copy = self.steady.report
                && self.steady.runs
                && matches!(self.mode, Mode::Lazy { .. })
                && self.copies_untimed()
                && !self.force_full
                && !captured_each_time(&self.fds);
        }
        probe::mark(Mark::Leave);
        probe::end();
        taken
    }

    /// Ships `dirty` (the pages written since the last successful checkpoint) and the
    /// metadata to the link.
    fn ship(&mut self, dirty: &DirtyPages) -> Result<Checkpoint, HsError> {
        let not_shipped = Checkpoint {
            pages: dirty.page_count() as u64,
            full: false,
            strategy: None,
            acked: false,
            spare_dropped: false,
            planned: true,
        };
        let Some(link) = self.link.as_mut() else {
            return Ok(not_shipped);
        };
        link.before_checkpoint()?;
        link.clear_wanted();
        link.compact_if_due()?;
        probe::mark(Mark::LinkChecked);
        let Some(plan) = link.plan() else {
            return Ok(not_shipped);
        };
        probe::mark(Mark::Planned);
        // The metadata is captured and encoded again only when it may have changed: the
        // registries were handed out mutably since, or a registered file's offset is
        // part of it (refreshed at every capture). Otherwise the last encoding stands.
        let stale = !self.meta_fresh || captured_each_time(&self.fds);
        self.meta_fresh = false;
        inject(Step::Capture)?;
        if stale {
            self.fds.capture().map_err(MetaError::from)?;
        }
        inject(Step::Encode)?;
        if stale {
            encode_metadata(
                MetadataRef {
                    worker: Some(&self.name),
                    regions: &self.table,
                    fds: self.fds.records(),
                    signals: self.signals.records(),
                    blobs: self.blobs.as_map(),
                },
                &mut self.meta,
            )?;
        }
        self.meta_fresh = true;
        probe::mark(Mark::Metadata);
        let full = plan.full || self.force_full;
        if !self.steady.runs {
            snapshot::plan(&self.regions, dirty, full, &mut self.runs);
            // Full or not, the `full` backend's report plans every page of every region.
            self.steady.runs = self.constant_report;
        }
        let pages = snapshot::page_count(&self.runs);
        let strategy = match self.strategy {
            _ if link.fork_in_flight() => Strategy::Copy,
            Strategy::Adaptive => self
                .model
                .get_or_insert_with(|| {
                    let m = calibrated(&self.regions);
                    let total = self.regions.iter().map(Region::len).sum();
                    if let Err(e) = link.prewarm(total) {
                        tracing::warn!(error = %e, "no staging buffer ahead of time");
                    }
                    m
                })
                .choose(pages * PAGE_SIZE as u64),
            s => s,
        };
        probe::mark(Mark::Strategy);
        // Timed only for the cost model (a clock read is a cold page at a person's pace).
        let taken = self.model.is_some().then(Instant::now);
        let mut steady = true;
        let snap = match strategy {
            Strategy::Fork => {
                let forked = inject(Step::Fork).and_then(|()| {
                    snapshot::fork(&self.regions, full, &self.runs, &self.meta, plan.stream_fd)
                        .map_err(HsError::Fork)
                });
                Snapshot::Forked(forked?)
            }
            Strategy::Copy | Strategy::Cbw | Strategy::Adaptive => {
                let staging = inject(Step::Staging).and_then(|()| {
                    link.staging(snapshot::staging_bytes(&self.runs))
                        .map_err(HsError::from)
                });
                let (shell, new) = staging?;
                probe::mark(Mark::Staged);
                // A new buffer costs page faults once, and a full copy reads cold pages: the
                // model learns from steady-state incremental copies only.
                steady = !new && !full;
                let Copied {
                    mut runs,
                    data: buffer,
                    metadata: mut meta,
                    ..
                } = shell;
                runs.clone_from(&self.runs);
                meta.clone_from(&self.meta);
                probe::mark(Mark::Vectors);
                Snapshot::Copied(if strategy == Strategy::Cbw {
                    let tracker_protects = self.tracker.backend() == Backend::Mprotect;
                    self.cbw
                        .take(&self.regions, full, runs, buffer, meta, tracker_protects)
                } else {
                    Copied::take(&self.regions, full, runs, buffer, meta)
                })
            }
        };
        if let Some(model) = &mut self.model
            && let Some(taken) = taken
            && steady
        {
            model.observe(strategy, pages * PAGE_SIZE as u64, taken.elapsed());
        }
        probe::mark(Mark::Taken);
        if let Err(e) = inject(Step::Submit) {
            snapshot::abandon(snap);
            return Err(e);
        }
        let waited = match self.mode {
            Mode::Sync => {
                link.submit_sync(plan.generation, full, snap, self.ack_deadline)?
                    .1
            }
            Mode::Async | Mode::Lazy { .. } => {
                link.submit(plan.generation, full, snap)?;
                AckWait::NotAcked
            }
        };
        probe::mark(Mark::Submitted);
        self.force_full = false;
        Ok(Checkpoint {
            pages,
            full,
            strategy: Some(strategy),
            acked: waited == AckWait::Acked,
            spare_dropped: waited == AckWait::SpareDropped,
            planned: true,
        })
    }
}

/// Whether the metadata of `fds` is captured at every checkpoint: a registered file's offset
/// is part of it.
fn captured_each_time(fds: &FdRegistry) -> bool {
    fds.records()
        .iter()
        .any(|r| matches!(r.kind, FdKind::File(_)))
}

/// Whether a test armed a failure (the `fault-injection` feature): checkpoints then take the
/// path with every step.
#[inline(always)]
fn injecting() -> bool {
    #[cfg(feature = "fault-injection")]
    if fault::armed() {
        return true;
    }
    false
}

/// Encodes `record` into `out`: out of the usual checkpoint's way, whose metadata stands
/// (at a person's pace each page of code a checkpoint runs is a cold miss of its own).
#[cold]
#[inline(never)]
fn encode_metadata(record: MetadataRef<'_>, out: &mut Vec<u8>) -> Result<(), HsError> {
    record.encode_into(out)?;
    Ok(())
}

/// Fails with [`HsError::Injected`] when a test armed `step` (the `fault-injection` feature);
/// nothing otherwise.
fn inject(step: Step) -> Result<(), HsError> {
    #[cfg(feature = "fault-injection")]
    if fault::hit(step) {
        return Err(HsError::Injected(step));
    }
    let _ = step;
    Ok(())
}

/// The pages of `earlier` and `later` together, region by region.
fn merge(earlier: DirtyPages, mut later: DirtyPages) -> DirtyPages {
    for old in earlier.regions {
        match later.regions.iter_mut().find(|r| r.id == old.id) {
            Some(r) => r.runs = r.runs.union(&old.runs),
            None => later.regions.push(old),
        }
    }
    later
}
