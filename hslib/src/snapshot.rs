//! Turning the dirty pages and the metadata record into one checkpoint, consistent as of the
//! call (the paper's `hs_cpt` and `cptfork`):
//!
//! - **copy**: the dirty pages are copied into a staging buffer now; the link's sender thread
//!   writes them while the application goes on.
//! - **fork**: `fork()`; the child holds a copy-on-write view of the regions as of the call.
//!   It waits for its turn on the stream (a message on a pipe from the sender thread, carrying
//!   the stream's descriptor and the writer's state), writes the checkpoint with bare
//!   `write(2)` and exits. The caller never waits for the child.
//!
//! - **cbw** (copy-before-write, [`cbw`]): the dirty pages are made read-only and marked
//!   pending, nothing is copied; the sender thread copies them as it ships them, and a write
//!   by the application to a page not copied yet copies it first (in the fault handler).
//!
//! All produce a [`Snapshot`] for the link, which puts snapshots on the stream one at a time,
//! in order, so frames never interleave (a cbw snapshot is a copy snapshot whose staging
//! buffer fills in before it is read).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::unistd::Pid;

pub mod cbw;

use crate::region::Region;
use crate::sys::PAGE_SIZE;
use crate::sys::mman::{self, StagingBuffer};
use crate::sys::process::{self, Forked};
use crate::track::DirtyPages;
use crate::transport::FdWriter;
use crate::wire::{CheckpointWriter, page_frames};

/// How a checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Copy the dirty pages into a buffer; a sender thread ships them.
    Copy,
    /// `fork()`; the child ships the dirty pages from its copy-on-write view.
    Fork,
    /// Copy-before-write: make the dirty pages read-only; the sender thread copies and ships
    /// them, and a write to a page not copied yet copies it first ([`cbw`]).
    Cbw,
    /// Copy, fork or cbw, whichever the [`CostModel`] says is cheapest for this checkpoint's
    /// dirty bytes (known before any cost is paid).
    Adaptive,
}

impl Strategy {
    /// The name used by `HS_STRATEGY` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Copy => "copy",
            Strategy::Fork => "fork",
            Strategy::Cbw => "cbw",
            Strategy::Adaptive => "adaptive",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(Strategy::Copy),
            "fork" => Ok(Strategy::Fork),
            "cbw" => Ok(Strategy::Cbw),
            "adaptive" => Ok(Strategy::Adaptive),
            other => Err(format!(
                "{other:?} names no strategy; use copy, fork, cbw or adaptive"
            )),
        }
    }
}

/// The adaptive strategy's cost model, measured on this machine and in this process:
///
/// - copy: `fixed + bytes * per_byte`, from a timed copy at calibration, then the median of
///   the last eight copies actually made;
/// - fork: a constant for the process as it is (page tables to copy grow with its memory, not
///   with the dirty share), from timed forks of a child that exits at once, then the median of
///   the last eight forks actually made;
/// - cbw: a constant too (its stall is write-protecting the dirty runs, or the whole region
///   when they are many), from timed `mprotect(PROT_READ)`s of a populated scratch mapping as
///   large as the regions, then the median of the last eight cbw snapshots actually taken.
///   Until one is taken, the calibrated figure is scaled by how much slower the copies made
///   turned out than the copy calibration (both are timed warm, back to back; checkpoints
///   between idle stretches run with cold caches, 2-4x slower on the project's machine): a
///   measured copy is compared with a cbw estimate measured the same way.
///   Its other cost, a fault and a page copy for each write that reaches a page before the
///   sender has copied it, falls on the application's later writes and is not in the model.
///
/// Medians, not averages: one copy that the scheduler preempted must not flip the choice.
///
/// The choice needs only the dirty byte count, which the tracker reports before either cost
/// is paid (the paper's missing piece).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Fixed cost of a copy snapshot, in nanoseconds.
    pub copy_fixed_ns: f64,
    /// Cost of copying one byte, in nanoseconds.
    pub copy_ns_per_byte: f64,
    /// Cost of a fork snapshot, in nanoseconds.
    pub fork_ns: f64,
    /// Cost of a cbw snapshot's stall, in nanoseconds (infinite: never chosen).
    pub cbw_ns: f64,
    /// The copy cost per byte the calibration measured (before any observation).
    copy_calibrated_ns_per_byte: f64,
    /// Checkpoints since each strategy (copy, fork, cbw) was last measured.
    since: [u32; 3],
    /// The last observations (copy: ns per byte; fork, cbw: ns), newest at `next % WINDOW`.
    seen: [Window; 3],
}

