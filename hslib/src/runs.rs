//! Sorted, coalesced runs of page indices: the result of a dirty-page scan.

/// `count` consecutive pages starting at page index `start` (relative to a region's base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRun {
    /// Index of the first page.
    pub start: usize,
    /// Number of pages, at least 1.
    pub count: usize,
}

impl PageRun {
    /// One past the last page index.
    pub fn end(&self) -> usize {
        self.start + self.count
    }
}

/// Runs of pages in ascending order, non-empty, never overlapping or touching (touching runs
/// are merged into one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRuns {
    runs: Vec<PageRun>,
}

impl PageRuns {
    /// No pages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, start + count)`, which must not begin before the start of the last run
    /// added; overlapping or touching runs are merged. Empty runs are ignored.
    ///
    /// # Panics
    /// If `start` is smaller than the last run's start (a caller bug: scans are ordered).
    pub fn push(&mut self, start: usize, count: usize) {
        if count == 0 {
            return;
        }
        if let Some(last) = self.runs.last_mut() {
            assert!(
                start >= last.start,
                "page runs pushed out of order: {start} after {}",
                last.start
            );
            if start <= last.end() {
                let end = last.end().max(start + count);
                last.count = end - last.start;
                return;
            }
        }
        self.runs.push(PageRun { start, count });
    }

    /// Builds runs from page indices in any order, with duplicates allowed.
    pub fn from_pages(pages: impl IntoIterator<Item = usize>) -> Self {
        let mut v: Vec<usize> = pages.into_iter().collect();
        v.sort_unstable();
        let mut runs = Self::new();
        for p in v {
            runs.push(p, 1);
        }
        runs
    }

    /// The union of two sets of runs.
    pub fn union(&self, other: &Self) -> Self {
        let mut all: Vec<PageRun> = self.runs.iter().chain(&other.runs).copied().collect();
        all.sort_unstable();
        let mut out = Self::new();
        for r in all {
            out.push(r.start, r.count);
        }
        out
    }

    /// The runs, ascending.
    pub fn as_slice(&self) -> &[PageRun] {
        &self.runs
    }

    /// Iterates over the runs, ascending.
    pub fn iter(&self) -> std::slice::Iter<'_, PageRun> {
        self.runs.iter()
    }

    /// Iterates over every page index, ascending.
    pub fn pages(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs.iter().flat_map(|r| r.start..r.end())
    }

    /// Total number of pages.
    pub fn page_count(&self) -> usize {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// Whether there are no pages.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether page `page` is in some run.
    pub fn contains(&self, page: usize) -> bool {
        let i = self.runs.partition_point(|r| r.end() <= page);
        self.runs.get(i).is_some_and(|r| r.start <= page)
    }

    /// Removes every run.
    pub fn clear(&mut self) {
        self.runs.clear();
    }
}

impl<'a> IntoIterator for &'a PageRuns {
    type Item = &'a PageRun;
    type IntoIter = std::slice::Iter<'a, PageRun>;
    fn into_iter(self) -> Self::IntoIter {
        self.runs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_canonical(r: &PageRuns) -> bool {
        r.as_slice().iter().all(|x| x.count > 0)
            && r.as_slice().windows(2).all(|w| w[0].end() < w[1].start)
    }

    proptest! {
        #[test]
        fn from_pages_is_canonical_and_holds_exactly_the_pages(
            pages in proptest::collection::vec(0usize..300, 0..200)
        ) {
            let runs = PageRuns::from_pages(pages.iter().copied());
            prop_assert!(is_canonical(&runs));
            let mut want: Vec<usize> = pages.clone();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(runs.pages().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(runs.page_count(), want.len());
            for p in 0..310 {
                prop_assert_eq!(runs.contains(p), want.binary_search(&p).is_ok());
            }
        }

        #[test]
        fn union_holds_both_sets_and_stays_canonical(
            a in proptest::collection::vec(0usize..200, 0..80),
            b in proptest::collection::vec(0usize..200, 0..80),
        ) {
            let ra = PageRuns::from_pages(a.iter().copied());
            let rb = PageRuns::from_pages(b.iter().copied());
            let u = ra.union(&rb);
            prop_assert!(is_canonical(&u));
            prop_assert_eq!(u, PageRuns::from_pages(a.iter().chain(&b).copied()));
        }
    }

    #[test]
    fn push_merges_touching_and_overlapping_runs() {
        let mut r = PageRuns::new();
        r.push(0, 2);
        r.push(2, 3);
        r.push(4, 1);
        r.push(7, 0);
        r.push(9, 1);
        assert_eq!(
            r.as_slice(),
            &[
                PageRun { start: 0, count: 5 },
                PageRun { start: 9, count: 1 }
            ]
        );
    }
}
