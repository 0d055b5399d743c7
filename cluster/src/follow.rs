//! Following the leader key: a watch, checked against a linearizable read whenever it has
//! been quiet for [`WATCH_CHECK`]. A watch says nothing at all when its connection has gone
//! half-open, or when the etcd member it is on is cut off from its cluster (that member
//! accepts the watch but learns of no change); the read needs a quorum, so it either tells
//! the truth or fails, and either way the watch is made again (on the member that answered
//! last: see [`crate::etcd::Client`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::coordinator::{Coordinator, Epoch, LeaderChange};

/// How long the leader watch may stay quiet before the key is read to check it.
pub const WATCH_CHECK: Duration = Duration::from_millis(500);

/// The pause before a watch that could not be made is tried again.
const REWATCH_PAUSE: Duration = Duration::from_millis(20);

/// What following the leader reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    /// A change of the leader key (after a new watch, the key as it is).
    Change(LeaderChange),
    /// The watch failed or missed a change, and is made again; why.
    Rewatch(String),
}

/// Reports every change of the leader key to `on` until `on` returns false or `stop` is set
/// (looked at least every [`WATCH_CHECK`]).
pub fn follow_leader<C: Coordinator>(
    coord: &C,
    stop: &AtomicBool,
    mut on: impl FnMut(Followed) -> bool,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut watch = match coord.watch_leader() {
            Ok(w) => w,
            Err(e) => {
                if !on(Followed::Rewatch(format!("cannot watch the leader: {e}"))) {
                    return;
                }
                std::thread::sleep(REWATCH_PAUSE);
                continue;
            }
        };
        // The leader's epoch as the watch last said (None: vacant).
        let mut said: Option<Option<Epoch>> = None;
        let why = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match watch.next(Instant::now() + WATCH_CHECK) {
                Ok(changes) if changes.is_empty() => {
                    match coord.leader().map(|l| l.map(|l| l.epoch)) {
                        Ok(now) if said.is_none_or(|s| s == now) => said = Some(now),
                        Ok(now) => {
                            break format!(
                                "the leader watch missed a change (it said {said:?}, the key \
                                 says {now:?})"
                            );
                        }
                        Err(e) => break format!("cannot check the leader watch: {e}"),
                    }
                }
                Ok(changes) => {
                    for c in changes {
                        said = Some(match &c {
                            LeaderChange::Elected(l) => Some(l.epoch),
                            LeaderChange::Vacant { .. } => None,
                        });
                        if !on(Followed::Change(c)) {
                            return;
                        }
                    }
                }
                Err(e) => break format!("the leader watch failed: {e}"),
            }
        };
        if !on(Followed::Rewatch(why)) {
            return;
        }
        std::thread::sleep(REWATCH_PAUSE);
    }
}
