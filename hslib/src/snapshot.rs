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
//! Both produce a [`Snapshot`] for the link, which puts snapshots on the stream one at a time,
//! in order, so frames never interleave.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::unistd::Pid;

use crate::region::Region;
use crate::sys::PAGE_SIZE;
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
}

impl Strategy {
    /// The name used by `HS_STRATEGY` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Copy => "copy",
            Strategy::Fork => "fork",
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
            other => Err(format!("{other:?} names no strategy; use copy or fork")),
        }
    }
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

/// The page and metadata frames a checkpoint of `runs` writes before its commit.
pub fn frames(runs: &[Run]) -> u32 {
    runs.iter().map(|r| page_frames(r.pages)).sum::<u32>() + 1
}

fn run_bytes<'a>(regions: &'a [Region], run: &Run) -> &'a [u8] {
    let start = run.first_page as usize * PAGE_SIZE;
    &regions[run.index].as_bytes()[start..start + run.pages * PAGE_SIZE]
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
    pub data: Vec<u8>,
    /// The encoded metadata record.
    pub metadata: Vec<u8>,
}

impl Copied {
    /// Copies `runs` of `regions` into `data` (cleared first, its allocation reused).
    pub fn take(
        regions: &[Region],
        full: bool,
        runs: Vec<Run>,
        mut data: Vec<u8>,
        metadata: Vec<u8>,
    ) -> Self {
        data.clear();
        data.reserve(page_count(&runs) as usize * PAGE_SIZE);
        for run in &runs {
            data.extend_from_slice(run_bytes(regions, run));
        }
        Self {
            full,
            runs,
            data,
            metadata,
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
            writer.pages(run.region, run.first_page, &self.data[at..at + len])?;
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
    /// The write end of the child's go pipe.
    pub go: OwnedFd,
    /// Page and metadata frames it writes before the commit.
    pub frames: u32,
    /// Pages it writes.
    pub pages: u64,
    /// Whether it is a full checkpoint.
    pub full: bool,
}

/// The message that hands a fork child its turn: where to write and the writer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Go {
    /// The stream's descriptor (open in the child: it was open at the fork).
    pub fd: i32,
    /// The session's epoch.
    pub epoch: u64,
    /// The sequence number of the child's first frame.
    pub sequence: u64,
    /// The checkpoint number the child commits.
    pub checkpoint: u64,
}

/// The length of an encoded [`Go`].
pub const GO_LEN: usize = 28;

impl Go {
    /// Little-endian encoding.
    pub fn encode(&self) -> [u8; GO_LEN] {
        let mut b = [0u8; GO_LEN];
        b[0..4].copy_from_slice(&self.fd.to_le_bytes());
        b[4..12].copy_from_slice(&self.epoch.to_le_bytes());
        b[12..20].copy_from_slice(&self.sequence.to_le_bytes());
        b[20..28].copy_from_slice(&self.checkpoint.to_le_bytes());
        b
    }

    fn decode(b: &[u8; GO_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let mut fd = [0u8; 4];
        fd.copy_from_slice(&b[0..4]);
        Self {
            fd: i32::from_le_bytes(fd),
            epoch: u64_at(4),
            sequence: u64_at(12),
            checkpoint: u64_at(20),
        }
    }
}

/// Exit status of a fork child that wrote its checkpoint.
pub const CHILD_DONE: i32 = 0;
/// Exit status of a fork child whose turn never came (the session ended first).
pub const CHILD_CANCELLED: i32 = 3;
/// Exit status of a fork child whose write failed.
pub const CHILD_WRITE_FAILED: i32 = 4;

/// Forks a child that writes `runs` of `regions` and `metadata` when handed its turn.
///
/// Everything the child needs is prepared here, before the fork; the child only reads its
/// go pipe, writes with `write(2)` and calls `_exit`.
pub fn fork(
    regions: &[Region],
    full: bool,
    runs: &[Run],
    metadata: &[u8],
) -> Result<ForkedChild, nix::errno::Errno> {
    let (go_read, go_write) = process::pipe()?;
    let frames = frames(runs);
    let pages = page_count(runs);
    // SAFETY: the child runs only `child`, which is async-signal-safe (see there).
    match unsafe { process::fork() }? {
        Forked::Child => child(go_read.as_fd(), regions, full, runs, metadata),
        Forked::Parent(pid) => {
            drop(go_read);
            Ok(ForkedChild {
                pid,
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
fn child(go: BorrowedFd<'_>, regions: &[Region], full: bool, runs: &[Run], metadata: &[u8]) -> ! {
    let mut msg = [0u8; GO_LEN];
    match process::read_full(go, &mut msg) {
        Ok(GO_LEN) => {}
        _ => process::exit_now(CHILD_CANCELLED),
    }
    let go = Go::decode(&msg);
    // SAFETY: the sender thread names the stream's descriptor, which was open at the fork (a
    // snapshot is only handed the session that was open when it was taken) and so is open in
    // this child, which closes nothing.
    let out = unsafe { BorrowedFd::borrow_raw(go.fd) };
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