/// Observations a median is taken over.
const WINDOW: usize = 8;

/// The last [`WINDOW`] observations of one strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    values: [f64; WINDOW],
    count: usize,
}

impl Window {
    const EMPTY: Self = Self {
        values: [0.0; WINDOW],
        count: 0,
    };

    /// Adds `v` and returns the median of what the window holds.
    fn push(&mut self, v: f64) -> f64 {
        self.values[self.count % WINDOW] = v;
        self.count += 1;
        let n = self.count.min(WINDOW);
        let mut sorted = self.values;
        let held = &mut sorted[..n];
        held.sort_by(f64::total_cmp);
        held[n / 2]
    }
}

impl CostModel {
    /// Measures, in this process as it is now, what the two snapshots cost: copying out of
    /// the regions themselves (up to 1 MiB of their pages into a scratch buffer: tracked
    /// pages are 4 KiB pages, slower to copy than huge-page-backed memory), and a fork
    /// snapshot's fixed part (its go pipe, `fork()`, its pidfd; the page tables to copy grow
    /// with the process's memory, so call this once the regions are populated). Each is the
    /// median of five timings.
    pub fn calibrate(regions: &[Region]) -> Result<Self, std::io::Error> {
        let limit = 1 << 20;
        let mut dst = vec![0u8; limit];
        let mut sample = 0;
        let copy = median5(|| {
            let t = std::time::Instant::now();
            sample = 0;
            for r in regions {
                let take = r.len().min(limit - sample);
                dst[sample..sample + take].copy_from_slice(&r.as_bytes()[..take]);
                sample += take;
            }
            std::hint::black_box(&mut dst);
            Ok(t.elapsed())
        })
        .map_err(std::io::Error::from)?;
        let total: usize = regions.iter().map(Region::len).sum();
        let scratch = StagingBuffer::with_small_pages(total.clamp(PAGE_SIZE, 256 << 20))
            .map_err(std::io::Error::from)?;
        let cbw = median5(|| {
            let t = std::time::Instant::now();
            mman::protect_read(scratch.addr(), scratch.capacity())?;
            let spent = t.elapsed();
            mman::protect_read_write(scratch.addr(), scratch.capacity())?;
            Ok(spent)
        })
        .map_err(std::io::Error::from)?;
        let fork = median5(|| {
            let t = std::time::Instant::now();
            let (go_read, go_write) = process::pipe()?;
            // SAFETY: the child only calls `_exit`.
            let pid = match unsafe { process::fork() }? {
                Forked::Child => process::exit_now(0),
                Forked::Parent(pid) => pid,
            };
            drop(go_read);
            let pidfd = process::pidfd_open(pid).ok();
            let spent = t.elapsed();
            drop((go_write, pidfd));
            process::wait_child(pid)?;
            Ok(spent)
        })
        .map_err(std::io::Error::from)?;
        let copy_ns_per_byte = copy.as_nanos() as f64 / sample.max(1) as f64;
        Ok(Self {
            copy_fixed_ns: 1_000.0,
            copy_ns_per_byte,
            copy_calibrated_ns_per_byte: copy_ns_per_byte,
            fork_ns: fork.as_nanos() as f64,
            cbw_ns: cbw.as_nanos() as f64,
            since: [0; 3],
            seen: [Window::EMPTY; 3],
        })
    }

    /// The predicted cost of copying `bytes`, in nanoseconds.
    pub fn copy_cost(&self, bytes: u64) -> f64 {
        self.copy_fixed_ns + bytes as f64 * self.copy_ns_per_byte
    }

    /// A model with these costs (fixed and per byte for copies, fixed for forks), never
    /// choosing cbw (see [`CostModel::with_cbw`]).
    pub fn new(copy_fixed_ns: f64, copy_ns_per_byte: f64, fork_ns: f64) -> Self {
        Self {
            copy_fixed_ns,
            copy_ns_per_byte,
            fork_ns,
            cbw_ns: f64::INFINITY,
            copy_calibrated_ns_per_byte: copy_ns_per_byte,
            since: [0; 3],
            seen: [Window::EMPTY; 3],
        }
    }

    /// The model with a cbw snapshot costing `cbw_ns`.
    pub fn with_cbw(mut self, cbw_ns: f64) -> Self {
        self.cbw_ns = cbw_ns;
        self
    }

