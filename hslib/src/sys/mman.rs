//! Anonymous mappings at fixed addresses, protection changes and advice.

use nix::errno::Errno;

/// Maps `len` bytes of private anonymous read-write memory at exactly `addr`, failing with
/// `EEXIST` when any part of the range is already mapped (`MAP_FIXED_NOREPLACE`).
pub fn map_fixed_noreplace(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory that Rust
    // code references can be affected; the new mapping is owned by the caller.
    let got = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    if got as usize != addr {
        // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat `addr` as a hint.
        // SAFETY: `got` is the mapping just created above, referenced by nothing else.
        unsafe { libc::munmap(got, len) };
        return Err(Errno::EEXIST);
    }
    Ok(())
}

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
/// No live reference may point into the range, and the caller must own the mapping.
pub unsafe fn unmap(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller guarantees ownership and that nothing references the range.
    Errno::result(unsafe { libc::munmap(addr as *mut libc::c_void, len) }).map(drop)
}

/// Makes `[addr, addr + len)` read-only.
///
/// Memory safety is unaffected (a later write faults instead of corrupting anything); the
/// caller is responsible for handling that fault.
pub fn protect_read(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: removing write permission cannot invalidate any Rust value; writes fault.
    Errno::result(unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_READ) })
        .map(drop)
}

/// Makes `[addr, addr + len)` readable and writable.
pub fn protect_read_write(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: adding write permission to memory the caller mapped read-write before cannot
    // invalidate any Rust value.
    Errno::result(unsafe {
        libc::mprotect(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    })
    .map(drop)
}

/// Which `madvise(2)` advice to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_HUGEPAGE`: back the range with transparent huge pages where possible.
    HugePage,
    /// `MADV_NOHUGEPAGE`: never use transparent huge pages for the range.
    NoHugePage,
    /// `MADV_DONTFORK`: a forked child does not get the range (and the parent's pages are
    /// not made copy-on-write by the fork).
    DontFork,
}

/// Gives the kernel advice about `[addr, addr + len)` that does not change its contents.
pub fn advise(addr: usize, len: usize, advice: Advice) -> Result<(), Errno> {
    let raw = match advice {
        Advice::HugePage => libc::MADV_HUGEPAGE,
        Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
        Advice::DontFork => libc::MADV_DONTFORK,
    };
    // SAFETY: these advices only change how the range is backed or inherited, never its
    // contents in this process.
    Errno::result(unsafe { libc::madvise(addr as *mut libc::c_void, len, raw) }).map(drop)
}

/// Discards `[addr, addr + len)` with `MADV_DONTNEED`: the pages read as zero afterwards.
///
/// # Safety
/// The caller must own the range and accept that its contents become zero; no reference may
/// rely on the old contents.
pub unsafe fn discard(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller guarantees the range is theirs and zeroing it is intended.
    Errno::result(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) })
        .map(drop)
}

/// Maps `len` bytes of private anonymous read-write memory wherever the kernel likes.
pub fn map_anywhere(len: usize) -> Result<usize, Errno> {
    // SAFETY: without MAP_FIXED the kernel picks a free range, so nothing existing changes.
    let got = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(got as usize)
}

/// One private anonymous page owned by this value, for probing trackers; unmapped on drop.
#[derive(Debug)]
pub struct ScratchPage {
    addr: usize,
}

impl ScratchPage {
    /// Maps the page wherever the kernel likes.
    pub fn new() -> Result<Self, Errno> {
        Ok(Self {
            addr: map_anywhere(super::PAGE_SIZE)?,
        })
    }

    /// The page's address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Writes the page's first byte (keeping its value), as a program's store would.
    pub fn touch(&self) {
        let p = self.addr as *mut u8;
        // SAFETY: the page is mapped read-write by `new` and owned by `self`; nothing else
        // references it. Volatile, so the store is not elided.
        let v = unsafe { p.read_volatile() };
        // SAFETY: as above.
        unsafe { p.write_volatile(v) };
    }
}

impl Drop for ScratchPage {
    fn drop(&mut self) {
        // SAFETY: `self` owns the page and hands out no references into it.
        let _ = unsafe { unmap(self.addr, super::PAGE_SIZE) };
    }
}

