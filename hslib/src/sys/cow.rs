//! Copy-before-write: the pages of a `cbw` snapshot that still hold checkpoint-time contents
//! nobody has copied yet, and the copy that a write to one of them must wait for.
//!
//! Each region a `cbw` snapshot ever covered has an [`Area`]: a slot in a fixed process-wide
//! table (so the SIGSEGV handler can find it without locks or allocation) and one atomic word
//! per page. A word is 0 when the page has nothing pending; otherwise it holds the page's
//! place in the snapshot's staging buffer plus one, and [`BUSY`] while a thread copies it.
//! Whoever comes first, the link's sender thread settling the snapshot or the SIGSEGV handler
//! of the application's write, claims the word with a compare-and-swap, copies the page into
//! the staging buffer and clears the word; the other waits for the clear. Pending pages are
//! read-only (the `mprotect` tracker's own protection, or this module's), so the application
//! cannot change one before it is copied: a write faults, and the handler copies first.
//!
//! Everything the handler touches is an atomic in static memory or memory allocated before
//! the slot went live; its only system calls are `mprotect` and `sched_yield`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;

use super::PAGE_SIZE;
use super::mman;

/// How many regions can have a copy-before-write area at once, process-wide.
pub const MAX_AREAS: usize = 64;

/// Set in a page's word while a thread copies the page.
const BUSY: u32 = 1 << 31;

struct Slot {
    claimed: AtomicBool,
    /// First byte of the region; 0 while the slot is not live. Published last (Release).
    start: AtomicUsize,
    end: AtomicUsize,
    /// One word per page.
    words: AtomicPtr<AtomicU32>,
    /// Base address of the staging buffer the pending pages go to.
    staging: AtomicUsize,
    /// Whether this module protected the pending pages itself (so the handler unprotects a
    /// faulting page that no tracker claims).
    own_protection: AtomicBool,
}

impl Slot {
    const fn new() -> Self {
        Self {
            claimed: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            words: AtomicPtr::new(std::ptr::null_mut()),
            staging: AtomicUsize::new(0),
            own_protection: AtomicBool::new(false),
        }
    }
}

static TABLE: [Slot; MAX_AREAS] = [const { Slot::new() }; MAX_AREAS];

/// Pages copied by the SIGSEGV handler (a write reached them first), process-wide.
static FAULT_COPIES: AtomicU64 = AtomicU64::new(0);
/// Pages copied by a settling thread (the sender, or the application draining).
static SETTLE_COPIES: AtomicU64 = AtomicU64::new(0);

/// Process-wide counters of the copy-before-write machinery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CowStats {
    /// Pages a write reached before they were copied: the SIGSEGV handler copied them.
    pub fault_copies: u64,
    /// Pages copied by the thread settling the snapshot (normally the link's sender).
    pub settle_copies: u64,
}

/// The counters so far.
pub fn stats() -> CowStats {
    CowStats {
        fault_copies: FAULT_COPIES.load(Ordering::Relaxed),
        settle_copies: SETTLE_COPIES.load(Ordering::Relaxed),
    }
}

/// One region's copy-before-write state: a live slot in the table and one word per page.
#[derive(Debug)]
pub struct Area {
    slot: usize,
    base: usize,
    len: usize,
    words: Box<[AtomicU32]>,
}

