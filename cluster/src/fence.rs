//! The client's epoch fence: output is accepted from, and keys are sent to, only the highest
//! epoch seen. The terminal is the game's only effect on the world, so this is complete
//! fencing: a deposed primary that still runs (cut off, stopped and resumed, slow to die) can
//! draw nothing and receive nothing once a newer epoch has been heard of.

use crate::coordinator::Epoch;

/// What the fence says about a message of some epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the highest epoch seen: accept.
    Current,
    /// From a higher epoch than any seen: it is now the current one; accept.
    Newer {
        /// The epoch it replaces.
        previous: Epoch,
    },
    /// From a lower epoch: refuse.
    Stale {
        /// The highest epoch seen.
        current: Epoch,
    },
}

impl Verdict {
    /// Whether the message may be used.
    pub fn accepted(self) -> bool {
        !matches!(self, Verdict::Stale { .. })
    }
}

/// The highest epoch seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    highest: Epoch,
}

impl Fence {
    /// A fence that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest epoch seen.
    pub fn highest(&self) -> Epoch {
        self.highest
    }

    /// Judges a message of `epoch` (and raises the fence if it is newer). Epoch 0 is never a
    /// leader's: it is refused.
    pub fn admit(&mut self, epoch: Epoch) -> Verdict {
        if epoch == 0 || epoch < self.highest {
            return Verdict::Stale {
                current: self.highest,
            };
        }
        if epoch == self.highest {
            return Verdict::Current;
        }
        let previous = std::mem::replace(&mut self.highest, epoch);
        Verdict::Newer { previous }
    }

    /// Learns of `epoch` from elsewhere (the etcd watch) without a message from it.
    pub fn observe(&mut self, epoch: Epoch) {
        self.highest = self.highest.max(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_epoch_is_refused_once_a_higher_one_was_seen() {
        let mut f = Fence::new();
        assert_eq!(f.admit(5), Verdict::Newer { previous: 0 });
        assert_eq!(f.admit(5), Verdict::Current);
        assert_eq!(f.admit(4), Verdict::Stale { current: 5 });
        f.observe(9);
        assert_eq!(f.admit(5), Verdict::Stale { current: 9 });
        assert!(f.admit(9).accepted());
        assert!(!f.admit(0).accepted());
    }

    #[test]
    fn the_accepted_epochs_of_any_sequence_never_decrease() {
        // Every sequence of up to 6 epochs from 0..4: exhaustive, small.
        fn go(f: Fence, accepted: &mut Vec<Epoch>, depth: u32) {
            if let Some(&last) = accepted.last() {
                assert!(accepted.windows(2).all(|w| w[0] <= w[1]), "{accepted:?}");
                assert!(f.highest() >= last);
            }
            if depth == 0 {
                return;
            }
            for e in 0..4 {
                let mut g = f;
                let v = g.admit(e);
                if v.accepted() {
                    accepted.push(e);
                }
                go(g, accepted, depth - 1);
                if v.accepted() {
                    accepted.pop();
                }
            }
        }
        go(Fence::new(), &mut Vec::new(), 6);
    }
}