/// A growable byte buffer in its own private anonymous mapping that forked children do not
/// inherit (`MADV_DONTFORK`): a fork snapshot neither copies its page tables nor leaves its
/// pages copy-on-write, which would cost the next copy a write fault on every page.
#[derive(Debug)]
pub struct StagingBuffer {
    addr: usize,
    cap: usize,
    len: usize,
    /// A `cbw` snapshot's pages still to be copied in: settled before the bytes are read,
    /// the buffer is emptied or unmapped.
    pending: Option<std::sync::Arc<super::cow::Pending>>,
}

// SAFETY: the buffer owns its mapping exclusively; moving it to another thread moves that
// ownership (like a `Vec<u8>`).
unsafe impl Send for StagingBuffer {}

impl StagingBuffer {
    /// An empty buffer with room for at least `cap` bytes (rounded up to pages), its pages
    /// touched so that filling it costs no page faults.
    pub fn with_capacity(cap: usize) -> Result<Self, Errno> {
        Self::with_capacity_advised(cap, None)
    }

    /// Like [`StagingBuffer::with_capacity`], but never backed by huge pages (its page table
    /// then looks like a tracked region's: for timing protection changes).
    pub fn with_small_pages(cap: usize) -> Result<Self, Errno> {
        Self::with_capacity_advised(cap, Some(Advice::NoHugePage))
    }

    fn with_capacity_advised(cap: usize, advice: Option<Advice>) -> Result<Self, Errno> {
        let cap = cap.max(1).div_ceil(super::PAGE_SIZE) * super::PAGE_SIZE;
        let addr = map_anywhere(cap)?;
        if let Some(a) = advice {
            advise(addr, cap, a)?;
        }
        let buf = Self {
            addr,
            cap,
            len: 0,
            pending: None,
        };
        advise(addr, cap, Advice::DontFork)?;
        for page in (addr..addr + cap).step_by(super::PAGE_SIZE) {
            // SAFETY: `page` lies in the read-write mapping this buffer owns.
            unsafe { (page as *mut u8).write_volatile(0) };
        }
        Ok(buf)
    }

    /// Room in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Empties the buffer (keeping its memory).
    #[inline(always)]
    pub fn clear(&mut self) {
        self.settle();
        self.pending = None;
        self.len = 0;
    }

    /// Where the buffer's bytes start: copy-before-write snapshots copy pages to
    /// `addr() + i * PAGE_SIZE` (see [`StagingBuffer::fill_later`]).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Makes the buffer `len` bytes long (from empty), bytes that `pending`'s pages are
    /// copied into, page by page, before any of them is read: [`StagingBuffer::as_slice`]
    /// settles `pending` first. Panics past the capacity, which callers size beforehand.
    pub fn fill_later(&mut self, len: usize, pending: std::sync::Arc<super::cow::Pending>) {
        assert!(
            self.len == 0 && len <= self.cap,
            "staging buffer: {len} bytes to fill later into {} of {} used",
            self.len,
            self.cap
        );
        self.len = len;
        self.pending = Some(pending);
    }

    /// Copies in whatever pages of a copy-before-write snapshot are still pending.
    #[inline]
    fn settle(&self) {
        if let Some(p) = &self.pending {
            // Once it returns every page is copied; a failure only leaves pages read-only,
            // which the fault handler deals with.
            let _ = p.settle();
        }
    }

    /// Appends `bytes`; panics past the capacity, which callers size beforehand.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= self.cap - self.len,
            "staging buffer overflow: {} + {} > {}",
            self.len,
            bytes.len(),
            self.cap
        );
        // SAFETY: the destination `[addr + len, addr + len + bytes.len())` lies inside the
        // mapping this buffer owns (checked above) and cannot overlap `bytes`, which `&self`
        // does not lend out mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr + self.len) as *mut u8,
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    /// The bytes written so far (a copy-before-write snapshot's pages copied in first).
    pub fn as_slice(&self) -> &[u8] {
        self.settle();
        // SAFETY: the first `len` bytes of the owned mapping were written by
        // `extend_from_slice`, or by the settled copy-before-write snapshot (or zeroed by
        // `with_capacity`); nothing writes to them any more.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for StagingBuffer {
    fn drop(&mut self) {
        // No copy may land in the mapping once it is gone.
        self.settle();
        // SAFETY: the buffer owns the mapping and no slice of it outlives `&self`.
        let _ = unsafe { unmap(self.addr, self.cap) };
    }
}

