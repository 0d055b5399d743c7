//! Coalescing: when the sender is behind, a copy snapshot taken while an older one still
//! waits for its turn is merged into it (the union of their pages, the newer contents, the
//! newer metadata) instead of queueing behind it. A spare only ever needs the latest
//! committed image, so memory stays bounded by the regions' size and the spare's lag by the
//! time of one write.

use std::time::Instant;

use crate::snapshot::{Copied, Run};
use crate::sys::PAGE_SIZE;
use crate::sys::mman::StagingBuffer;

/// The copy snapshot waiting for the sender, with everything merged into it so far.
#[derive(Debug)]
pub(super) struct Queued {
    /// The last job merged in: the sender finishes every job up to it at once.
    pub(super) last_id: u64,
    /// The session it was taken for.
    pub(super) generation: u64,
    /// The pages and metadata.
    pub(super) copied: Copied,
    /// When its oldest checkpoint was taken.
    pub(super) since: Instant,
}

/// The pages of `older` and `newer` (two snapshots of the same regions), each page's bytes
/// from the newer one that holds it, into `data` (cleared; at least
/// `older.data.len() + newer.data.len()` bytes) and `runs` (cleared).
pub(super) fn merge(older: &Copied, newer: &Copied, data: &mut StagingBuffer, runs: &mut Vec<Run>) {
    data.clear();
    runs.clear();
    let mut a = Pages::new(older);
    let mut b = Pages::new(newer);
    loop {
        let page = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => a.take(x),
            (None, Some(y)) => b.take(y),
            (Some(x), Some(y)) if x.key() < y.key() => a.take(x),
            (Some(x), Some(y)) if y.key() < x.key() => b.take(y),
            // The same page in both: the newer bytes win.
            (Some(x), Some(y)) => {
                a.take(x);
                b.take(y)
            }
        };
        data.extend_from_slice(page.bytes);
        match runs.last_mut() {
            Some(r)
                if r.index == page.at.index && r.first_page + r.pages as u64 == page.at.page =>
            {
                r.pages += 1;
            }
            _ => runs.push(Run {
                index: page.at.index,
                region: page.at.region,
                first_page: page.at.page,
                pages: 1,
            }),
        }
    }
}

/// Where a page is: its region (by index in the snapshot's region slice) and its number.
#[derive(Debug, Clone, Copy)]
struct At {
    index: usize,
    region: u32,
    page: u64,
}

impl At {
    fn key(self) -> (usize, u64) {
        (self.index, self.page)
    }
}

struct Page<'a> {
    at: At,
    bytes: &'a [u8],
}

/// The pages of a snapshot in order (runs are sorted by region index, then page).
struct Pages<'a> {
    copied: &'a Copied,
    run: usize,
    in_run: usize,
    offset: usize,
}

impl<'a> Pages<'a> {
    fn new(copied: &'a Copied) -> Self {
        Self {
            copied,
            run: 0,
            in_run: 0,
            offset: 0,
        }
    }

    fn peek(&self) -> Option<At> {
        let r = self.copied.runs.get(self.run)?;
        Some(At {
            index: r.index,
            region: r.region,
            page: r.first_page + self.in_run as u64,
        })
    }

    fn take(&mut self, at: At) -> Page<'a> {
        let bytes = &self.copied.data.as_slice()[self.offset..self.offset + PAGE_SIZE];
        self.offset += PAGE_SIZE;
        self.in_run += 1;
        if self
            .copied
            .runs
            .get(self.run)
            .is_some_and(|r| self.in_run >= r.pages)
        {
            self.run += 1;
            self.in_run = 0;
        }
        Page { at, bytes }
    }
}
