//! Time for the fall timer, behind a trait so the game loop runs on a virtual clock in tests.
//!
//! The loop only reads the time; all waiting happens in the input source
//! ([`crate::input::Source::wait`]), so a virtual clock is advanced by a scripted source.
//! Two clocks: a monotonic one times the waits of this process; the wall clock dates what is
//! committed, so that another process (a promoted spare, perhaps on another host, or a game
//! resumed from a log) knows how much of the fall timer has run out since.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// A monotonic clock, and the wall clock beside it.
pub trait Clock {
    /// Time since some fixed origin; never goes backwards.
    fn now(&self) -> Duration;

    /// The wall clock (`CLOCK_REALTIME`): time since the Unix epoch. It may step either
    /// way; whoever compares two readings clamps the difference.
    fn wall(&self) -> Duration;
}

/// The real clocks (`CLOCK_MONOTONIC` through [`Instant`], `CLOCK_REALTIME` through
/// [`SystemTime`]).
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

    fn wall(&self) -> Duration {
        // A wall clock set before 1970 reads as the epoch: differences are clamped anyway.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Where [`ManualClock::new`]'s wall clock starts: 2023-11-14 22:13:20 UTC (any time well
/// after the epoch does; zero would look like "never dated").
pub const MANUAL_WALL_START: Duration = Duration::from_secs(1_700_000_000);

/// A clock that moves only when told to; clones share the same time. Its wall clock is its
/// monotonic time plus an origin, which [`ManualClock::step_wall`] can move either way.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Rc<Cell<Duration>>,
    wall_origin: Rc<Cell<Duration>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::with_wall(MANUAL_WALL_START)
    }
}

impl ManualClock {
    /// A clock at time zero whose wall clock reads [`MANUAL_WALL_START`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock at time zero whose wall clock reads `wall` (another process's clock, later).
    pub fn with_wall(wall: Duration) -> Self {
        Self {
            now: Rc::default(),
            wall_origin: Rc::new(Cell::new(wall)),
        }
    }

    /// Steps the wall clock alone (as an administrator or NTP may): forward by `by`, or
    /// back when `back` is set. The monotonic time does not move.
    pub fn step_wall(&self, by: Duration, back: bool) {
        let origin = self.wall_origin.get();
        self.wall_origin.set(if back {
            origin.saturating_sub(by)
        } else {
            origin.saturating_add(by)
        });
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

    fn wall(&self) -> Duration {
        self.wall_origin.get().saturating_add(self.now.get())
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
    fn manual_wall_clock_follows_the_monotonic_time_and_steps_alone() {
        let a = ManualClock::with_wall(Duration::from_secs(50));
        let b = a.clone();
        a.advance(Duration::from_secs(2));
        assert_eq!(b.wall(), Duration::from_secs(52));
        b.step_wall(Duration::from_secs(10), true);
        assert_eq!(
            (a.now(), a.wall()),
            (Duration::from_secs(2), Duration::from_secs(42))
        );
        b.step_wall(Duration::from_secs(1), false);
        assert_eq!(a.wall(), Duration::from_secs(43));
    }

    #[test]
    fn system_wall_clock_is_after_2020() {
        assert!(SystemClock::new().wall() > Duration::from_secs(1_577_836_800));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let t1 = c.now();
        let t2 = c.now();
        assert!(t2 >= t1);
    }
}