/// One mapping of `/proc/self/smaps` that [`shed_file_pages`] may drop.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sheddable {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of an smaps text whose pages are all still the file's: file-backed, private,
/// never writable, with no anonymous (copied-on-write) page and something resident.
fn sheddable(smaps: &str) -> Vec<Sheddable> {
    /// A mapping being read: start, end, whether it may be shed so far, Rss and Anonymous.
    type Reading = Option<(usize, usize, bool, u64, u64)>;
    fn finish(cur: Reading, out: &mut Vec<Sheddable>) {
        if let Some((start, end, true, rss_kib, 0)) = cur
            && rss_kib > 0
        {
            out.push(Sheddable {
                start,
                end,
                rss_kib,
            });
        }
    }
    let mut out = Vec::new();
    let mut cur: Reading = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            finish(cur.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let candidate = path.starts_with('/')
                && perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p');
            cur = Some((start, end, candidate, 0, 0));
            continue;
        }
        let kib = || fields.clone().next().and_then(|v| v.parse::<u64>().ok());
        match (first, cur.as_mut()) {
            ("Rss:", Some(c)) => c.3 = kib().unwrap_or(0),
            // Unknown means not shed.
            ("Anonymous:", Some(c)) => c.4 = kib().unwrap_or(1),
            _ => {}
        }
    }
    finish(cur.take(), &mut out);
    out
}

/// Drops this process's page-table entries for the pages of its file mappings that are
/// still the file's (code and read-only data never written: private, not writable, no
/// copied-on-write page): the pages stay in the page cache, and what the process runs again
/// faults back in (minor faults). A process killed later has that much less to tear down
/// before its descriptors close (its peers see end of file after its address space is gone).
/// Returns the resident KiB dropped. Contents are unchanged: a clean file page can be
/// dropped by the kernel at any time anyway.
pub fn shed_file_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut shed = 0;
    for m in sheddable(&smaps) {
        // SAFETY: the range is a private, non-writable file mapping without any copied page
        // (checked just above; nothing can write to it meanwhile): every page is the file's,
        // so after MADV_DONTNEED each reads back from the page cache unchanged, exactly as
        // after the kernel's own reclaim. No Rust value's contents change.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            shed += m.rss_kib;
        }
    }
    Ok(shed)
}

#[cfg(test)]
mod shed_tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0200000 r-xp 00001000 08:01 42 /usr/bin/game
Rss:                2048 kB
Anonymous:             0 kB
55d0a0200000-55d0a0300000 r--p 00201000 08:01 42 /usr/bin/game
Rss:                 100 kB
Anonymous:            12 kB
55d0a0300000-55d0a0310000 rw-p 00301000 08:01 42 /usr/bin/game
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 600 kB
Anonymous:           600 kB
7f0000200000-7f0000300000 r-xp 00000000 08:01 7 /usr/lib/libc.so.6
Rss:                1200 kB
Anonymous:             0 kB
7f0000400000-7f0000401000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0000500000-7f0000600000 r--s 00000000 08:01 9 /dev/shm/x
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unwritten_private_file_mappings_are_sheddable() {
        let got = sheddable(SMAPS);
        assert_eq!(
            got,
            vec![
                Sheddable {
                    start: 0x55d0_a000_0000,
                    end: 0x55d0_a020_0000,
                    rss_kib: 2048
                },
                Sheddable {
                    start: 0x7f00_0020_0000,
                    end: 0x7f00_0030_0000,
                    rss_kib: 1200
                },
            ]
        );
    }

    #[test]
    fn shedding_keeps_the_code_running_and_drops_resident_file_pages() {
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("RssFile:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let before = rss();
        let shed = shed_file_pages().expect("smaps readable");
        assert!(shed > 0, "something was resident");
        assert!(
            rss() < before,
            "file pages dropped: {} -> {}",
            before,
            rss()
        );
    }
}
