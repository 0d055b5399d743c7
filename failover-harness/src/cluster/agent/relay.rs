//! The relay's hold: what makes a primary that lost its client stop before an heir can lead.
//!
//! Every heartbeat to a client carries a stamp of this agent's clock (CLOCK_MONOTONIC
//! microseconds) and the client echoes it as soon as it reads it. The game's output goes to
//! the clients, and the key log to the game, only while the freshest echo of *every*
//! following client is younger than that client's grace, two thirds of the suspicion window
//! its hello named. The check is made at each relay, against the clock, not by a timer.
//!
//! Why that orders the old primary's stop before the heir's lead: the fast path deposes a
//! primary only on its client's suspicion, which the client writes after hearing nothing
//! from the primary for its whole window. The client heard the heartbeat of stamp `s` (it
//! echoed it), so its suspicion comes after `s + window`; this agent relays nothing after
//! `s + grace` for that echo, a third of the window earlier (50 ms by default), and the heir
//! still has its campaign and its game's restore to go. Only durations are compared, so the
//! hosts' clocks need not agree.
//!
//! Holding costs nothing to the spare: the game goes on (and beats on its stream), so a
//! primary cut off from its client alone is not failed over; it only waits, its output kept
//! here (up to [`HELD_OUTPUT_CAP`]) and its input in the pending queue, until an echo comes
//! back. The old game is killed when its agent learns of the new epoch.

use serde_json::json;

use super::events::monotonic_us;
use super::game::GameLoop;
use hotspare_cluster::proto::ToClient;

/// Output kept while held beyond this drops the following clients (they come back with a
/// hello, and a terminal client redraws): a cut that long has lost the screen anyway.
pub const HELD_OUTPUT_CAP: usize = 1 << 20;

/// A client's grace: two thirds of its suspicion window, in microseconds.
pub fn grace_us(suspect_ms: u32) -> u64 {
    u64::from(suspect_ms) * 1000 * 2 / 3
}

/// Until when (CLOCK_MONOTONIC microseconds) the relay may serve a client whose freshest echo
/// is `echoed` (`None`: none yet) and whose grace is `grace`.
pub fn open_until(echoed: Option<u64>, grace: u64) -> u64 {
    echoed.map_or(0, |s| s.saturating_add(grace))
}

/// The relay's state: open, or held since a time.
#[derive(Debug, Default)]
pub struct Hold {
    /// Held since this time (CLOCK_MONOTONIC microseconds); `None` while open.
    since: Option<u64>,
    /// The game's output kept while held.
    output: Vec<u8>,
}

impl GameLoop {
    /// Until when the relay is open: the earliest deadline of the following clients; `None`
    /// without any (nobody to relay to, nor any keys).
    fn relay_until(&self) -> Option<u64> {
        self.clients
            .values()
            .filter(|c| c.following)
            .map(|c| open_until(c.echoed, c.grace_us))
            .min()
    }

    /// Whether output and keys may pass now.
    pub(super) fn relay_open(&self) -> bool {
        self.relay_until()
            .is_some_and(|until| monotonic_us() < until)
    }

    /// Output of the leading game of `epoch`: to the followers if the relay is open (after
    /// what was kept), else kept.
    pub(super) fn relay_output(&mut self, epoch: u64, bytes: Vec<u8>) {
        if self.relay_open() {
            self.flush_held(epoch);
            self.broadcast_followers(&ToClient::Output { epoch, bytes });
            return;
        }
        self.hold.output.extend_from_slice(&bytes);
        if self.hold.output.len() > HELD_OUTPUT_CAP {
            tracing::warn!(
                kept = self.hold.output.len(),
                "held output over its cap: the followers are dropped (they come back and redraw)"
            );
            self.hold.output.clear();
            self.drop_followers();
        }
    }

    /// The output kept while held, to the followers.
    pub(super) fn flush_held(&mut self, epoch: u64) {
        if !self.hold.output.is_empty() {
            let bytes = std::mem::take(&mut self.hold.output);
            self.broadcast_followers(&ToClient::Output { epoch, bytes });
        }
    }

    /// Notes the relay's changes (`held` with the time the hold took effect, `released`) and
    /// gives the followers what was kept once it opens again. Called on every turn of the
    /// loop; the relay itself checks the clock at each output and each write of keys.
    pub(super) fn update_hold(&mut self) {
        let Some(epoch) = self.current.as_ref().filter(|c| c.leads()).map(|c| c.epoch) else {
            self.hold = Hold::default();
            return;
        };
        let now = monotonic_us();
        let until = self.relay_until();
        match (self.hold.since, until.filter(|&u| now < u)) {
            (None, None) => {
                let at = until.filter(|&u| u > 0).unwrap_or(now).min(now);
                self.hold.since = Some(at);
                self.events.emit(
                    "held",
                    json!({"epoch":epoch,"at_us":at,"followers":until.is_some()}),
                );
            }
            (Some(since), Some(_)) => {
                self.hold.since = None;
                self.events.emit(
                    "released",
                    json!({"epoch":epoch,"held_ms":(now.saturating_sub(since)) as f64 / 1000.0}),
                );
                self.flush_held(epoch);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{grace_us, open_until};

    #[test]
    fn the_grace_is_two_thirds_of_the_clients_window() {
        assert_eq!(grace_us(150), 100_000);
        assert_eq!(grace_us(30), 20_000);
    }

    #[test]
    fn a_client_that_never_echoed_holds_the_relay() {
        assert_eq!(open_until(None, 100_000), 0);
        assert_eq!(open_until(Some(5_000_000), 100_000), 5_100_000);
    }
}
