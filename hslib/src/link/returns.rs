//! Copy snapshots the sender is done with, handed back to the link's owner for their
//! buffers (no allocation per checkpoint): a list under a lock, behind a flag the owner
//! looks at first. With nothing handed back, which is the case at most checkpoints, the
//! owner's look is one atomic load, where a channel's `try_recv` touched several cache lines
//! that a person's pace leaves cold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::snapshot::Copied;

#[derive(Debug, Default)]
pub(super) struct Returns {
    /// Whether `list` may hold something.
    any: AtomicBool,
    list: Mutex<Vec<Copied>>,
}

impl Returns {
    /// Hands `c` back (the sender, after writing it).
    pub(super) fn give(&self, c: Copied) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.push(c);
        self.any.store(true, Ordering::Release);
    }

    /// Moves everything handed back since the last call into `into` (empty), oldest first
    /// (the owner). The two lists trade places, so neither side allocates or frees one in
    /// the steady state: the owner drains what it got and passes the empty list in again.
    pub(super) fn take_into(&self, into: &mut Vec<Copied>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        self.any.store(false, Ordering::Relaxed);
        std::mem::swap(&mut *list, into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(full: bool) -> Copied {
        Copied {
            full,
            runs: Vec::new(),
            data: crate::sys::mman::StagingBuffer::with_capacity(4096).expect("a buffer"),
            metadata: Vec::new(),
            plan: Copied::UNKNOWN_PLAN,
        }
    }

    #[test]
    fn what_is_given_back_is_taken_once_in_order() {
        let r = Returns::default();
        let mut got = Vec::new();
        r.take_into(&mut got);
        assert!(got.is_empty());
        r.give(copied(true));
        r.give(copied(false));
        r.take_into(&mut got);
        let full: Vec<bool> = got.drain(..).map(|c| c.full).collect();
        assert_eq!(full, [true, false]);
        r.take_into(&mut got);
        assert!(got.is_empty(), "taken twice");
        r.give(copied(false));
        r.take_into(&mut got);
        assert_eq!(got.len(), 1);
    }

    /// The owner's drained list goes back to the giver: a steady state of one give and one
    /// take per checkpoint allocates no list.
    #[test]
    fn the_lists_trade_places_so_neither_side_allocates_again() {
        let r = Returns::default();
        let mut got = Vec::with_capacity(4);
        let mine = got.as_ptr();
        r.give(copied(false));
        r.take_into(&mut got);
        let theirs = got.as_ptr();
        assert_ne!(theirs, mine);
        got.clear();
        r.give(copied(false));
        r.take_into(&mut got);
        assert_eq!(
            got.as_ptr(),
            mine,
            "the giver pushed into the list it was given"
        );
    }
}
