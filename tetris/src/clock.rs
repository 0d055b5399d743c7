//! Time for the fall timer, behind a trait so the game loop runs on a virtual clock in tests.
//!
//! The loop only reads the time; all waiting happens in the input source
//! ([`crate::input::Source::wait`]), so a virtual clock is advanced by a scripted source.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A monotonic clock.
pub trait Clock {
    /// Time since some fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The real monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]).
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Rc<Cell<Duration>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get().saturating_add(by));
    }

    /// Moves the time to `to` if that is later than now (a clock never goes back).
    pub fn advance_to(&self, to: Duration) {
        if to > self.now.get() {
            self.now.set(to);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.now.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time_and_never_go_back() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_micros(250));
        assert_eq!(b.now(), Duration::from_micros(250));
        b.advance_to(Duration::from_micros(100));
        assert_eq!(a.now(), Duration::from_micros(250));
        b.advance_to(Duration::from_micros(900));
        assert_eq!(a.now(), Duration::from_micros(900));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let t1 = c.now();
        let t2 = c.now();
        assert!(t2 >= t1);
    }
}
