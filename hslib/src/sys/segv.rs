//! The process-wide SIGSEGV handler behind the mprotect tracker.
//!
//! Tracked regions are mapped read-only. The first write to a page faults; the handler finds
//! the page in a fixed table of regions, sets its bit in that region's bitmap and makes the
//! page writable, then returns so the write is retried. Everything the handler touches is an
//! atomic in static memory or a bitmap allocated before the region went live: no locks, no
//! allocation, only the `mprotect` and `sigaction` system calls. Faults outside every region
//! go to the handler that was installed before ours (or to the default action).
//!
//! The same handler serves the `cbw` snapshot strategy ([`super::cow`]): a write to a page
//! whose checkpoint-time contents are not copied yet copies them first, then goes on as
//! above (or, when the page was protected for the snapshot alone, is let through).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use nix::errno::Errno;

use super::PAGE_SIZE;

/// How many regions can be tracked by mprotect at once, process-wide.
pub const MAX_REGIONS: usize = 64;

struct Slot {
    /// Claimed by a [`Registration`]; free slots have `false`.
    claimed: AtomicBool,
    /// First byte of the region; 0 while the slot is not live. Published last (Release).
    start: AtomicUsize,
    /// One past the last byte of the region.
    end: AtomicUsize,
    /// The bitmap, one bit per page, `ceil(pages / 64)` words.
    bits: AtomicPtr<AtomicU64>,
}