impl Area {
    /// Puts the region `[base, base + len)` (page aligned, `len > 0`) in the table, nothing
    /// pending.
    pub fn new(base: usize, len: usize) -> Result<Self, Errno> {
        if base == 0
            || !base.is_multiple_of(PAGE_SIZE)
            || len == 0
            || !len.is_multiple_of(PAGE_SIZE)
        {
            return Err(Errno::EINVAL);
        }
        let end = base.checked_add(len).ok_or(Errno::EINVAL)?;
        let words: Box<[AtomicU32]> = (0..len / PAGE_SIZE).map(|_| AtomicU32::new(0)).collect();
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            slot.end.store(end, Ordering::Relaxed);
            slot.words
                .store(words.as_ptr().cast_mut(), Ordering::Relaxed);
            slot.staging.store(0, Ordering::Relaxed);
            slot.start.store(base, Ordering::Release);
            return Ok(Self {
                slot: i,
                base,
                len,
                words,
            });
        }
        Err(Errno::ENOSPC)
    }

    /// The region's base address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The region's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the area is empty (never: areas have at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the staging buffer the next pending pages go to and whether this module protects
    /// them (rather than a tracker). Call before [`Area::arm`], with nothing pending.
    pub fn prepare(&self, staging: usize, own_protection: bool) {
        let slot = &TABLE[self.slot];
        slot.staging.store(staging, Ordering::Relaxed);
        slot.own_protection.store(own_protection, Ordering::Relaxed);
    }

    /// Marks `page` pending, to be copied to place `dest` (in pages) of the staging buffer.
    /// Publishes [`Area::prepare`]'s values with it (Release).
    pub fn arm(&self, page: usize, dest: u32) {
        debug_assert!(dest < BUSY - 1);
        self.words[page].store(dest + 1, Ordering::Release);
    }

    /// Makes sure `page` is no longer pending: copies it (unless another thread is, in which
    /// case this waits for that copy). Returns whether this call copied it.
    pub fn settle(&self, page: usize) -> bool {
        let copied = settle_word(&TABLE[self.slot], &self.words[page], self.base, page);
        if copied {
            SETTLE_COPIES.fetch_add(1, Ordering::Relaxed);
        }
        copied
    }

    /// Whether any page is pending (for tests and checks; linear in the region's pages).
    pub fn any_pending(&self) -> bool {
        self.words.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// Takes the area out of the handler's sight (before its region is unmapped: a region
    /// mapped later at the same address must not find this one). Nothing may be pending.
    pub fn retire(&self) {
        debug_assert!(!self.any_pending(), "retiring an area with pages pending");
        TABLE[self.slot].start.store(0, Ordering::Release);
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // Every `Pending` over this area held it and was settled before it let go, so no
        // page is pending and no staging address is used again.
        let slot = &TABLE[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.words.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.end.store(0, Ordering::Relaxed);
        slot.staging.store(0, Ordering::Relaxed);
        slot.claimed.store(false, Ordering::Release);
    }
}

/// Claims and copies one page, or waits for the thread that claimed it. Async-signal-safe.
fn settle_word(slot: &Slot, word: &AtomicU32, base: usize, page: usize) -> bool {
    let mut spins = 0u32;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == 0 {
            return false;
        }
        if v & BUSY == 0 {
            if word
                .compare_exchange(v, v | BUSY, Ordering::Acquire, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let staging = slot.staging.load(Ordering::Relaxed);
            let dest = staging + (v - 1) as usize * PAGE_SIZE;
            let src = base + page * PAGE_SIZE;
            // SAFETY: `src` is a page of a live region (the slot is live while its `Area` is,
            // and regions are unmapped only after their area is dropped); it is pending, so it
            // is read-only and unchanged since the checkpoint, and only readers touch it.
            // `dest` is this page's place in the staging buffer, which the snapshot's
            // `Pending` keeps mapped until no page of it is pending, and which no one reads
            // before the page's word is cleared; the claim (BUSY) makes this the only writer.
            // The two never overlap (different mappings). `copy_nonoverlapping` is a memcpy,
            // which is async-signal-safe.
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, dest as *mut u8, PAGE_SIZE);
            }
            word.store(0, Ordering::Release);
            return true;
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            // The copying thread may be preempted; a page copy is ~1 us, so yield.
            // SAFETY: sched_yield has no preconditions and is async-signal-safe.
            unsafe { libc::sched_yield() };
        }
    }
}

/// What the SIGSEGV handler found for a faulting address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// The address is in no area.
    None,
    /// The address is in an area; its page is no longer pending. `unprotect`: the area's
    /// pages were protected by this module, so the faulting page is made writable unless a
    /// tracker does it.
    Settled {
        /// Whether this module protected the page.
        unprotect: bool,
    },
}

