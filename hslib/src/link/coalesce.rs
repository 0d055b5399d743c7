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
    /// When its oldest checkpoint was taken; stamped only under a time bound on the lag
    /// (`HS_MAX_LAG=Nus`), the only reader (a clock read is a cold page at a person's pace).
    pub(super) since: Option<Instant>,
    /// How many checkpoints it stands for.
    pub(super) checkpoints: u64,
}

impl Queued {
    /// Job `id`'s snapshot, taken for session `generation`, queued now on its own; the time
    /// stamped if `timed`.
    #[inline(always)]
    pub(super) fn alone(id: u64, generation: u64, copied: Copied, timed: bool) -> Self {
        Self {
            last_id: id,
            generation,
            copied,
            since: stamp(timed),
            checkpoints: 1,
        }
    }
}

/// Now if `timed`.
#[inline(always)]
pub(super) fn stamp(timed: bool) -> Option<Instant> {
    if timed { Some(stamp_now()) } else { None }
}

#[cold]
#[inline(never)]
fn stamp_now() -> Instant {
    Instant::now()
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

/// Whether every page of `older` is in `newer` (runs sorted by region index, then page, as
/// snapshots hold them): then the newer snapshot alone is the merge, with nothing to copy.
/// May say no for pages covered only across two adjacent runs of `newer`.
pub(super) fn covers(newer: &[Run], older: &[Run]) -> bool {
    let end = |r: &Run| r.first_page + r.pages as u64;
    let mut j = 0;
    older.iter().all(|o| {
        while newer
            .get(j)
            .is_some_and(|n| (n.index, end(n)) <= (o.index, o.first_page))
        {
            j += 1;
        }
        newer
            .get(j)
            .is_some_and(|n| n.index == o.index && n.first_page <= o.first_page && end(o) <= end(n))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of `runs` ((region index, first page, pages)) whose page `p` of region `i`
    /// holds bytes `tag + i * 100 + p`.
    fn copied(full: bool, tag: u8, runs: &[(usize, u64, usize)]) -> Copied {
        let pages: usize = runs.iter().map(|r| r.2).sum();
        let mut data = StagingBuffer::with_capacity(pages * PAGE_SIZE).expect("a staging buffer");
        let runs: Vec<Run> = runs
            .iter()
            .map(|&(index, first_page, pages)| Run {
                index,
                region: 10 + index as u32,
                first_page,
                pages,
            })
            .collect();
        for r in &runs {
            for p in r.first_page..r.first_page + r.pages as u64 {
                let byte = tag
                    .wrapping_add((r.index * 100) as u8)
                    .wrapping_add(p as u8);
                data.extend_from_slice(&[byte; PAGE_SIZE]);
            }
        }
        Copied {
            full,
            runs,
            data,
            metadata: vec![tag],
            plan: Copied::UNKNOWN_PLAN,
        }
    }

    fn mark(tag: u8, index: usize, page: u64) -> u8 {
        tag.wrapping_add((index * 100) as u8)
            .wrapping_add(page as u8)
    }

    /// (region index, page, first byte) of every page of `runs` over `data`.
    fn pages(runs: &[Run], data: &StagingBuffer) -> Vec<(usize, u64, u8)> {
        let mut out = Vec::new();
        let mut at = 0;
        for r in runs {
            for p in r.first_page..r.first_page + r.pages as u64 {
                out.push((r.index, p, data.as_slice()[at]));
                at += PAGE_SIZE;
            }
        }
        out
    }

    #[test]
    fn covers_says_whether_the_newer_runs_hold_every_older_page() {
        let runs = |c: Copied| c.runs;
        let newer = runs(copied(false, 0, &[(0, 0, 4), (1, 2, 3)]));
        for (older, want) in [
            (vec![], true),
            (vec![(0, 0, 4)], true),
            (vec![(0, 1, 2), (1, 2, 1), (1, 4, 1)], true),
            (vec![(0, 3, 2)], false),
            (vec![(1, 1, 1)], false),
            (vec![(0, 0, 1), (2, 0, 1)], false),
            (vec![(1, 5, 1)], false),
        ] {
            let older = runs(copied(false, 0, &older));
            assert_eq!(covers(&newer, &older), want, "{older:?}");
        }
    }

    #[test]
    fn merge_takes_the_union_of_pages_with_the_newer_bytes_and_joins_runs() {
        let older = copied(false, 1, &[(0, 0, 2), (0, 5, 1), (1, 3, 2)]);
        let newer = copied(false, 50, &[(0, 1, 3), (1, 0, 1), (1, 4, 1), (2, 7, 1)]);
        let mut data = StagingBuffer::with_capacity(older.data.len() + newer.data.len())
            .expect("a staging buffer");
        let mut runs = Vec::new();
        merge(&older, &newer, &mut data, &mut runs);
        let got = pages(&runs, &data);
        let (o, n) = (1u8, 50u8);
        let want: Vec<(usize, u64, u8)> = [
            (0, 0, o),
            (0, 1, n),
            (0, 2, n),
            (0, 3, n),
            (0, 5, o),
            (1, 0, n),
            (1, 3, o),
            (1, 4, n),
            (2, 7, n),
        ]
        .iter()
        .map(|&(i, p, tag)| (i, p, mark(tag, i, p)))
        .collect();
        assert_eq!(got, want);
        // Adjacent pages form one run; a gap or another region starts a new one.
        let shape: Vec<(usize, u32, u64, usize)> = runs
            .iter()
            .map(|r| (r.index, r.region, r.first_page, r.pages))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 10, 0, 4),
                (0, 10, 5, 1),
                (1, 11, 0, 1),
                (1, 11, 3, 2),
                (2, 12, 7, 1)
            ]
        );
    }
}
