//! The primary's end of the link, held by its `Context`: plans and submits snapshots, hands
//! out staging buffers, waits for acks and reads the counters.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::coalesce::{self, Queued};
use super::direct::{self, AckRead};
use super::pool::Pool;
use super::returns::Returns;
use super::sender::SenderThread;
use super::{
    Delivery, Job, LinkConfig, LinkError, LinkProbe, LinkStats, MaxLag, Plan, Progress, Shared,
    Shipped, StreamParams, Wanted, acceptor, lock_child, spawn,
};
use crate::replica::ReplicaConfig;
use crate::snapshot::{Copied, Snapshot};
use crate::sys::process;
use crate::transport::{DrainEndpoint, FileLog, NullEndpoint};

/// What became of a sync checkpoint ([`Link::wait_acked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckWait {
    /// The spare acked it.
    Acked,
    /// It was not shipped, or its session ended before the ack.
    NotAcked,
    /// The spare missed the ack deadline and was dropped.
    SpareDropped,
}

/// The primary's end of the link.
#[derive(Debug)]
pub struct Link {
    jobs: Sender<Job>,
    /// Copy snapshots the sender is done with.
    recycle: Arc<Returns>,
    /// Snapshots given back, kept whole for their staging buffer and their run and
    /// metadata vectors.
    pool: Pool,
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
    next_job: u64,
    full_generation: u64,
    describe: String,
    max_lag: Option<MaxLag>,
    /// A checkpoint log and its size limit, looked at every [`COMPACT_CHECK_EVERY`]
    /// checkpoints.
    log_limit: Option<(std::path::PathBuf, u64)>,
    plans: u64,
    delivery: Delivery,
    /// Sync mode's direct path: a whole checkpoint's frames, gathered for one `write`.
    gathered: Vec<u8>,
    /// The standby thread waits here before it listens ([`Link::open_on`]).
    listen_gate: Option<Arc<ListenGate>>,
    /// The next checkpoint opens `listen_gate`.
    release_armed: bool,
}

/// The longest a listener opened on a standby thread waits for the application's first
/// checkpoint ([`Link::release_listener_at_next_checkpoint`]): a game that idles gets its
/// listener this long after its promotion (a new spare takes longer to start).
pub const LISTEN_AT_THE_LATEST: Duration = Duration::from_millis(2);

/// A one-way gate: closed until opened, with a bounded wait.
#[derive(Debug, Default)]
struct ListenGate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl ListenGate {
    fn open(&self) {
        *self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.opened.notify_all();
    }

