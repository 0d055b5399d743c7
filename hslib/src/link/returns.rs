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

    /// Everything handed back since the last call, oldest first (the owner).
    pub(super) fn take(&self) -> Vec<Copied> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        self.any.store(false, Ordering::Relaxed);
        std::mem::take(&mut *list)
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
        }
    }

    #[test]
    fn what_is_given_back_is_taken_once_in_order() {
        let r = Returns::default();
        assert!(r.take().is_empty());
        r.give(copied(true));
        r.give(copied(false));
        let got: Vec<bool> = r.take().iter().map(|c| c.full).collect();
        assert_eq!(got, [true, false]);
        assert!(r.take().is_empty(), "taken twice");
        r.give(copied(false));
        assert_eq!(r.take().len(), 1);
    }
}
