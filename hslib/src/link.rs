//! The primary's link to its spare: a sender thread that owns the stream and puts snapshots on
//! it one at a time, in order; a thread that reads the spare's acks; and, for the socket
//! transports, a thread that accepts spares (a spare that connects gets a new session and a
//! full checkpoint).
//!
//! Sessions are numbered by *generation*. A snapshot is taken for the generation that was
//! live when it was taken and is dropped if that session has ended by its turn: a new session
//! must start with a full checkpoint, which the next snapshot will be.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::replica::ReplicaConfig;
use crate::session;
use crate::snapshot::{Copied, ForkedChild, Go, Snapshot};
use crate::sys::mman::StagingBuffer;
use crate::sys::process::{self, ChildEnd};
use crate::transport::{
    self, DrainEndpoint, Endpoint, FileLog, HANDSHAKE_TIMEOUT, NullEndpoint, TcpConfig, TcpServer,
    TransportError, UnixServer,
};
use crate::wire::{AckReader, Acked, CheckpointWriter, Hello};

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
}

/// "A spare connected and holds nothing of this primary yet": a flag and a pipe that is
/// readable while it is raised, so an application that idles in `poll` (a game waiting for a
/// key) wakes up and takes the checkpoint that brings the spare up to date.
#[derive(Debug, Default)]
struct Wanted {
    raised: AtomicBool,
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
            pipe: pipe.ok(),
        }
    }

    fn raise(&self) {
        // The byte first: a clear that sees the flag then always finds a byte to drain (the
        // other order could leave a byte no clear ever drains, and a poller spinning on it).
        if let Some((_, write)) = &self.pipe {
            // A full pipe is readable already.
            let _ = nix::unistd::write(write, &[1]);
        }
        self.raised.store(true, Ordering::Release);
    }

    /// Clears the flag; drains the pipe only when it was raised (one atomic otherwise).
    fn clear(&self) {
        if self.raised.swap(false, Ordering::AcqRel)
            && let Some((read, _)) = &self.pipe
        {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(read, &mut buf), Ok(n) if n > 0) {}
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panicking holder leaves plain counters behind; they are still meaningful.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Job {
    Connect(Box<dyn Endpoint>),
    Snapshot {
        id: u64,
        generation: u64,
        snapshot: Snapshot,
    },
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

/// The primary's end of the link.
#[derive(Debug)]
pub struct Link {
    jobs: Sender<Job>,
    recycle: Receiver<Copied>,
    pool: Vec<StagingBuffer>,
    /// Run and metadata vectors given back, for reuse (no allocation per checkpoint).
    spare_vecs: Vec<(Vec<crate::snapshot::Run>, Vec<u8>)>,
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
    next_job: u64,
    full_generation: u64,
    describe: String,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Connect(e) => write!(f, "Connect({})", e.describe()),
            Job::Snapshot { id, generation, .. } => write!(f, "Snapshot({id}, gen {generation})"),
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
}

impl Link {
    /// Opens the link: the sink's session at once (null, file), or a listener whose spares
    /// each get a session (unix, tcp).
    pub fn open(config: &LinkConfig, params: StreamParams) -> Result<Self, LinkError> {
        let (jobs, rx) = mpsc::channel();
        let (give_back, recycle) = mpsc::channel();
        let shared = Arc::new(Shared {
            wanted: Wanted::new(),
            ..Shared::default()
        });
        let mut sender = SenderThread::new(Arc::clone(&shared), params, give_back)?;
        // A sink's session opens here, so the first checkpoint finds it open.
        let describe = match config {
            LinkConfig::Null => {
                sender.connect(Box::new(NullEndpoint::new()));
                "null".to_owned()
            }
            LinkConfig::Drain => {
                let ep = DrainEndpoint::new().map_err(|source| LinkError::Spawn {
                    name: "hs-drain",
                    source,
                })?;
                sender.connect(Box::new(ep));
                "drain".to_owned()
            }
            LinkConfig::File { path, append } => {
                let log = if *append {
                    FileLog::append(path, ReplicaConfig::default())?
                } else {
                    FileLog::create(path)?
                };
                sender.connect(Box::new(log));
                if !shared.live.load(Ordering::Acquire) {
                    return Err(LinkError::Sink { path: path.clone() });
                }
                format!("file:{}", path.display())
            }
            LinkConfig::Unix { dir, name } => {
                transport::unix::secure_dir(dir)?;
                let server = bind_unix(dir, name)?;
                let describe = format!("unix:{}", server.path().display());
                let tx = jobs.clone();
                spawn("hs-accept", move || {
                    accept_loop(|| server.accept().map(|e| Box::new(e) as _), &tx)
                })?;
                describe
            }
            LinkConfig::Tcp { addr, config } => {
                let server = bind_with_grace(|| TcpServer::bind(*addr, config))?;
                let describe = format!("tcp:{}", server.local_addr().unwrap_or(*addr));
                let tx = jobs.clone();
                spawn("hs-accept", move || {
                    accept_loop(|| server.accept().map(|e| Box::new(e) as _), &tx)
                })?;
                describe
            }
        };
        let sender = spawn("hs-sender", move || sender.run(rx))?;
        Ok(Self {
            jobs,
            recycle,
            pool: Vec::new(),
            spare_vecs: Vec::new(),
            shared,
            sender: Some(sender),
            next_job: 0,
            full_generation: 0,
            describe,
        })
    }

    /// Where the link goes, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether a session is open (a spare is connected, or the sink is open).
    pub fn live(&self) -> bool {
        self.shared.live.load(Ordering::Acquire)
    }

    /// What a snapshot taken now is for. `None` when no session is open: nothing would
    /// carry it.
    pub fn plan(&self) -> Option<Plan> {
        let _p = self.shared.lock();
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == 0 || !self.live() {
            return None;
        }
        Some(Plan {
            generation,
            full: generation != self.full_generation,
            stream_fd: self.shared.stream_fd.load(Ordering::Acquire),
        })
    }

    /// Readable while a spare that connected waits for its first checkpoint (the next
    /// checkpoint, which [`Link::clear_wanted`] prepares, will be full and go to it).
    pub fn wanted_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.shared
            .wanted
            .pipe
            .as_ref()
            .map(|(read, _)| read.as_fd())
    }

    /// Clears the "checkpoint wanted" signal; called before planning a checkpoint, so a spare
    /// that connects after it raises the signal again.
    pub fn clear_wanted(&self) {
        self.shared.wanted.clear();
    }

    /// Whether a fork child is still writing (or waiting to).
    pub fn fork_in_flight(&self) -> bool {
        self.shared.fork_in_flight.load(Ordering::Acquire)
    }

    /// A buffer of at least `bytes` for the next copy snapshot: one the sender gave back if
    /// one is large enough (steady-state copies land in memory that is already mapped, no
    /// page faults), else a new one. The second value says whether it was new.
    pub fn staging(&mut self, bytes: usize) -> Result<(StagingBuffer, bool), LinkError> {
        self.take_back();
        self.pool.sort_by_key(StagingBuffer::capacity);
        if let Some(i) = self.pool.iter().position(|b| b.capacity() >= bytes) {
            return Ok((self.pool.remove(i), false));
        }
        // Grow: the largest old buffer is too small; give its memory back.
        self.pool.pop();
        let b = StagingBuffer::with_capacity(bytes).map_err(|e| LinkError::Staging(e.into()))?;
        Ok((b, true))
    }

    /// Collects what the sender gave back.
    fn take_back(&mut self) {
        while let Ok(c) = self.recycle.try_recv() {
            self.pool.push(c.data);
            self.spare_vecs.push((c.runs, c.metadata));
        }
    }

    /// A run vector and a metadata buffer the sender gave back (empty ones if none), whose
    /// allocations the next checkpoint reuses.
    pub fn spare_vecs(&mut self) -> (Vec<crate::snapshot::Run>, Vec<u8>) {
        self.take_back();
        self.spare_vecs.pop().unwrap_or_default()
    }

    /// Puts a staging buffer of `bytes`, its pages touched, in the pool unless one as large
    /// is there already.
    pub fn prewarm(&mut self, bytes: usize) -> Result<(), LinkError> {
        if self.pool.iter().any(|b| b.capacity() >= bytes) {
            return Ok(());
        }
        self.pool
            .push(StagingBuffer::with_capacity(bytes).map_err(|e| LinkError::Staging(e.into()))?);
        Ok(())
    }

    /// Hands a snapshot taken for `generation` to the sender; returns its job id.
    pub fn submit(
        &mut self,
        generation: u64,
        full: bool,
        snapshot: Snapshot,
    ) -> Result<u64, LinkError> {
        if let Snapshot::Forked(child) = &snapshot {
            self.shared.fork_in_flight.store(true, Ordering::Release);
            *lock_child(&self.shared) = child.pidfd.clone();
        }
        self.next_job += 1;
        let id = self.next_job;
        self.jobs
            .send(Job::Snapshot {
                id,
                generation,
                snapshot,
            })
            .map_err(|_| LinkError::SenderGone)?;
        if full {
            self.full_generation = generation;
        }
        Ok(id)
    }

    /// Waits until job `id` is on the stream and the spare acked it (sync mode). Returns
    /// what became of it; `Ok(false)` for a checkpoint dropped or whose session ended
    /// before the ack.
    pub fn wait_acked(&self, id: u64) -> Result<bool, LinkError> {
        let mut p = self.shared.lock();
        while p.done_job < id {
            if self.sender_gone() {
                return Err(LinkError::SenderGone);
            }
            p = self.wait(p);
        }
        let Some(Shipped::Written(cp)) = p.done.filter(|_| p.done_job == id) else {
            return Ok(false);
        };
        while p.acked < cp {
            if !self.live() {
                return Ok(false);
            }
            p = self.wait(p);
        }
        Ok(true)
    }

    fn wait<'a>(&self, p: MutexGuard<'a, Progress>) -> MutexGuard<'a, Progress> {
        // The timeout only guards against a missed wake-up; every change notifies.
        match self
            .shared
            .changed
            .wait_timeout(p, Duration::from_millis(50))
        {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }

    fn sender_gone(&self) -> bool {
        self.sender.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// SIGKILLs the fork child in flight, if any (for supervisors and failure tests: the
    /// session it was writing ends, the next spare gets a full checkpoint). Returns whether
    /// a child was signalled.
    pub fn kill_fork_child(&self) -> bool {
        let child = lock_child(&self.shared).clone();
        child.is_some_and(|fd| process::pidfd_kill(fd.as_fd()).is_ok())
    }

    /// Waits until every snapshot submitted so far is on the stream (or dropped) and its fork
    /// child, if any, has ended.
    pub fn wait_idle(&self) -> Result<(), LinkError> {
        let mut p = self.shared.lock();
        while p.done_job < self.next_job {
            if self.sender_gone() {
                return Err(LinkError::SenderGone);
            }
            p = self.wait(p);
        }
        Ok(())
    }

    /// Waits up to `timeout` for a session to open (a spare to connect).
    pub fn wait_live(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.lock();
        while !self.live() {
            if Instant::now() >= deadline || self.sender_gone() {
                return false;
            }
            p = self.wait(p);
        }
        true
    }

    /// The link's counters.
    pub fn stats(&self) -> LinkStats {
        self.shared.stats()
    }

    /// A handle on the counters for another thread.
    pub fn probe(&self) -> LinkProbe {
        LinkProbe {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Puts everything submitted on the stream, ends the session with a goodbye (the spare
    /// will not take over), and stops the sender.
    pub fn finish(mut self) -> Result<LinkStats, LinkError> {
        let _ = self.jobs.send(Job::Goodbye);
        if let Some(t) = self.sender.take() {
            t.join().map_err(|_| LinkError::SenderGone)?;
        }
        Ok(self.stats())
    }
}

/// What went wrong on the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
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

/// How long a new primary waits for a dying one's listening socket to go away.
const LISTENER_GRACE: Duration = Duration::from_secs(2);
/// The first wait between binds; it doubles up to [`LISTENER_RETRY_MAX`]. The dying
/// primary's socket usually goes within a millisecond or two, and a promoted spare's user is
/// waiting: look again soon, then back off.
const LISTENER_RETRY_MIN: Duration = Duration::from_micros(50);
/// The longest wait between binds.
const LISTENER_RETRY_MAX: Duration = Duration::from_millis(2);

/// Binds a listener with `bind`, waiting a little while the address is in use: a promoted
/// spare sees its primary's stream end while the kernel may still be releasing the dead
/// primary's listening socket (descriptors of an exiting process are released in no
/// promised order). A server that stays alive there for [`LISTENER_GRACE`] is refused.
fn bind_with_grace<S>(
    mut bind: impl FnMut() -> Result<S, TransportError>,
) -> Result<S, TransportError> {
    let start = Instant::now();
    let mut pause = LISTENER_RETRY_MIN;
    loop {
        match bind() {
            Err(e) if addr_in_use(&e) && start.elapsed() < LISTENER_GRACE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LISTENER_RETRY_MAX);
            }
            other => return other,
        }
    }
}

fn addr_in_use(e: &TransportError) -> bool {
    match e {
        TransportError::Path { source, .. } | TransportError::Net { source, .. } => {
            source.kind() == std::io::ErrorKind::AddrInUse
        }
        _ => false,
    }
}

/// Binds the Unix listener (see [`bind_with_grace`]).
fn bind_unix(dir: &std::path::Path, name: &str) -> Result<UnixServer, TransportError> {
    bind_with_grace(|| UnixServer::bind(dir, name))
}

fn accept_loop(
    mut accept: impl FnMut() -> Result<Box<dyn Endpoint>, TransportError>,
    jobs: &Sender<Job>,
) {
    loop {
        match accept() {
            Ok(ep) => {
                tracing::info!(peer = %ep.describe(), "spare connected");
                if jobs.send(Job::Connect(ep)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // A refused handshake (wrong key, ...) is the peer's problem; keep listening.
                tracing::warn!(error = %e, "a spare's connection was refused");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The session the sender writes to.
struct Open {
    writer: CheckpointWriter<Box<dyn Endpoint>>,
    generation: u64,
    acks: bool,
}

/// The sender thread's state.
struct SenderThread {
    shared: Arc<Shared>,
    params: StreamParams,
    give_back: Sender<Copied>,
    open: Option<Open>,
    next_checkpoint: u64,
    generation: u64,
    devnull: File,
}

impl SenderThread {
    fn new(
        shared: Arc<Shared>,
        params: StreamParams,
        give_back: Sender<Copied>,
    ) -> Result<Self, LinkError> {
        let next_checkpoint = params.first_checkpoint.max(1);
        // Opened before any fork, so a fork child of a null link has somewhere to write.
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .map_err(LinkError::DevNull)?;
        Ok(Self {
            shared,
            params,
            give_back,
            open: None,
            next_checkpoint,
            generation: 0,
            devnull,
        })
    }

    fn run(mut self, jobs: Receiver<Job>) {
        if let Err(e) = process::batch_this_thread() {
            tracing::debug!(error = %e, "SCHED_BATCH for the sender refused");
        }
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Connect(ep) => self.connect(ep),
                Job::Snapshot {
                    id,
                    generation,
                    snapshot,
                } => {
                    let done = self.ship(generation, snapshot);
                    let mut p = self.shared.lock();
                    p.done_job = id;
                    p.done = Some(done);
                    drop(p);
                    self.shared.changed.notify_all();
                }
                Job::Goodbye => break,
            }
        }
        self.close(true);
    }

    /// Ends the open session; with `goodbye`, first tells the spare not to take over.
    fn close(&mut self, goodbye: bool) {
        if let Some(mut open) = self.open.take() {
            if goodbye
                && self.shared.live.load(Ordering::Acquire)
                && let Err(e) = open.writer.goodbye()
            {
                tracing::warn!(error = %e, "sending the goodbye failed");
            }
            // Shut the socket down, not just this descriptor: the ack reader holds a
            // duplicate, and the spare must see the stream end. After a goodbye only our
            // sending side: the spare's last acks still arrive, and its reads see the
            // goodbye before the end.
            let _ = if goodbye {
                open.writer.get_ref().shutdown_write()
            } else {
                open.writer.get_ref().shutdown()
            };
            let p = self.shared.lock();
            self.shared.live.store(false, Ordering::Release);
            drop(p);
            self.shared.changed.notify_all();
        }
    }

    fn connect(&mut self, ep: Box<dyn Endpoint>) {
        // One spare at a time: the one replaced is told goodbye, so it exits instead of
        // taking over from a primary that is alive.
        self.close(true);
        let peer = ep.describe();
        let acks = ep.acks();
        let (writer, reader) = if acks {
            let clone = match ep.try_clone_endpoint() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(peer, error = %e, "cloning the spare's stream failed");
                    return;
                }
            };
            match session::open_primary(
                ep,
                self.params.epoch,
                self.next_checkpoint,
                &self.params.hello,
                HANDSHAKE_TIMEOUT,
            ) {
                Ok(s) => (s.writer, Some((clone, s.acks))),
                Err(e) => {
                    tracing::warn!(peer, error = %e, "opening a session with a spare failed");
                    return;
                }
            }
        } else {
            let mut w = CheckpointWriter::new(ep, self.params.epoch, self.next_checkpoint);
            if let Err(e) = w.hello(&self.params.hello) {
                tracing::warn!(peer, error = %e, "writing the hello failed");
                return;
            }
            (w, None)
        };
        self.generation += 1;
        let generation = self.generation;
        if let Some((clone, acks)) = reader {
            let shared = Arc::clone(&self.shared);
            let started = spawn("hs-acks", move || {
                read_acks(clone, acks, &shared, generation)
            });
            if let Err(e) = started {
                tracing::warn!(peer, error = %e, "starting the ack reader failed");
                return;
            }
        }
        tracing::info!(peer, generation, "session opened");
        self.open = Some(Open {
            writer,
            generation,
            acks,
        });
        let fd = self
            .open
            .as_ref()
            .and_then(|o| o.writer.get_ref().as_fd().map(process::raw))
            .unwrap_or_else(|| process::raw(self.devnull.as_fd()));
        let mut p = self.shared.lock();
        p.session_full = None;
        self.shared.stream_fd.store(fd, Ordering::Release);
        self.shared.generation.store(generation, Ordering::Release);
        self.shared.live.store(true, Ordering::Release);
        drop(p);
        self.shared.changed.notify_all();
        self.shared.wanted.raise();
    }

    /// Puts one snapshot on the stream if its session is still the open one.
    fn ship(&mut self, generation: u64, snapshot: Snapshot) -> Shipped {
        let usable = self.shared.live.load(Ordering::Acquire)
            && self
                .open
                .as_ref()
                .is_some_and(|o| o.generation == generation);
        let full = match &snapshot {
            Snapshot::Copied(c) => c.full,
            Snapshot::Forked(f) => f.full,
        };
        let result = match snapshot {
            Snapshot::Copied(c) => {
                let r = if usable { self.write_copy(&c) } else { None };
                let _ = self.give_back.send(c);
                r
            }
            Snapshot::Forked(child) => {
                let r = if usable {
                    self.run_child(child)
                } else {
                    drop(child.go);
                    reap(child.pid);
                    None
                };
                *lock_child(&self.shared) = None;
                self.shared.fork_in_flight.store(false, Ordering::Release);
                r
            }
        };
        match result {
            Some((cp, bytes)) => {
                let mut p = self.shared.lock();
                p.written += 1;
                p.bytes += bytes;
                p.last_written = cp;
                if full {
                    p.session_full = Some(cp);
                }
                if self.open.as_ref().is_some_and(|o| !o.acks) {
                    p.acked = cp;
                }
                Shipped::Written(cp)
            }
            None => Shipped::Dropped,
        }
    }

    fn write_copy(&mut self, c: &Copied) -> Option<(u64, u64)> {
        let open = self.open.as_mut()?;
        match c.write(&mut open.writer) {
            Ok(cp) => {
                self.next_checkpoint = cp + 1;
                self.sync_sink();
                Some((cp, c.data.len() as u64))
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing a checkpoint failed; the session is over");
                self.close(false);
                None
            }
        }
    }

    fn sync_sink(&mut self) {
        if let Some(open) = &self.open
            && !open.acks
            && self.params.sync_sink
            && let Err(e) = open.writer.get_ref().sync()
        {
            tracing::warn!(error = %e, "syncing the checkpoint log failed");
        }
    }

    fn run_child(&mut self, child: ForkedChild) -> Option<(u64, u64)> {
        let open = self.open.as_mut()?;
        let state = open.writer.state();
        let go = Go {
            epoch: state.epoch,
            sequence: state.next_sequence,
            checkpoint: state.next_checkpoint,
        };
        if let Err(e) = process::write_all(child.go.as_fd(), &go.encode()) {
            // The child died before its turn. Its pages were taken off the tracker's books,
            // so the spare can never be patched up to date incrementally: end the session
            // (the next one starts with a full checkpoint).
            tracing::warn!(error = %e, "handing a fork child its turn failed; the session is over");
            drop(child.go);
            reap(child.pid);
            self.close(false);
            return None;
        }
        drop(child.go);
        match process::wait_child(child.pid) {
            Ok(ChildEnd::Exited(crate::snapshot::CHILD_DONE)) => {
                let mut s = state;
                s.skip_checkpoint(child.frames);
                let open = self.open.as_mut()?;
                open.writer.set_state(s);
                self.next_checkpoint = go.checkpoint + 1;
                self.sync_sink();
                Some((go.checkpoint, child.pages * crate::sys::PAGE_SIZE as u64))
            }
            other => {
                // The child may have left a partial frame: nothing after it can be read.
                tracing::warn!(?other, "a fork child failed to write its checkpoint");
                self.close(false);
                None
            }
        }
    }
}

fn lock_child(shared: &Shared) -> MutexGuard<'_, Option<Arc<std::os::fd::OwnedFd>>> {
    shared
        .child
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reap(pid: nix::unistd::Pid) {
    if let Err(e) = process::wait_child(pid) {
        tracing::warn!(%pid, error = %e, "reaping a fork child failed");
    }
}

fn read_acks(mut ep: Box<dyn Endpoint>, mut acks: AckReader, shared: &Shared, generation: u64) {
    if let Err(e) = process::batch_this_thread() {
        tracing::debug!(error = %e, "SCHED_BATCH for the ack reader refused");
    }
    loop {
        match acks.expect(&mut ep, Acked::Commit, None) {
            Ok(ack) => {
                let mut p = shared.lock();
                p.acked = p.acked.max(ack.checkpoint);
                drop(p);
                shared.changed.notify_all();
            }
            Err(e) => {
                tracing::info!(generation, error = %e, "the spare's ack stream ended");
                let p = shared.lock();
                if shared.generation.load(Ordering::Acquire) == generation {
                    shared.live.store(false, Ordering::Release);
                }
                drop(p);
                shared.changed.notify_all();
                return;
            }
        }
    }
}
