//! The copy snapshots the application's thread takes its next snapshot into: kept whole (a
//! staging buffer with its run and metadata vectors), so a steady-state checkpoint allocates
//! nothing and maps nothing.
//!
//! What the sender gives back ([`Returns`]) is collected only when the pool has nothing that
//! fits: the collection reads cache lines the sender's thread wrote on another processor,
//! which at a person's pace was the most expensive step of a lazy checkpoint (~2 us of ~8).
//! For that to happen seldom, a pool serving small snapshots is stocked [`POOL`] deep: it is
//! collected once every few checkpoints.

use crate::snapshot::Copied;
use crate::sys::mman::StagingBuffer;

use super::returns::Returns;

/// How many snapshots the pool keeps for reuse.
pub(super) const POOL: usize = 4;

/// Snapshots up to this size are stocked [`POOL`] deep; larger ones, whose copy dwarfs a
/// collection, are not worth the memory.
pub(super) const STOCKED_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub(super) struct Pool {
    shells: Vec<Copied>,
    /// The list [`Returns::take_into`] fills, kept empty between collections.
    collected: Vec<Copied>,
}

impl Pool {
    /// A snapshot to take the next copy snapshot into, its staging buffer of at least
    /// `bytes`: one of the pool's if one fits (its memory is mapped already, its vectors
    /// reused), else, after collecting what the sender gave back into `returns`, one of
    /// those, else a new one. The second value says whether its buffer is new. What it holds
    /// is stale: the caller overwrites it.
    #[inline]
    pub(super) fn take(
        &mut self,
        bytes: usize,
        returns: &Returns,
    ) -> Result<(Copied, bool), nix::errno::Errno> {
        if let Some(i) = self.fitting(bytes) {
            return Ok((self.shells.swap_remove(i), false));
        }
        self.collect_and_take(bytes, returns)
    }

    /// The pool's last snapshot if its buffer holds `bytes` (the steady case: the pool's
    /// snapshots are alike, and the last one is the one given back last); `None` otherwise,
    /// the pool unchanged. Reads one snapshot's fields, where [`Pool::take`] reads all.
    #[inline(always)]
    pub(super) fn take_last(&mut self, bytes: usize) -> Option<Copied> {
        if self.shells.last()?.data.capacity() < bytes {
            return None;
        }
        self.shells.pop()
    }

    /// [`Pool::take`] when nothing in the pool fits: out of the usual case's way (at a
    /// person's pace each page of code a checkpoint runs is a cold miss of its own).
    #[cold]
    #[inline(never)]
    fn collect_and_take(
        &mut self,
        bytes: usize,
        returns: &Returns,
    ) -> Result<(Copied, bool), nix::errno::Errno> {
        self.collect(returns);
        let (shell, new) = match self.fitting(bytes) {
            Some(i) => (self.shells.swap_remove(i), false),
            None => {
                // Grow: the largest old buffer is too small; its memory goes back, its
                // vectors are reused.
                let (runs, metadata) = match self.largest() {
                    Some(i) => {
                        let old = self.shells.swap_remove(i);
                        (old.runs, old.metadata)
                    }
                    None => (Vec::new(), Vec::new()),
                };
                let shell = Copied {
                    full: false,
                    runs,
                    data: StagingBuffer::with_capacity(bytes)?,
                    metadata,
                    plan: Copied::UNKNOWN_PLAN,
                };
                (shell, true)
            }
        };
        self.stock(bytes)?;
        Ok((shell, new))
    }

    /// Keeps `c` for reuse.
    pub(super) fn give_back(&mut self, c: Copied) {
        self.shells.push(c);
    }

    /// Puts a staging buffer of `bytes`, its pages touched, in the pool unless one as large
    /// is there already.
    pub(super) fn prewarm(&mut self, bytes: usize) -> Result<(), nix::errno::Errno> {
        if self.shells.iter().any(|c| c.data.capacity() >= bytes) {
            return Ok(());
        }
        self.shells.push(empty(bytes)?);
        Ok(())
    }

    /// Drops all but the [`POOL`] snapshots with the largest buffers: the pool serves the
    /// snapshot being taken, the one queued and the one being written.
    pub(super) fn trim(&mut self) {
        if self.shells.len() > POOL {
            self.shells
                .sort_by_key(|c| std::cmp::Reverse(c.data.capacity()));
            self.shells.truncate(POOL);
        }
    }

