//! The sender thread: owns the stream and serialises every frame on it (sessions' hellos,
//! checkpoints in order, the goodbye), and runs fork children's turns.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::acceptor::Handshaken;
use super::acks::read_acks;
use super::compact::Compaction;
use super::direct::{self, DirectAcks, Open};
use super::returns::Returns;
use super::{Delivery, Job, LinkError, Shared, Shipped, StreamParams, lock_child, spawn};
use crate::snapshot::{Copied, ForkedChild, Go, Snapshot};
use crate::sys::process::{self, ChildEnd};
use crate::transport::Endpoint;
use crate::wire::{AckReader, CheckpointWriter};

/// The sender thread's state.
pub(super) struct SenderThread {
    shared: Arc<Shared>,
    params: StreamParams,
    give_back: Arc<Returns>,
    generation: u64,
    devnull: File,
    /// When the open session's last frame was written.
    last_sent: Instant,
    /// Sessions of dropped spares whose goodbye could not be written (their socket buffer was
    /// full): held open, so a spare that wakes up never reads an end of stream it would take
    /// for its primary's death.
    parked: Vec<CheckpointWriter<Box<dyn Endpoint>>>,
    /// A checkpoint log kept within its size limit.
    compaction: Option<Compaction>,
    /// Lazy mode: when the sender looks at the published slot next, and how often.
    poll: Option<(Instant, Duration)>,
    /// Lazy mode: when a look last found a snapshot (or the sender started or woke).
    found: Instant,
    /// Lazy mode: parked ([`Slot::parked`](super::Slot)): not looking until a job comes.
    asleep: bool,
}

/// Lazy mode: how long the sender looks on its schedule without finding anything before it
/// parks. Long enough that a person's moves (a few a second) never meet a parked sender;
/// short enough that an idle daemon stops waking a thousand times a second.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

impl SenderThread {
    pub(super) fn new(
        shared: Arc<Shared>,
        params: StreamParams,
        give_back: Arc<Returns>,
    ) -> Result<Self, LinkError> {
        shared.session().next_checkpoint = params.first_checkpoint.max(1);
        let poll = match params.delivery {
            Delivery::Polled(every) => Some((Instant::now() + every, every)),
            Delivery::Woken | Delivery::Direct => None,
        };
        // Opened before any fork, so a fork child of a null link has somewhere to write.
        let devnull = File::options()
            .write(true)
            .open("/dev/null")
            .map_err(LinkError::DevNull)?;
        Ok(Self {
            shared,
            params,
            give_back,
            generation: 0,
            devnull,
            last_sent: Instant::now(),
            parked: Vec::new(),
            compaction: None,
            poll,
            found: Instant::now(),
            asleep: false,
        })
    }

    pub(super) fn run(mut self, jobs: Receiver<Job>) {
        if let Err(e) = process::batch_this_thread() {
            tracing::debug!(error = %e, "SCHED_BATCH for the sender refused");
        }
        loop {
            let due = match (self.heartbeat_due(), self.poll_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let job = match due {
                None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => jobs.recv_timeout(wait),
            };
            let job = match job {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.poll_published();
                    self.heartbeat();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.ship_published();
                    break;
                }
            };
            // Lazy mode: what was published before this job goes first, as a job sent for
            // it would have; but a snapshot job's snapshot is older than anything published
            // now (the application sends what the slot held ahead of it, and publishes only
            // later snapshots), so what is published goes after it. A parked sender is woken
            // by the application's `Job::Queued` and looks on its schedule again.
            let lazy = self.poll.is_some();
            if lazy {
                if self.asleep && matches!(job, Job::Queued) {
                    self.wake();
                }
                if !matches!(job, Job::Snapshot { .. }) {
                    self.ship_published();
                }
            }
            match job {
                Job::DropSpare(generation) => self.drop_spare(generation),
                Job::Spare(spare) => self.connect_spare(spare),
                Job::Snapshot {
                    id,
                    generation,
                    snapshot,
                } => {
                    self.ship_job(id, generation, snapshot, 1);
                    if lazy {
                        self.ship_published();
                    }
                }
                Job::Queued => {
                    self.ship_published();
                }
                Job::Compact => self.start_compaction(),
                Job::Goodbye => break,
            }
            // Any job may have written frames (or opened a session): the idle time counts
            // from here.
            self.last_sent = Instant::now();
        }
        self.close(true);
        if let Some(c) = &mut self.compaction {
            c.abandon();
        }
    }