/// Called by the SIGSEGV handler for every fault: copies the faulting page first if it is
/// pending. Async-signal-safe.
pub(crate) fn on_fault(addr: usize) -> Hit {
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        let end = slot.end.load(Ordering::Relaxed);
        if start == 0 || addr < start || addr >= end {
            continue;
        }
        let words = slot.words.load(Ordering::Relaxed);
        let page = (addr - start) / PAGE_SIZE;
        // SAFETY: a live slot's word array has one word per page of `[start, end)` and stays
        // allocated while the slot is live (`Area`'s contract); `page` is inside it.
        let word = unsafe { &*words.wrapping_add(page) };
        if settle_word(slot, word, start, page) {
            FAULT_COPIES.fetch_add(1, Ordering::Relaxed);
        }
        return Hit::Settled {
            unprotect: slot.own_protection.load(Ordering::Relaxed),
        };
    }
    Hit::None
}

/// Settles every pending page of the area holding `addr` (the handler's fallback before it
/// makes a whole region writable); returns the area's span. Async-signal-safe.
pub(crate) fn settle_all_at(addr: usize) -> Option<(usize, usize)> {
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        let end = slot.end.load(Ordering::Relaxed);
        if start == 0 || addr < start || addr >= end {
            continue;
        }
        let words = slot.words.load(Ordering::Relaxed);
        for page in 0..(end - start) / PAGE_SIZE {
            // SAFETY: as in `on_fault`.
            let word = unsafe { &*words.wrapping_add(page) };
            if settle_word(slot, word, start, page) {
                FAULT_COPIES.fetch_add(1, Ordering::Relaxed);
            }
        }
        return Some((start, end - start));
    }
    None
}

/// An area and its pending runs (first page, page count).
pub type ArmedArea = (Arc<Area>, Vec<(usize, usize)>);

/// The pending pages of one `cbw` snapshot: settled (every page copied, the protection this
/// module added removed) exactly once, by whichever thread gets there first; every reader of
/// the staging buffer settles first, and so does the application before it checkpoints
/// again, lets the kernel write into a region, discards pages or unmaps a region.
#[derive(Debug)]
pub struct Pending {
    /// Per area: the area and its pending runs (first page, count).
    areas: Vec<ArmedArea>,
    /// The ranges this module made read-only, to make writable again once settled.
    protected: Vec<(usize, usize)>,
    /// Set (under the lock) once settled.
    settled: AtomicBool,
    lock: Mutex<()>,
}

impl Pending {
    /// A pending set over `areas` (each with its pending runs, already armed), whose pages
    /// in `protected` this module made read-only.
    pub fn new(areas: Vec<ArmedArea>, protected: Vec<(usize, usize)>) -> Self {
        Self {
            areas,
            protected,
            settled: AtomicBool::new(false),
            lock: Mutex::new(()),
        }
    }

    /// Whether it is settled.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Copies every page still pending and removes the protection this module added; once
    /// it returns (Ok or not), no page of the set is pending and the staging buffer holds
    /// every page's checkpoint-time contents. Fails if a page cannot be made writable again
    /// (`mprotect`), leaving it read-only: a later write to it still faults and is let
    /// through by the handler.
    pub fn settle(&self) -> Result<(), Errno> {
        if self.is_settled() {
            return Ok(());
        }
        for (area, runs) in &self.areas {
            for &(first, count) in runs {
                for page in first..first + count {
                    area.settle(page);
                }
            }
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.settled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut result = Ok(());
        for &(addr, len) in &self.protected {
            if let Err(e) = mman::protect_read_write(addr, len) {
                result = Err(e);
            }
        }
        self.settled.store(true, Ordering::Release);
        result
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Normally settled already; a snapshot dropped unsent (its session ended) is settled
        // here, before its staging buffer can be unmapped or reused.
        let _ = self.settle();
    }
}
