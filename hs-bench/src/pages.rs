//! Page-aligned byte buffers for the floors' copies.
//!
//! A floor must be what the hardware allows, and where a buffer starts changes that: on this
//! project's AMD EPYC VMs, `memcpy` (glibc's `rep movsb` path, taken from about 2 KiB up) copies 4 KiB
//! in 70 ns when the destination is 0 or 32-63 bytes past the source modulo 64, and in 1.37 us
//! (20x) when it is 1-31 bytes past. Two `Vec<u8>`s from `malloc` fall either way by chance;
//! hslib's copies run between page-aligned memory (the region's pages into page-aligned
//! staging). So every floor copies between buffers that start on a page, as a checkpoint does.

use std::ops::{Deref, DerefMut};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The page size the buffers are aligned to.
pub const PAGE: usize = 4096;

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

/// `len` bytes starting on a page boundary, each page written when made (no page fault later).
#[derive(Clone)]
pub struct PageBuf {
    pages: Vec<Page>,
    len: usize,
}

impl PageBuf {
    /// `len` bytes (at least one page of memory), every one `byte`.
    pub fn filled(len: usize, byte: u8) -> Self {
        Self {
            pages: vec![Page([byte; PAGE]); len.div_ceil(PAGE).max(1)],
            len,
        }
    }
}

impl Deref for PageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[..self.len]
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_buffer_starts_on_a_page_and_holds_what_was_asked() {
        for len in [1, PAGE - 1, PAGE, 5 * PAGE + 17] {
            let mut b = PageBuf::filled(len, 9);
            assert_eq!(b.as_ptr() as usize % PAGE, 0, "len {len}");
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 9));
            b[len - 1] = 1;
            let c = b.clone();
            assert_eq!(c.as_ptr() as usize % PAGE, 0, "a clone of len {len}");
            assert_eq!(c[len - 1], 1);
        }
    }
}