    /// The cheapest strategy for a checkpoint of `bytes` dirty bytes by the model (copy on a
    /// tie, then fork); except that a strategy predicted within 1.5x of it and not measured
    /// for 64 checkpoints (8 while it has fewer than four measurements) is taken once, so a
    /// stale estimate gets corrected (the model learns only from the snapshots it takes).
    pub fn choose(&mut self, bytes: u64) -> Strategy {
        let costs = [
            (Strategy::Copy, self.copy_cost(bytes)),
            (Strategy::Fork, self.fork_ns),
            (Strategy::Cbw, self.cbw_cost()),
        ];
        let (cheapest, cost) = costs
            .iter()
            .copied()
            .fold(costs[0], |best, c| if c.1 < best.1 { c } else { best });
        // Re-measure a close alternative every 64 checkpoints; every 8 while it has fewer
        // than four measurements (its estimate is little more than the calibration's).
        for (other, other_cost) in costs {
            let i = index(other);
            let every = if self.seen[i].count < 4 { 8 } else { 64 };
            if other != cheapest && self.since[i] >= every && other_cost <= 1.5 * cost {
                return other;
            }
        }
        cheapest
    }

    /// Whether the model copies checkpoints of `bytes` whatever it observes of them: every
    /// alternative is predicted above 1.5x the copy (so [`CostModel::choose`] never tries
    /// one), and a copy that small (under 64 pages) teaches it nothing but the counters of
    /// when each strategy was last tried. Lazy mode's steady path then copies without timing
    /// the copy for the model.
    pub fn copies_only(&self, bytes: u64) -> bool {
        let copy = self.copy_cost(bytes);
        bytes < COPY_LEARNED_FROM && self.fork_ns > 1.5 * copy && self.cbw_cost() > 1.5 * copy
    }

    /// The predicted stall of a cbw snapshot, in nanoseconds: the last ones measured, or
    /// before any was, the calibration scaled by how the copies measured compare with theirs.
    pub fn cbw_cost(&self) -> f64 {
        if self.seen[2].count > 0 || self.copy_calibrated_ns_per_byte <= 0.0 {
            return self.cbw_ns;
        }
        let slower = self.copy_ns_per_byte / self.copy_calibrated_ns_per_byte;
        self.cbw_ns * slower.max(1.0)
    }

    /// The dirty bytes above which fork is cheaper.
    pub fn crossover_bytes(&self) -> u64 {
        ((self.fork_ns - self.copy_fixed_ns).max(0.0) / self.copy_ns_per_byte.max(1e-6)) as u64
    }

    /// Learns from a snapshot that took `spent` with `strategy` for `bytes`.
    pub fn observe(&mut self, strategy: Strategy, bytes: u64, spent: std::time::Duration) {
        let ns = spent.as_nanos() as f64;
        for s in &mut self.since {
            *s = s.saturating_add(1);
        }
        self.since[index(strategy)] = 0;
        match strategy {
            Strategy::Fork => self.fork_ns = self.seen[1].push(ns),
            Strategy::Cbw => self.cbw_ns = self.seen[2].push(ns),
            Strategy::Copy if bytes >= COPY_LEARNED_FROM => {
                let per_byte = (ns - self.copy_fixed_ns).max(0.0) / bytes as f64;
                self.copy_ns_per_byte = self.seen[0].push(per_byte);
            }
            _ => {}
        }
    }
}

/// The smallest copy the model learns the per-byte cost from (smaller ones are mostly the
/// fixed cost).
const COPY_LEARNED_FROM: u64 = 64 * PAGE_SIZE as u64;

fn index(s: Strategy) -> usize {
    match s {
        Strategy::Fork => 1,
        Strategy::Cbw => 2,
        Strategy::Copy | Strategy::Adaptive => 0,
    }
}

fn median5(
    mut f: impl FnMut() -> Result<std::time::Duration, nix::errno::Errno>,
) -> Result<std::time::Duration, nix::errno::Errno> {
    let mut v = [std::time::Duration::ZERO; 5];
    for x in &mut v {
        *x = f()?;
    }
    v.sort();
    Ok(v[2])
}

/// One run of pages of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index of the region in the snapshot's region slice.
    pub index: usize,
    /// The region's id.
    pub region: u32,
    /// First page, relative to the region's base.
    pub first_page: u64,
    /// Number of pages.
    pub pages: usize,
}