    /// Moves what the sender gave back into the pool.
    fn collect(&mut self, returns: &Returns) {
        returns.take_into(&mut self.collected);
        self.shells.append(&mut self.collected);
        self.trim();
    }

    /// Fills the pool up to one snapshot short of [`POOL`] (the one short is being taken)
    /// with buffers of `bytes`, if snapshots of that size are stocked ([`STOCKED_BYTES`]).
    fn stock(&mut self, bytes: usize) -> Result<(), nix::errno::Errno> {
        if bytes > STOCKED_BYTES {
            return Ok(());
        }
        while self.shells.len() < POOL - 1 {
            self.shells.push(empty(bytes)?);
        }
        Ok(())
    }

    /// The smallest snapshot whose buffer holds `bytes` (a look at a handful; no sort).
    fn fitting(&self, bytes: usize) -> Option<usize> {
        self.shells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.data.capacity() >= bytes)
            .min_by_key(|(_, c)| c.data.capacity())
            .map(|(i, _)| i)
    }

    fn largest(&self) -> Option<usize> {
        self.shells
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| c.data.capacity())
            .map(|(i, _)| i)
    }
}

/// A snapshot with an empty staging buffer of `bytes`, its pages touched.
fn empty(bytes: usize) -> Result<Copied, nix::errno::Errno> {
    Ok(Copied {
        full: false,
        runs: Vec::new(),
        data: StagingBuffer::with_capacity(bytes)?,
        metadata: Vec::new(),
        plan: Copied::UNKNOWN_PLAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::PAGE_SIZE;

    /// A snapshot of one page marked `tag`, as the sender would give it back.
    fn tagged(tag: &[u8]) -> Copied {
        let mut c = empty(PAGE_SIZE).expect("a staging buffer");
        c.metadata = tag.to_vec();
        c
    }

    #[test]
    fn what_the_sender_gave_back_is_collected_only_when_nothing_in_the_pool_fits() {
        let returns = Returns::default();
        let mut pool = Pool::default();
        let (first, new) = pool.take(PAGE_SIZE, &returns).expect("take");
        assert!(new, "an empty pool has nothing to give");
        assert_eq!(
            pool.shells.len(),
            POOL - 1,
            "a small snapshot's pool is stocked"
        );
        returns.give(tagged(b"given back"));
        // The stock serves the next checkpoints; the given-back snapshot waits.
        for i in 0..POOL - 1 {
            let (c, new) = pool.take(PAGE_SIZE, &returns).expect("take");
            assert!(!new, "checkpoint {i} got a new buffer");
            assert!(c.metadata.is_empty(), "checkpoint {i} collected early");
        }
        let (c, new) = pool.take(PAGE_SIZE, &returns).expect("take");
        assert!(!new);
        assert_eq!(c.metadata, b"given back", "the empty pool collected");
        drop(first);
    }

    #[test]
    fn large_snapshots_are_not_stocked() {
        let returns = Returns::default();
        let mut pool = Pool::default();
        let (_, new) = pool
            .take(STOCKED_BYTES + PAGE_SIZE, &returns)
            .expect("take");
        assert!(new);
        assert!(
            pool.shells.is_empty(),
            "{} shells stocked",
            pool.shells.len()
        );
    }

    #[test]
    fn a_pool_that_grows_keeps_the_vectors_and_the_largest_buffers() {
        let returns = Returns::default();
        let mut pool = Pool::default();
        pool.give_back(tagged(b"small"));
        let (c, new) = pool
            .take(STOCKED_BYTES + PAGE_SIZE, &returns)
            .expect("take");
        assert!(new, "no buffer was large enough");
        assert_eq!(
            c.metadata, b"small",
            "the old snapshot's vectors are reused"
        );
        assert!(c.data.capacity() >= STOCKED_BYTES + PAGE_SIZE);
        for i in 0..POOL + 2 {
            pool.give_back(empty(PAGE_SIZE * (i + 1)).expect("a staging buffer"));
        }
        pool.trim();
        let mut caps: Vec<usize> = pool.shells.iter().map(|c| c.data.capacity()).collect();
        caps.sort_unstable();
        let want: Vec<usize> = (3..=POOL + 2).map(|i| i * PAGE_SIZE).collect();
        assert_eq!(caps, want);
    }
}