    /// Ships the copy snapshot waiting in the slot, if any (gone already: shipped ahead of
    /// a fork snapshot, or nothing was published).
    /// Returns whether there was one.
    fn ship_published(&mut self) -> bool {
        let queued = self.shared.queued().queued.take();
        let Some(q) = queued else {
            return false;
        };
        let snapshot = Snapshot::Copied(q.copied);
        self.ship_job(q.last_id, q.generation, snapshot, q.checkpoints);
        self.last_sent = Instant::now();
        true
    }

    /// Lazy mode: how long until the sender looks at the slot again (`None` while parked).
    fn poll_due(&self) -> Option<Duration> {
        self.poll
            .filter(|_| !self.asleep)
            .map(|(next, _)| next.saturating_duration_since(Instant::now()))
    }

    /// Lazy mode: parks if the slot is still empty (under its lock, so a snapshot put there
    /// meanwhile is seen here, or its maker sees the flag and sends a job).
    fn park(&mut self) {
        let mut slot = self.shared.queued();
        if slot.queued.is_none() {
            slot.parked = true;
            self.asleep = true;
            tracing::debug!("lazy sender parked: nothing published for {PARK_AFTER:?}");
        }
    }

    /// Lazy mode: looks on the schedule again, from now.
    fn wake(&mut self) {
        self.asleep = false;
        let now = Instant::now();
        self.found = now;
        if let Some((_, every)) = self.poll {
            self.poll = Some((now + every, every));
        }
    }

    /// Lazy mode: ships what was published if it is time to look; parks after
    /// [`PARK_AFTER`] of finding nothing.
    fn poll_published(&mut self) {
        let Some((next, every)) = self.poll.filter(|_| !self.asleep) else {
            return;
        };
        let now = Instant::now();
        if now < next {
            return;
        }
        if self.ship_published() {
            self.found = now;
        } else if now.duration_since(self.found) >= PARK_AFTER {
            self.park();
            if self.asleep {
                return;
            }
        }
        // A fixed schedule: a look that came late does not push the next one back, but
        // looks missed (the sender was busy) are not made up for in a burst.
        let mut next = next + every;
        if next <= now {
            next = now + every;
        }
        self.poll = Some((next, every));
    }

    /// How long until the open session is due a heartbeat; `None` when it gets none (no
    /// session, a sink, heartbeats off).
    fn heartbeat_due(&self) -> Option<Duration> {
        let every = self.params.heartbeat?;
        // A busy slot is a session in use (its holder writes or waits for an ack): due as
        // its idle time says. Waiting for the lock instead would queue this thread behind
        // every sync checkpoint, each of which would then wake it on its way out.
        if let Some(session) = self.shared.try_session() {
            session.open.as_ref().filter(|o| o.acks)?;
        }
        Some(every.saturating_sub(self.idle_since().elapsed()))
    }

    /// Since when the stream has carried nothing: the sender's last frame or the
    /// application thread's last direct checkpoint, whichever came later.
    fn idle_since(&self) -> Instant {
        let direct = super::stamped(self.shared.direct_wrote.load(Ordering::Relaxed));
        self.last_sent.max(direct)
    }

    /// Sends a heartbeat if the open session has been idle long enough.
    fn heartbeat(&mut self) {
        let Some(every) = self.params.heartbeat else {
            return;
        };
        if self.idle_since().elapsed() < every {
            return;
        }
        if !self.shared.live.load(Ordering::Acquire) {
            // The session is ending (its spare hung up, or the link is dropping it): its end
            // is someone else's to handle; skip this beat rather than spin.
            self.last_sent = Instant::now();
            return;
        }
        let Some(mut session) = self.shared.try_session() else {
            // Its holder is writing a checkpoint (or waiting for the ack of one it just
            // wrote): the stream is not idle. Look again an interval on.
            self.last_sent = Instant::now();
            return;
        };
        let Some(open) = session.open.as_mut().filter(|o| o.acks) else {
            return;
        };
        if let Err(e) = open.writer.heartbeat() {
            tracing::info!(error = %e, "sending a heartbeat failed; the session is over");
            direct::close(&self.shared, &mut session.open, false);
        }
        drop(session);
        self.last_sent = Instant::now();
    }