/// The runs a checkpoint ships: every page of every region when `full`, else the dirty ones.
/// `out` is cleared and refilled (its allocation reused).
pub fn plan(regions: &[Region], dirty: &DirtyPages, full: bool, out: &mut Vec<Run>) {
    out.clear();
    for (index, r) in regions.iter().enumerate() {
        if full {
            out.push(Run {
                index,
                region: r.id().0,
                first_page: 0,
                pages: r.pages(),
            });
            continue;
        }
        if let Some(runs) = dirty.runs(r.id()) {
            out.extend(runs.iter().map(|run| Run {
                index,
                region: r.id().0,
                first_page: run.start as u64,
                pages: run.count,
            }));
        }
    }
}

/// Pages in `runs`.
pub fn page_count(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.pages as u64).sum()
}

/// The staging bytes a copy snapshot of `runs` needs.
pub fn staging_bytes(runs: &[Run]) -> usize {
    page_count(runs) as usize * PAGE_SIZE
}

/// The page and metadata frames a checkpoint of `runs` writes before its commit.
pub fn frames(runs: &[Run]) -> u32 {
    runs.iter().map(|r| page_frames(r.pages)).sum::<u32>() + 1
}

fn run_bytes<'a>(regions: &'a [Region], run: &Run) -> &'a [u8] {
    let start = run.first_page as usize * PAGE_SIZE;
    &regions[run.index].as_bytes()[start..start + run.pages * PAGE_SIZE]
}

/// Lets go of a snapshot that will not be submitted: a fork child's go pipe is closed, so it
/// exits without writing, and it is reaped.
pub fn abandon(snapshot: Snapshot) {
    if let Snapshot::Forked(child) = snapshot {
        let pid = child.pid;
        drop(child);
        if let Err(e) = process::wait_child(pid) {
            tracing::warn!(%pid, error = %e, "reaping an abandoned fork snapshot child failed");
        }
    }
}

/// A checkpoint taken and waiting for its turn on the stream.
#[derive(Debug)]
pub enum Snapshot {
    /// Pages copied into a buffer.
    Copied(Copied),
    /// A fork child holds the pages.
    Forked(ForkedChild),
}

/// A copy snapshot: the runs and their bytes, concatenated in order, and the metadata.
#[derive(Debug)]
pub struct Copied {
    /// Whether it replaces the spare's image.
    pub full: bool,
    /// The runs.
    pub runs: Vec<Run>,
    /// Their bytes, run after run.
    pub data: StagingBuffer,
    /// The encoded metadata record.
    pub metadata: Vec<u8>,
    /// Which of its context's plans `runs` and `metadata` are (a number the context gives
    /// each plan, [`Copied::UNKNOWN_PLAN`] for any other content): a steady lazy checkpoint
    /// leaves alone the vectors of a pooled snapshot that hold its plan already. Whatever
    /// writes either vector otherwise sets it to [`Copied::UNKNOWN_PLAN`].
    pub plan: u64,
}

impl Copied {
    /// [`Copied::plan`] for vectors that hold no known plan.
    pub const UNKNOWN_PLAN: u64 = 0;

    /// Copies the bytes of its runs of `regions` again (into its buffer, cleared first); a
    /// copy that is not full.
    #[inline(always)]
    pub fn retake(&mut self, regions: &[Region]) {
        self.full = false;
        self.data.clear();
        for run in &self.runs {
            self.data.extend_from_slice(run_bytes(regions, run));
        }
    }

    /// Copies `runs` of `regions` into `data` (cleared first; sized for them by the caller,
    /// see [`staging_bytes`]).
    #[inline(always)]
    pub fn take(
        regions: &[Region],
        full: bool,
        runs: Vec<Run>,
        mut data: StagingBuffer,
        metadata: Vec<u8>,
    ) -> Self {
        data.clear();
        for run in &runs {
            data.extend_from_slice(run_bytes(regions, run));
        }
        Self {
            full,
            runs,
            data,
            metadata,
            plan: Self::UNKNOWN_PLAN,
        }
    }

    /// Writes the checkpoint through `writer`; returns its commit number.
    pub fn write<W: std::io::Write>(
        &self,
        writer: &mut CheckpointWriter<W>,
    ) -> Result<u64, crate::wire::WireError> {
        writer.begin(self.full)?;
        let mut at = 0;
        for run in &self.runs {
            let len = run.pages * PAGE_SIZE;
            writer.pages(
                run.region,
                run.first_page,
                &self.data.as_slice()[at..at + len],
            )?;
            at += len;
        }
        writer.encoded_metadata(&self.metadata)?;
        Ok(writer.commit()?.checkpoint)
    }
}

