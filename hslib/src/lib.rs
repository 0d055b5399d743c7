//! Hot Spare Library: application-driven incremental checkpoints to a spare process.
//!
//! Layers, bottom up (see the project's DESIGN.md):
//! - `sys` (private to the crate): the only place with raw system calls and ioctls
//!   (userfaultfd, `PAGEMAP_SCAN`, `mmap`/`mprotect`, fork, the SIGSEGV handler and the
//!   copy-before-write pages it copies).
//! - [`region`]: checkpoint memory at addresses every process of the binary can map, with
//!   typed placement of plain-old-data values.
//! - [`track`]: which pages were written since the last checkpoint (uffd, mprotect, full).
//! - [`runs`]: the scan result, sorted runs of pages.
//! - [`meta`]: the checkpoint's process metadata (fds, signal handlers, worker, blobs).
//! - [`memcopy`]: copying page data fast whatever the distance between the buffers.
//! - [`wire`]: the checkpoint stream's frames (specified in `hslib/PROTOCOL.md`).
//! - [`transport`]: the byte streams (Unix socket, authenticated TCP, log file, null).
//! - [`session`]: opening a session (the hello handshake) with bounded waits.
//! - [`replica`]: the spare's image, changed only by whole, validated checkpoints.
//! - [`silence`]: the spare's watch on its primary's silence (heartbeats stopped).
//! - [`orders`]: a cluster spare's orders (`promote <EPOCH>`) from its supervisor.
//! - [`snapshot`]: a checkpoint taken by copying the dirty pages, by `fork()`, or by
//!   copy-before-write (`cbw`: the pages are copied later, before anything overwrites them).
//! - [`link`]: the primary's sender, ack reader and spare acceptor threads.
//! - [`api`]: [`HotSpare`] (regions, worker, roles, modes) and [`Context::checkpoint`].
//! - [`probe`]: where a checkpoint's time goes, step by step (the `probe` feature).

pub mod api;
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod fault;
#[cfg(not(feature = "fault-injection"))]
mod fault;
pub mod link;
pub mod memcopy;
pub mod meta;
pub mod orders;
pub mod probe;
pub mod region;
pub mod replica;
pub mod runs;
pub mod session;
pub mod silence;
pub mod snapshot;
pub(crate) mod sys;
pub mod track;
pub mod transport;
pub mod wire;

pub use api::{
    Checkpoint, Context, HotSpare, HsError, Mode, Outcome, Restored, Role, WorkerError,
    WorkerResult,
};
pub use meta::LostConnection;

/// Internals hslib's own tests inspect (the `fault-injection` feature only).
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod internals {
    pub use crate::sys::uffd::Source;
    pub use crate::sys::{fd, signal};
}
pub use link::{LinkConfig, LinkProbe, LinkStats};
pub use region::{Region, RegionError, RegionId, Slot};
pub use runs::{PageRun, PageRuns};
pub use snapshot::Strategy;
pub use track::{Backend, DirtyPages, DirtyRegion, TrackError, Tracker};

/// Drops the page-table entries of this process's file pages that are still the file's
/// (code and read-only data: private, never writable, no copied-on-write page), so that a
/// process killed later tears down less before its descriptors close and its spare sees the
/// end of the stream (the kernel closes a dying process's descriptors only after its address
/// space is gone). The pages stay cached; what runs again faults back in. Returns the
/// resident KiB dropped. Once, after the start-up code has run, is enough.
pub fn shed_file_pages() -> std::io::Result<u64> {
    sys::mman::shed_file_pages()
}

/// The page size hslib tracks and ships (4 KiB; a kernel with another page size is refused).
pub const PAGE_SIZE: usize = sys::PAGE_SIZE;