    /// Ends the session of `generation` (a spare that missed its ack deadline) with a
    /// goodbye, so that the spare, if it wakes up, exits instead of taking over. The goodbye
    /// is written without blocking: a stopped spare must not stop the sender.
    fn drop_spare(&mut self, generation: u64) {
        let mut session = self.shared.session();
        if session
            .open
            .as_ref()
            .is_none_or(|o| o.generation != generation)
        {
            return;
        }
        let Some(mut open) = session.open.take() else {
            return;
        };
        drop(session);
        let said = match open.writer.get_ref().set_nonblocking() {
            Ok(()) => open.writer.goodbye(crate::wire::Farewell::Dropped),
            Err(e) => Err(crate::wire::WireError::Io(e)),
        };
        match said {
            Ok(()) => {
                tracing::warn!(
                    generation,
                    "the spare missed its ack deadline: told goodbye and dropped"
                );
                // Both directions: the ack reader, blocked on a spare that may never answer,
                // ends too; what was written stays readable for the spare.
                let _ = open.writer.get_ref().shutdown();
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "the spare missed its ack deadline and its goodbye could not be written; its connection is held open so that it never takes over");
                self.parked.push(open.writer);
            }
        }
        let p = self.shared.lock();
        self.shared.live.store(false, Ordering::Release);
        drop(p);
        self.shared.changed.notify_all();
    }

    /// Ships one snapshot that stands for `checkpoints` checkpoints and counts every job up
    /// to `id` done.
    fn ship_job(&mut self, id: u64, generation: u64, snapshot: Snapshot, checkpoints: u64) {
        let done = self.ship(generation, snapshot, checkpoints);
        let mut p = self.shared.lock();
        p.done_job = id;
        p.done = Some(done);
        drop(p);
        self.shared.changed.notify_all();
    }

    /// Ends the open session; with `goodbye`, first tells the spare not to take over.
    fn close(&mut self, goodbye: bool) {
        direct::close(&self.shared, &mut self.shared.session().open, goodbye);
    }

    /// Keeps the checkpoint log at `path` (the sink) within `max` bytes.
    pub(super) fn compact_log(&mut self, path: &std::path::Path, max: u64) {
        self.compaction = Some(Compaction::new(path, max));
    }

    /// After a full checkpoint written to a log: a compacted log takes the old one's place.
    fn compact(&mut self, full: bool) {
        let session = self.shared.session();
        if let (true, Some(c), Some(open)) = (
            full,
            self.compaction.as_mut(),
            session.open.as_ref().filter(|o| !o.acks),
        ) {
            c.finish(open.generation, open.writer.get_ref().as_ref());
        }
    }

    /// Starts the compacted log if the log is past its limit (asked by the link's handle
    /// before it plans a checkpoint, so every snapshot already queued goes to the old log
    /// and the next one, full, to the new).
    fn start_compaction(&mut self) {
        if let Some(mut c) = self.compaction.take() {
            let sink = self.shared.session().open.as_ref().is_some_and(|o| !o.acks);
            if sink && let Some(log) = c.due() {
                // No goodbye: the old log ends at its last checkpoint, as a resumable log.
                self.close(false);
                self.open_sink(Box::new(log));
                c.started(self.generation);
            }
            self.compaction = Some(c);
        }
        let mut p = self.shared.lock();
        p.compactions += 1;
        drop(p);
        self.shared.changed.notify_all();
    }

    /// Opens a session on a sink (no acks): the hello is written here.
    pub(super) fn connect(&mut self, ep: Box<dyn Endpoint>) {
        self.close(true);
        self.open_sink(ep);
    }

    fn open_sink(&mut self, ep: Box<dyn Endpoint>) {
        let peer = ep.describe();
        let next_checkpoint = self.shared.session().next_checkpoint;
        let mut writer = CheckpointWriter::new(ep, self.params.epoch, next_checkpoint);
        if let Err(e) = writer.hello(&self.params.hello) {
            tracing::warn!(peer, error = %e, "writing the hello failed");
            return;
        }
        self.adopt(writer, None, peer);
    }

    /// Opens a session with a spare whose handshake (authentication, hello and its ack) the
    /// acceptor has done.
    fn connect_spare(&mut self, spare: Handshaken) {
        // One spare at a time: the one replaced is told goodbye, so it exits instead of
        // taking over from a primary that is alive.
        self.close(true);
        let Handshaken {
            peer,
            mut writer,
            acks,
            ack_stream,
        } = spare;
        // The hello carries no checkpoint number: the session's first one is decided now.
        let mut state = writer.state();
        state.next_checkpoint = self.shared.session().next_checkpoint;
        writer.set_state(state);
        self.adopt(writer, Some((ack_stream, acks)), peer);
    }

    fn adopt(
        &mut self,
        writer: CheckpointWriter<Box<dyn Endpoint>>,
        reader: Option<(Box<dyn Endpoint>, AckReader)>,
        peer: String,
    ) {
        let acks = reader.is_some();
        self.generation += 1;
        let generation = self.generation;
        let mut direct = None;
        if let Some((mut clone, acks)) = reader {
            if self.params.delivery == Delivery::Direct {
                // Sync mode: whoever waits for an ack reads it; no thread in between.
                clone.spin_for_input(self.params.ack_spin);
                direct = Some(DirectAcks::new(clone, acks));
            } else {
                let shared = Arc::clone(&self.shared);
                let started = spawn("hs-acks", move || {
                    read_acks(clone, acks, &shared, generation)
                });
                if let Err(e) = started {
                    tracing::warn!(peer, error = %e, "starting the ack reader failed");
                    return;
                }
            }
        }
        tracing::info!(peer, generation, "session opened");
        let fd = writer
            .get_ref()
            .as_fd()
            .map(process::raw)
            .unwrap_or_else(|| process::raw(self.devnull.as_fd()));
        let mut session = self.shared.session();
        session.open = Some(Open {
            writer,
            generation,
            acks,
            direct,
        });
        let mut p = self.shared.lock();
        p.session_full = None;
        self.shared.stream_fd.store(fd, Ordering::Release);
        self.shared.generation.store(generation, Ordering::Release);
        self.shared.live.store(true, Ordering::Release);
        drop(p);
        drop(session);
        self.shared.changed.notify_all();
        self.shared.wanted.raise();
    }

    /// Puts one snapshot on the stream if its session is still the open one.
    fn ship(&mut self, generation: u64, snapshot: Snapshot, checkpoints: u64) -> Shipped {
        let usable = self.shared.live.load(Ordering::Acquire)
            && self
                .shared
                .session()
                .open
                .as_ref()
                .is_some_and(|o| o.generation == generation);
        let full = match &snapshot {
            Snapshot::Copied(c) => c.full,
            Snapshot::Forked(f) => f.full,
        };
        let result = match snapshot {
            Snapshot::Copied(c) => {
                let r = if usable {
                    self.write_copy(&c, checkpoints)
                } else {
                    None
                };
                self.give_back.give(c);
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
                let sink = self.shared.session().open.as_ref().is_some_and(|o| !o.acks);
                direct::count_written(&self.shared, cp, bytes, full, sink, None);
                self.compact(full);
                Shipped::Written(cp)
            }
            None => Shipped::Dropped,
        }
    }

    fn write_copy(&mut self, c: &Copied, checkpoints: u64) -> Option<(u64, u64)> {
        let mut guard = self.shared.session();
        let session = &mut *guard;
        let open = session.open.as_mut()?;
        // A snapshot with others merged into it takes the number of the last of them:
        // numbers keep counting the application's checkpoints (they need only increase).
        let mut state = open.writer.state();
        state.next_checkpoint += checkpoints.saturating_sub(1);
        open.writer.set_state(state);
        match c.write(&mut open.writer) {
            Ok(cp) => {
                session.next_checkpoint = cp + 1;
                self.sync_sink(open);
                Some((cp, c.data.len() as u64))
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing a checkpoint failed; the session is over");
                direct::close(&self.shared, &mut session.open, false);
                None
            }
        }
    }

    fn sync_sink(&self, open: &Open) {
        if !open.acks
            && self.params.sync_sink
            && let Err(e) = open.writer.get_ref().sync()
        {
            tracing::warn!(error = %e, "syncing the checkpoint log failed");
        }
    }

    fn run_child(&mut self, child: ForkedChild) -> Option<(u64, u64)> {
        let mut guard = self.shared.session();
        let session = &mut *guard;
        let open = session.open.as_mut()?;
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
            direct::close(&self.shared, &mut session.open, false);
            return None;
        }
        drop(child.go);
        match process::wait_child(child.pid) {
            Ok(ChildEnd::Exited(crate::snapshot::CHILD_DONE)) => {
                let mut s = state;
                s.skip_checkpoint(child.frames);
                open.writer.set_state(s);
                self.sync_sink(open);
                session.next_checkpoint = go.checkpoint + 1;
                Some((go.checkpoint, child.pages * crate::sys::PAGE_SIZE as u64))
            }
            other => {
                // The child may have left a partial frame: nothing after it can be read.
                tracing::warn!(?other, "a fork child failed to write its checkpoint");
                direct::close(&self.shared, &mut session.open, false);
                None
            }
        }
    }
}

fn reap(pid: nix::unistd::Pid) {
    if let Err(e) = process::wait_child(pid) {
        tracing::warn!(%pid, error = %e, "reaping a fork child failed");
    }
}