/// A fork snapshot: the child, the pipe that hands it its turn, and what it will write.
#[derive(Debug)]
pub struct ForkedChild {
    /// The child.
    pub pid: Pid,
    /// A pidfd for it (to signal it without risk of hitting a reused pid), when available.
    pub pidfd: Option<std::sync::Arc<OwnedFd>>,
    /// The write end of the child's go pipe.
    pub go: OwnedFd,
    /// Page and metadata frames it writes before the commit.
    pub frames: u32,
    /// Pages it writes.
    pub pages: u64,
    /// Whether it is a full checkpoint.
    pub full: bool,
}

/// The message that hands a fork child its turn: the writer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Go {
    /// The session's epoch.
    pub epoch: u64,
    /// The sequence number of the child's first frame.
    pub sequence: u64,
    /// The checkpoint number the child commits.
    pub checkpoint: u64,
}

/// The length of an encoded [`Go`].
pub const GO_LEN: usize = 24;

impl Go {
    /// Little-endian encoding.
    pub fn encode(&self) -> [u8; GO_LEN] {
        let mut b = [0u8; GO_LEN];
        b[0..8].copy_from_slice(&self.epoch.to_le_bytes());
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b[16..24].copy_from_slice(&self.checkpoint.to_le_bytes());
        b
    }

    fn decode(b: &[u8; GO_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        Self {
            epoch: u64_at(0),
            sequence: u64_at(8),
            checkpoint: u64_at(16),
        }
    }
}

/// Exit status of a fork child that wrote its checkpoint.
pub const CHILD_DONE: i32 = 0;
/// Exit status of a fork child whose turn never came (the session ended first).
pub const CHILD_CANCELLED: i32 = 3;
/// Exit status of a fork child whose write failed.
pub const CHILD_WRITE_FAILED: i32 = 4;

/// Forks a child that writes `runs` of `regions` and `metadata` to descriptor `stream` when
/// handed its turn.
///
/// Everything the child needs is prepared here, before the fork; the child closes every
/// descriptor but its go pipe and `stream` (a listening socket must not outlive the parent
/// in a child), reads its go pipe, writes with `write(2)` and calls `_exit`.
pub fn fork(
    regions: &[Region],
    full: bool,
    runs: &[Run],
    metadata: &[u8],
    stream: i32,
) -> Result<ForkedChild, std::io::Error> {
    let (go_read, go_write) = process::pipe()?;
    let frames = frames(runs);
    let pages = page_count(runs);
    // SAFETY: the child runs only `child`, which is async-signal-safe (see there).
    match unsafe { process::fork() }? {
        Forked::Child => {
            // Closing is async-signal-safe; without this the child's copy of the write end
            // would keep it waiting forever if the parent died.
            drop(go_write);
            process::close_all_except(process::raw(go_read.as_fd()), stream);
            child(go_read.as_fd(), stream, regions, full, runs, metadata)
        }
        Forked::Parent(pid) => {
            drop(go_read);
            Ok(ForkedChild {
                pid,
                pidfd: process::pidfd_open(pid).ok().map(std::sync::Arc::new),
                go: go_write,
                frames,
                pages,
                full,
            })
        }
    }
}

/// The fork child: waits for its turn, writes the checkpoint, exits. No allocation, no locks:
/// the writer's page, encoded-metadata and commit paths only call `write(2)`.
fn child(
    go: BorrowedFd<'_>,
    stream: i32,
    regions: &[Region],
    full: bool,
    runs: &[Run],
    metadata: &[u8],
) -> ! {
    let mut msg = [0u8; GO_LEN];
    match process::read_full(go, &mut msg) {
        Ok(GO_LEN) => {}
        _ => process::exit_now(CHILD_CANCELLED),
    }
    let go = Go::decode(&msg);
    // SAFETY: `stream` was the open session's descriptor at the fork, and the child kept it
    // open; the sender hands the child its turn only while that session is still the open one.
    let out = unsafe { BorrowedFd::borrow_raw(stream) };
    let mut state = CheckpointWriter::new(FdWriter::new(out), go.epoch, go.checkpoint).state();
    state.next_sequence = go.sequence;
    let mut w = CheckpointWriter::with_state(FdWriter::new(out), state);
    let ok = w.begin(full).is_ok()
        && runs.iter().all(|run| {
            w.pages(run.region, run.first_page, run_bytes(regions, run))
                .is_ok()
        })
        && w.encoded_metadata(metadata).is_ok()
        && w.commit().is_ok();
    process::exit_now(if ok { CHILD_DONE } else { CHILD_WRITE_FAILED })
}