    /// Waits until opened, at most `bound`.
    fn wait(&self, bound: Duration) {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .opened
            .wait_timeout_while(open, bound, |open| !*open)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

/// How often (in checkpoints) the link looks at its log's size.
const COMPACT_CHECK_EVERY: u64 = 16;

impl Link {
    /// Opens the link: the sink's session at once (null, file), or a listener whose spares
    /// each get a session (unix, tcp).
    ///
    /// [`super::ENV_MAX_LAG`] (if set) bounds how far the stream may fall behind; in lazy
    /// mode ([`Delivery::Polled`]) a time there must exceed the lazy bound
    /// ([`LinkError::LagBelowLazy`]).
    pub fn open(config: &LinkConfig, params: StreamParams) -> Result<Self, LinkError> {
        Self::open_on(config, params, None)
    }

    /// [`Link::open`], the sender being `standby` (a thread started ahead, by a spare while
    /// it waited) when given. Then a socket link's listener is opened on that thread too,
    /// before it becomes the sender: the caller (a promoted spare, whose user waits for the
    /// screen) starts no thread and waits for no bind; checkpoints taken before a spare
    /// connects ship nothing, as with any link without a session. A listener that cannot be
    /// opened there fails the next checkpoint ([`Link::listen_failed`]).
    pub fn open_on(
        config: &LinkConfig,
        params: StreamParams,
        standby: Option<super::Standby>,
    ) -> Result<Self, LinkError> {
        let max_lag = MaxLag::from_env()?;
        let delivery = params.delivery;
        if let (Some(MaxLag::Time(t)), Delivery::Polled(every)) = (max_lag, delivery)
            && t <= every
        {
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            return Err(LinkError::LagBelowLazy {
                max_lag_us: us(t),
                lazy_us: us(every),
            });
        }
        let (jobs, rx) = mpsc::channel();
        let recycle = Arc::new(Returns::default());
        let shared = Arc::new(Shared {
            wanted: Wanted::new(),
            ..Shared::default()
        });
        let mut sender =
            SenderThread::new(Arc::clone(&shared), params.clone(), Arc::clone(&recycle))?;
        let mut log_limit = None;
        let mut listen_gate = None;
        // A sink's session opens here, so the first checkpoint finds it open.
        let (describe, thread) = match (config, standby) {
            (LinkConfig::Null, standby) => {
                sender.connect(Box::new(NullEndpoint::new()));
                ("null".to_owned(), start_sender(standby, sender, rx)?)
            }
            (LinkConfig::Drain, standby) => {
                let ep = DrainEndpoint::new().map_err(|source| LinkError::Spawn {
                    name: "hs-drain",
                    source,
                })?;
                sender.connect(Box::new(ep));
                ("drain".to_owned(), start_sender(standby, sender, rx)?)
            }
            (LinkConfig::File { path, append }, standby) => {
                let log = if *append {
                    FileLog::append(path, ReplicaConfig::default())?
                } else {
                    FileLog::create(path)?
                };
                sender.connect(Box::new(log));
                if !shared.live.load(Ordering::Acquire) {
                    return Err(LinkError::Sink { path: path.clone() });
                }
                if let Some(max) = params.log_max_bytes {
                    sender.compact_log(path, max);
                    log_limit = Some((path.clone(), max));
                }
                let thread = start_sender(standby, sender, rx)?;
                (format!("file:{}", path.display()), thread)
            }
            (LinkConfig::Unix { .. } | LinkConfig::Tcp { .. }, None) => {
                let describe = listen(config, params, jobs.clone())?;
                (describe, spawn("hs-sender", move || sender.run(rx))?)
            }
            (LinkConfig::Unix { .. } | LinkConfig::Tcp { .. }, Some(standby)) => {
                // Listening, then sending, on the standby thread, once the application has
                // had the CPU for its first steps (see [`Link::release_listener`]).
                let at = listening_at(config);
                let (config, jobs, failed) = (config.clone(), jobs.clone(), Arc::clone(&shared));
                let gate = Arc::new(ListenGate::default());
                let waiting = Arc::clone(&gate);
                listen_gate = Some(gate);
                let thread = standby.run(move || {
                    waiting.wait(LISTEN_AT_THE_LATEST);
                    match listen(&config, params, jobs) {
                        Ok(_) => sender.run(rx),
                        Err(e) => failed.fail_listening(&e),
                    }
                })?;
                (at, thread)
            }
        };
        Ok(Self {
            jobs,
            recycle,
            pool: Pool::default(),
            shared,
            sender: Some(thread),
            next_job: 0,
            full_generation: 0,
            describe,
            max_lag,
            log_limit,
            plans: 0,
            delivery,
            gathered: Vec::new(),
            listen_gate,
            release_armed: false,
        })
    }

    /// Has the listener opened on the standby thread ([`Link::open_on`]) at the next
    /// checkpoint: a promoted spare's library takes one checkpoint itself before the worker
    /// runs; the worker's first (a game's first move, after its first frame) opens it, or
    /// [`LISTEN_AT_THE_LATEST`] after the open, whichever comes first. Until then the
    /// standby thread does not compete for the CPU with the application's first steps.
    pub fn release_listener_at_next_checkpoint(&mut self) {
        self.release_armed = self.listen_gate.is_some();
    }

    /// Lets the standby thread listen now (see [`Link::release_listener_at_next_checkpoint`]).
    pub fn release_listener(&mut self) {
        if let Some(gate) = self.listen_gate.take() {
            gate.open();
        }
    }

    /// Before a checkpoint: opens the listener if that was armed, and reports why it could
    /// not be opened, once that is known ([`Link::listen_failed`]).
    pub fn before_checkpoint(&mut self) -> Result<(), LinkError> {
        if self.release_armed {
            self.release_armed = false;
            self.release_listener();
        }
        self.listen_failed()
    }

    /// Why the listener opened off the caller's path ([`Link::open_on`]) could not be
    /// opened, once that is known; `Ok` while it is open or still being opened.
    pub fn listen_failed(&self) -> Result<(), LinkError> {
        if !self.shared.listen_failed_set.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self
            .shared
            .listen_failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        Err(LinkError::Listen {
            at: self.describe.clone(),
            why,
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

    /// Before a checkpoint is planned: if the checkpoint log has outgrown its limit, has the
    /// sender start the compacted log (a new session, so the checkpoint planned next is full)
    /// and waits until it has, which is after every snapshot queued before went to the old
    /// log. Looks at the log's size every few checkpoints only.
    pub fn compact_if_due(&mut self) -> Result<(), LinkError> {
        let Some((path, max)) = &self.log_limit else {
            return Ok(());
        };
        self.plans += 1;
        if !self.plans.is_multiple_of(COMPACT_CHECK_EVERY)
            || !super::compact::Compaction::outgrown(path, *max)
        {
            return Ok(());
        }
        let mut p = self.shared.lock();
        let before = p.compactions;
        self.jobs
            .send(Job::Compact)
            .map_err(|_| LinkError::SenderGone)?;
        while p.compactions == before {
            if self.sender_gone() {
                return Err(LinkError::SenderGone);
            }
            p = self.wait(p);
        }
        Ok(())
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

    /// A snapshot to take the next copy snapshot into, its staging buffer of at least
    /// `bytes` ([`Pool::take`]). The second value says whether its buffer is new.
    #[inline]
    pub fn staging(&mut self, bytes: usize) -> Result<(Copied, bool), LinkError> {
        self.pool
            .take(bytes, &self.recycle)
            .map_err(|e| LinkError::Staging(e.into()))
    }

    /// Puts a staging buffer of `bytes`, its pages touched, in the pool unless one as large
    /// is there already.
    pub fn prewarm(&mut self, bytes: usize) -> Result<(), LinkError> {
        self.pool
            .prewarm(bytes)
            .map_err(|e| LinkError::Staging(e.into()))
    }

    /// Hands a snapshot taken for `generation` to the sender; returns its job id. A copy
    /// snapshot taken while an older one still waits for the sender is merged into it: the
    /// sender ships both as one checkpoint, and every job up to this one is done with it.
    #[inline(always)]
    pub fn submit(
        &mut self,
        generation: u64,
        full: bool,
        snapshot: Snapshot,
    ) -> Result<u64, LinkError> {
        self.next_job += 1;
        let id = self.next_job;
        self.shared.submitted.store(id, Ordering::Release);
        if full {
            self.full_generation = generation;
        }
        match snapshot {
            Snapshot::Copied(copied) => {
                let alone = self.queue(id, generation, copied)?;
                // Without a bound nothing is waited for, and a time bound cannot be passed by
                // a snapshot that waits alone in the slot it was just put in: no call, no
                // lock taken, no clock read (cold lines at a person's pace).
                if self.max_lag.is_some() && !(alone && self.timed()) {
                    self.wait_lag()?;
                }
                Ok(id)
            }
            Snapshot::Forked(child) => self.submit_forked(id, generation, child),
        }
    }

    /// [`Link::submit`] of a fork snapshot, job `id`: out of the copy snapshots' way (their
    /// path is the one a person's-pace checkpoint runs from cold code).
    #[cold]
    #[inline(never)]
    fn submit_forked(
        &mut self,
        id: u64,
        generation: u64,
        child: crate::snapshot::ForkedChild,
    ) -> Result<u64, LinkError> {
        // What is queued was taken before the child: it goes first.
        let queued = self.shared.queued().queued.take();
        if let Some(q) = queued {
            self.send(Job::Snapshot {
                id: q.last_id,
                generation: q.generation,
                snapshot: Snapshot::Copied(q.copied),
            })?;
        }
        self.shared.fork_in_flight.store(true, Ordering::Release);
        *lock_child(&self.shared) = child.pidfd.clone();
        self.send(Job::Snapshot {
            id,
            generation,
            snapshot: Snapshot::Forked(child),
        })?;
        self.wait_lag()?;
        Ok(id)
    }

    /// Lazy mode's steady checkpoint, whole, in one place (at a person's pace every line of
    /// code it runs is a cold miss of its own, so the usual case runs no other): when
    /// nothing but the copy is to be done, copies `runs` of `regions` into a pooled snapshot
    /// with `runs` and `metadata` (the context's plan number `plan`: a pooled snapshot that
    /// holds that plan's vectors already keeps them) and publishes it in the queue's place
    /// for the sender. Nothing else is to be done when the session the last checkpoint went
    /// to is still open and no spare waits for a full one, no listener is to be opened or
    /// has failed, no log's size is due to be looked at and no fork child writes. Otherwise it returns
    /// `None` having changed nothing, and the caller plans the checkpoint in full
    /// ([`Link::plan`] and the rest).
    #[inline(always)]
    pub fn publish_steady(
        &mut self,
        regions: &[crate::region::Region],
        runs: &[crate::snapshot::Run],
        metadata: &[u8],
        plan: u64,
    ) -> Option<Result<u64, LinkError>> {
        // (A log's size is looked at by the general path, every few checkpoints.)
        if !matches!(self.delivery, Delivery::Polled(_))
            || self.release_armed
            || (self.log_limit.is_some() && (self.plans + 1).is_multiple_of(COMPACT_CHECK_EVERY))
        {
            return None;
        }
        let shared = &*self.shared;
        let generation = shared.generation.load(Ordering::Acquire);
        // (A session that ends or is replaced after these loads drops what was planned for
        // it, as it does for a snapshot planned in full.)
        if generation == 0
            || generation != self.full_generation
            || !shared.live.load(Ordering::Acquire)
            || shared.fork_in_flight.load(Ordering::Acquire)
            || shared.listen_failed_set.load(Ordering::Acquire)
            || shared.wanted.raised()
        {
            return None;
        }
        self.plans += 1;
        let bytes = crate::snapshot::staging_bytes(runs);
        let shell = match self.pool.take_last(bytes) {
            Some(shell) => shell,
            // What the sender gave back is collected (out of line).
            None => match self.staging(bytes) {
                Ok((shell, _)) => shell,
                Err(e) => return Some(Err(e)),
            },
        };
        {
            use crate::probe::{MARKS, Mark, mark_skipped};
            // Every step from the cbw settling to the staging buffer: nothing to do.
            mark_skipped(&MARKS[Mark::Settled as usize..=Mark::Staged as usize]);
        }
        let mut shell = shell;
        if shell.plan != plan {
            shell.runs.clear();
            shell.runs.extend_from_slice(runs);
            shell.metadata.clear();
            shell.metadata.extend_from_slice(metadata);
            shell.plan = plan;
        }
        crate::probe::mark(crate::probe::Mark::Vectors);
        shell.retake(regions);
        crate::probe::mark(crate::probe::Mark::Taken);
        Some(self.submit(generation, false, Snapshot::Copied(shell)))
    }

    /// Sync mode: ships a snapshot taken for `generation` and waits for the spare's ack (at
    /// most `deadline`, see [`Link::wait_acked`]). When the sender has nothing ahead of it
    /// (the usual case: every sync checkpoint waited for the one before) a copy snapshot
    /// takes the direct path: this thread writes the whole checkpoint with one `write` and
    /// reads its ack with one `read`, no thread woken on the way out or back. Otherwise it
    /// goes through the sender like any snapshot. Returns the job id and what became of it.
    pub fn submit_sync(
        &mut self,
        generation: u64,
        full: bool,
        snapshot: Snapshot,
        deadline: Option<Duration>,
    ) -> Result<(u64, AckWait), LinkError> {
        let snapshot = match snapshot {
            Snapshot::Copied(c) if self.delivery == Delivery::Direct => {
                match self.try_direct(generation, full, c, deadline)? {
                    Ok(done) => return Ok(done),
                    Err(c) => Snapshot::Copied(c),
                }
            }
            other => other,
        };
        let id = self.submit(generation, full, snapshot)?;
        Ok((id, self.wait_acked(id, generation, deadline)?))
    }

    /// The direct path of [`Link::submit_sync`]; gives the snapshot back when the sender is
    /// not idle or the session is not the one it was taken for.
    fn try_direct(
        &mut self,
        generation: u64,
        full: bool,
        copied: Copied,
        deadline: Option<Duration>,
    ) -> Result<Result<(u64, AckWait), Copied>, LinkError> {
        // Cheap looks first, without the session's lock (a fork child's turn holds it).
        if self.fork_in_flight() || self.shared.queued().queued.is_some() {
            return Ok(Err(copied));
        }
        let shared = Arc::clone(&self.shared);
        let mut session = shared.session();
        let idle = {
            let p = shared.lock();
            // Every job submitted is done, none is in the sender's hands.
            p.done_job == self.next_job
                && !self.fork_in_flight()
                && shared.live.load(Ordering::Acquire)
        };
        let usable = session
            .open
            .as_ref()
            .is_some_and(|o| o.generation == generation && o.direct.is_some());
        let slot = &mut *session;
        let Some(open) = slot.open.as_mut().filter(|_| idle && usable) else {
            return Ok(Err(copied));
        };
        self.next_job += 1;
        let id = self.next_job;
        shared.submitted.store(id, Ordering::Release);
        if full {
            self.full_generation = generation;
        }
        let written = open.write_gathered(&copied, &mut self.gathered);
        self.give_back(copied);
        let (cp, bytes) = match written {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "writing a checkpoint failed; the session is over");
                direct::close(&shared, &mut slot.open, false);
                let mut p = shared.lock();
                p.done_job = id;
                p.done = Some(Shipped::Dropped);
                drop(p);
                return Ok(Ok((id, AckWait::NotAcked)));
            }
        };
        slot.next_checkpoint = cp + 1;
        shared
            .direct_wrote
            .store(super::stamp_now(), Ordering::Relaxed);
        direct::count_written(&shared, cp, bytes, full, false, Some(id));
        let read = open.read_ack(cp, deadline);
        Ok(Ok((id, self.acked(session, cp, generation, read)?)))
    }

    /// Books what reading the ack of checkpoint `cp` came to, holding the session's lock.
    fn acked(
        &self,
        mut session: MutexGuard<'_, super::Session>,
        cp: u64,
        generation: u64,
        read: AckRead,
    ) -> Result<AckWait, LinkError> {
        match read {
            AckRead::Acked => {
                let mut p = self.shared.lock();
                p.acked = p.acked.max(cp);
                drop(p);
                drop(session);
                // No notify (it is a system call even with no one waiting): only this
                // thread, the link's owner, ever waits for the counters.
                Ok(AckWait::Acked)
            }
            AckRead::Late => {
                drop(session);
                self.drop_spare(generation)
            }
            AckRead::Broken(e) => {
                tracing::info!(generation, error = %e, "the spare's ack stream ended");
                direct::close(&self.shared, &mut session.open, false);
                Ok(AckWait::NotAcked)
            }
        }
    }

    /// Bounds how far the stream may fall behind: past it, [`Link::submit`] waits for the
    /// sender. `None`: never waits.
    pub fn set_max_lag(&mut self, max: Option<MaxLag>) {
        self.max_lag = max;
    }

    /// Waits while the stream is behind by more than the bound (and a session is open to
    /// catch up on).
    fn wait_lag(&self) -> Result<(), LinkError> {
        let Some(max) = self.max_lag else {
            return Ok(());
        };
        let mut p = self.shared.lock();
        loop {
            let behind = match max {
                MaxLag::Checkpoints(n) => self.next_job.saturating_sub(p.done_job) > n,
                MaxLag::Time(t) => self
                    .shared
                    .queued()
                    .queued
                    .as_ref()
                    .and_then(|q| q.since)
                    .is_some_and(|since| since.elapsed() > t),
            };
            if !behind || !self.live() {
                return Ok(());
            }
            if self.sender_gone() {
                return Err(LinkError::SenderGone);
            }
            p = self.wait(p);
        }
    }

    /// Whether the lag is bounded in time (queued snapshots are then stamped).
    #[inline(always)]
    fn timed(&self) -> bool {
        matches!(self.max_lag, Some(MaxLag::Time(_)))
    }

    fn send(&self, job: Job) -> Result<(), LinkError> {
        self.jobs.send(job).map_err(|_| LinkError::SenderGone)
    }

    /// Puts a copy snapshot in the queue's one place, merged with the one there if any.
    /// Returns whether the place was empty (the snapshot waits there alone, just put).
    #[inline(always)]
    fn queue(&mut self, id: u64, generation: u64, copied: Copied) -> Result<bool, LinkError> {
        // The usual case, an empty place, without the shared state's reference count (one
        // more line another thread writes).
        let mut slot = self.shared.queued();
        if slot.queued.is_none() {
            // (Not an assignment, which would call the old value's drop.)
            slot.queued
                .get_or_insert(Queued::alone(id, generation, copied, self.timed()));
            let parked = slot.unpark();
            drop(slot);
            self.announce(parked)?;
            return Ok(true);
        }
        drop(slot);
        self.queue_behind(id, generation, copied)
    }

    /// [`Link::queue`] when the place may be taken: merged with what waits there, out of
    /// the usual case's way.
    #[cold]
    #[inline(never)]
    fn queue_behind(
        &mut self,
        id: u64,
        generation: u64,
        copied: Copied,
    ) -> Result<bool, LinkError> {
        let shared = Arc::clone(&self.shared);
        let mut slot = shared.queued();
        let Some(mut q) = slot.queued.take() else {
            // The sender took what was there in between.
            slot.queued = Some(Queued::alone(id, generation, copied, self.timed()));
            let parked = slot.unpark();
            drop(slot);
            self.announce(parked)?;
            return Ok(true);
        };
        // Its `Job::Queued` is still ahead in the channel: the sender takes what is here.
        let same = q.generation == generation;
        if !same || copied.full || coalesce::covers(&copied.runs, &q.copied.runs) {
            // Its session is over, or the new snapshot holds all its pages: it is superseded
            // (and within a session the new one stands for both, the first one's fullness
            // included: a spare's first checkpoint must be full).
            let mut copied = copied;
            let (checkpoints, since) = if same {
                copied.full |= q.copied.full;
                (q.checkpoints + 1, q.since)
            } else {
                (1, coalesce::stamp(self.timed()))
            };
            self.give_back(q.copied);
            slot.queued = Some(Queued {
                last_id: id,
                generation,
                copied,
                since,
                checkpoints,
            });
        } else {
            let (mut merged, _) = self.staging(q.copied.data.len() + copied.data.len())?;
            coalesce::merge(&q.copied, &copied, &mut merged.data, &mut merged.runs);
            merged.full = q.copied.full;
            // The newer metadata stands; the shell's old vector goes back with `copied`.
            let mut copied = copied;
            std::mem::swap(&mut merged.metadata, &mut copied.metadata);
            merged.plan = Copied::UNKNOWN_PLAN;
            copied.plan = Copied::UNKNOWN_PLAN;
            let older = std::mem::replace(&mut q.copied, merged);
            q.last_id = id;
            q.checkpoints += 1;
            self.give_back(copied);
            self.give_back(older);
            slot.queued = Some(q);
        }
        drop(slot);
        self.shared.lock().coalesced += 1;
        self.pool.trim();
        Ok(false)
    }

    /// Tells the sender a snapshot waits in the queue's place; lazy mode does not (the
    /// sender looks on its own schedule: no system call) unless the sender had `parked`
    /// (it stopped looking after a long idle time, and sleeps until told).
    #[inline(always)]
    fn announce(&self, parked: bool) -> Result<(), LinkError> {
        if matches!(self.delivery, Delivery::Polled(_)) {
            return if parked { self.wake_parked() } else { Ok(()) };
        }
        self.send(Job::Queued)
    }

    /// Lazy mode: wakes the parked sender (the first checkpoint after a long idle time).
    #[cold]
    #[inline(never)]
    fn wake_parked(&self) -> Result<(), LinkError> {
        self.send(Job::Queued)
    }

    /// Keeps a snapshot's buffers for reuse.
    fn give_back(&mut self, c: Copied) {
        self.pool.give_back(c);
    }

    /// Waits until job `id` is on the stream and the spare acked it (sync mode), at most
    /// `deadline` (`None`: without limit). Returns what became of it: a checkpoint dropped,
    /// or whose session ended before the ack, is [`AckWait::NotAcked`]; when the deadline
    /// passes first, the spare of `generation` is dropped ([`Link::drop_spare`]) and the
    /// answer is [`AckWait::SpareDropped`].
    pub fn wait_acked(
        &self,
        id: u64,
        generation: u64,
        deadline: Option<Duration>,
    ) -> Result<AckWait, LinkError> {
        let until = deadline.map(|d| Instant::now() + d);
        let expired = || until.is_some_and(|u| Instant::now() >= u);
        let mut p = self.shared.lock();
        while p.done_job < id {
            if self.sender_gone() {
                return Err(LinkError::SenderGone);
            }
            if expired() {
                drop(p);
                return self.drop_spare(generation);
            }
            p = self.wait_until(p, until);
        }
        let Some(Shipped::Written(cp)) = p.done.filter(|_| p.done_job == id) else {
            return Ok(AckWait::NotAcked);
        };
        if p.acked < cp {
            drop(p);
            // Sync mode: no thread reads the acks; this one does.
            let mut session = self.shared.session();
            if let Some(open) = session
                .open
                .as_mut()
                .filter(|o| o.generation == generation && o.direct.is_some())
            {
                let left = until.map(|u| u.saturating_duration_since(Instant::now()));
                if left.is_some_and(|d| d.is_zero()) {
                    drop(session);
                    return self.drop_spare(generation);
                }
                let read = open.read_ack(cp, left);
                return self.acked(session, cp, generation, read);
            }
            drop(session);
            p = self.shared.lock();
        }
        while p.acked < cp {
            if !self.live() {
                return Ok(AckWait::NotAcked);
            }
            if expired() {
                drop(p);
                return self.drop_spare(generation);
            }
            p = self.wait_until(p, until);
        }
        Ok(AckWait::Acked)
    }

    /// Ends the session of `generation` at once (later checkpoints are not shipped to it)
    /// and has the sender tell its spare goodbye, so that a spare that was stopped and
    /// wakes up exits instead of taking over. A session that has ended already, or been
    /// replaced by a newer spare's, is left alone ([`AckWait::NotAcked`]).
    pub fn drop_spare(&self, generation: u64) -> Result<AckWait, LinkError> {
        let p = self.shared.lock();
        if self.shared.generation.load(Ordering::Acquire) != generation || !self.live() {
            return Ok(AckWait::NotAcked);
        }
        self.shared.live.store(false, Ordering::Release);
        drop(p);
        self.shared.changed.notify_all();
        self.send(Job::DropSpare(generation))?;
        Ok(AckWait::SpareDropped)
    }

    /// [`Link::wait`], waking no later than `until`.
    fn wait_until<'a>(
        &self,
        p: MutexGuard<'a, Progress>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, Progress> {
        let Some(until) = until else {
            return self.wait(p);
        };
        let left = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        match self.shared.changed.wait_timeout(p, left) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
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

/// Runs the sender on `standby` if given, else on a new thread.
fn start_sender(
    standby: Option<super::Standby>,
    sender: SenderThread,
    rx: Receiver<Job>,
) -> Result<JoinHandle<()>, LinkError> {
    match standby {
        Some(standby) => standby.run(move || sender.run(rx)),
        None => spawn("hs-sender", move || sender.run(rx)),
    }
}

/// Listens for spares on a socket link (unix, tcp); where it listens, for messages.
fn listen(
    config: &LinkConfig,
    params: StreamParams,
    jobs: Sender<Job>,
) -> Result<String, LinkError> {
    match config {
        LinkConfig::Unix { dir, name } => acceptor::listen_unix(dir, name, params, jobs),
        LinkConfig::Tcp { addr, config } => acceptor::listen_tcp(*addr, config, params, jobs),
        other => Err(LinkError::Listen {
            at: format!("{other:?}"),
            why: "only the unix and tcp links listen".to_owned(),
        }),
    }
}

/// Where a socket link will listen, for messages, before it does.
fn listening_at(config: &LinkConfig) -> String {
    match config {
        LinkConfig::Unix { dir, name } => format!("unix:{}", dir.join(name).display()),
        LinkConfig::Tcp { addr, .. } => format!("tcp:{addr}"),
        other => format!("{other:?}"),
    }
}