impl Slot {
    const fn new() -> Self {
        Self {
            claimed: AtomicBool::new(false),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            bits: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

static TABLE: [Slot; MAX_REGIONS] = [const { Slot::new() }; MAX_REGIONS];

/// The SIGSEGV disposition found when our handler was installed, for chaining.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), Errno>> = OnceLock::new();

/// Installs the handler once per process; later calls return the first call's result.
pub fn install() -> Result<(), Errno> {
    *INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `old` is a valid out-pointer.
        Errno::result(unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &raw mut old) })?;
        // The handler reads PREVIOUS, so it is set before the handler can run.
        let _ = PREVIOUS.set(old);
        // SAFETY: as above, all-zero is a valid sigaction to fill in.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = on_segv as extern "C" fn(_, _, _) as libc::sighandler_t;
        // SA_ONSTACK keeps Rust's stack-overflow reports working: it runs on the alternate
        // stack, and so does our handler before chaining to it.
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: `new.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&raw mut new.sa_mask) };
        // SAFETY: `new` is fully initialised and `on_segv` is async-signal-safe (see module
        // docs); the old action is already saved.
        Errno::result(unsafe {
            libc::sigaction(libc::SIGSEGV, &raw const new, std::ptr::null_mut())
        })?;
        Ok(())
    })
}

/// A live slot in the handler's table: one region whose first writes are recorded.
///
/// Dropping it takes the region out of the table; the caller must make the region writable
/// first and no thread may write to the region meanwhile (its bitmap is freed).
#[derive(Debug)]
pub struct Registration {
    slot: usize,
    pages: usize,
    bits: Box<[AtomicU64]>,
}

/// Puts `[start, start + len)` (page-aligned, `len > 0`) in the handler's table. The caller
/// write-protects the range afterwards.
pub fn claim(start: usize, len: usize) -> Result<Registration, Errno> {
    if start == 0 || !start.is_multiple_of(PAGE_SIZE) || len == 0 || !len.is_multiple_of(PAGE_SIZE)
    {
        return Err(Errno::EINVAL);
    }
    let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
    let pages = len / PAGE_SIZE;
    let bits: Box<[AtomicU64]> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    for (i, slot) in TABLE.iter().enumerate() {
        if slot
            .claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        slot.end.store(end, Ordering::Relaxed);
        slot.bits.store(bits.as_ptr().cast_mut(), Ordering::Relaxed);
        slot.start.store(start, Ordering::Release);
        return Ok(Registration {
            slot: i,
            pages,
            bits,
        });
    }
    Err(Errno::ENOSPC)
}

impl Registration {
    /// Calls `out` with the index of every page written since the last call, in ascending
    /// order, and clears those bits.
    pub fn take_dirty(&self, mut out: impl FnMut(usize)) {
        for (w, word) in self.bits.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut v = word.swap(0, Ordering::AcqRel);
            while v != 0 {
                let b = v.trailing_zeros() as usize;
                v &= v - 1;
                let page = w * 64 + b;
                if page < self.pages {
                    out(page);
                }
            }
        }
    }

    /// Records pages `[first, first + count)` as written without a fault.
    pub fn mark(&self, first: usize, count: usize) {
        for page in first..(first + count).min(self.pages) {
            self.bits[page / 64].fetch_or(1 << (page % 64), Ordering::AcqRel);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        slot.start.store(0, Ordering::Release);
        slot.bits.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.end.store(0, Ordering::Relaxed);
        slot.claimed.store(false, Ordering::Release);
    }
}

extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // The interrupted code may be between a failed call and its read of errno.
    let saved = Errno::last_raw();
    handle(sig, info, ctx);
    Errno::set_raw(saved);
}

fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let siginfo = unsafe { &*info };
    // SAFETY: for SIGSEGV the kernel fills in si_addr.
    let addr = unsafe { siginfo.si_addr() } as usize;
    // A page of a `cbw` snapshot not copied yet is copied before the write goes through.
    let cow = super::cow::on_fault(addr);
    for slot in &TABLE {
        let start = slot.start.load(Ordering::Acquire);
        let end = slot.end.load(Ordering::Relaxed);
        if start == 0 || addr < start || addr >= end {
            continue;
        }
        let bits = slot.bits.load(Ordering::Relaxed);
        let words = (end - start).div_ceil(PAGE_SIZE).div_ceil(64);
        // SAFETY: a live slot's bitmap has exactly ceil(pages / 64) words and stays allocated
        // while the slot is live (Registration's contract).
        let bits = unsafe { std::slice::from_raw_parts(bits.cast_const(), words) };
        let page = (addr - start) / PAGE_SIZE;
        bits[page / 64].fetch_or(1 << (page % 64), Ordering::AcqRel);
        let page_addr = start + page * PAGE_SIZE;
        if super::mman::protect_read_write(page_addr, PAGE_SIZE).is_ok() {
            return;
        }
        // Unprotecting one page can fail with ENOMEM once the region is split into too many
        // mappings (vm.max_map_count). Count every page as written and unprotect the whole
        // region, which merges it back into one mapping: over-reporting, never missing.
        // Its pages pending copy-before-write are copied first.
        let _ = super::cow::settle_all_at(addr);
        for w in bits {
            w.store(u64::MAX, Ordering::Release);
        }
        if super::mman::protect_read_write(start, end - start).is_ok() {
            return;
        }
        break;
    }
    if cow == (super::cow::Hit::Settled { unprotect: true }) {
        // A page the `cbw` snapshot protected and no tracker claims: its copy is made, the
        // write may go through.
        let page_addr = addr & !(PAGE_SIZE - 1);
        if super::mman::protect_read_write(page_addr, PAGE_SIZE).is_ok() {
            return;
        }
        // Too many mappings (see above): copy every pending page of the region, then
        // unprotect it whole.
        if let Some((start, len)) = super::cow::settle_all_at(addr)
            && super::mman::protect_read_write(start, len).is_ok()
        {
            return;
        }
    }
    chain(sig, info, ctx);
}

/// Hands a fault that is not ours to the previous disposition.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(prev) = PREVIOUS.get() else {
        return reset_default();
    };
    if prev.sa_sigaction == libc::SIG_DFL || prev.sa_sigaction == libc::SIG_IGN {
        return reset_default();
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO the saved handler has the three-argument signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the saved handler has the one-argument signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig);
    }
}

/// Restores the default action; returning re-executes the faulting instruction, which then
/// terminates the process with SIGSEGV as if we had never been installed.
fn reset_default() {
    // SAFETY: all-zero is SIG_DFL with an empty mask.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigaction is async-signal-safe and `dfl` is a valid action.
    unsafe { libc::sigaction(libc::SIGSEGV, &raw const dfl, std::ptr::null_mut()) };
}
