//! Holding a lease, and knowing when it may be lost.
//!
//! A [`LeaseKeeper`] grants a lease and refreshes it from a thread of its own, on a connection
//! of its own (a slow call elsewhere never delays a keepalive). Its promise is the second layer
//! of fencing: it reports itself **fenced** before the lease can have expired in etcd, so a
//! primary that loses etcd stops its game before anyone else can lead.
//!
//! The arithmetic: etcd extends a lease by its TTL when it handles a keepalive, which happens
//! after we sent it. So if the last keepalive that succeeded was *sent* at `t`, the lease lives
//! at least until `t + TTL` by etcd's clock. The keeper declares itself fenced at
//! `t + TTL - margin`, the margin covering the time its owner takes to stop its game and the
//! difference between two machines' clock rates (not their offsets: only durations are used).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::coordinator::{CoordError, Coordinator, EtcdSession};
use crate::etcd::LeaseId;

/// How the keeper's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Refreshed in time.
    Held,
    /// It may have expired (or did): whatever it held must be given up.
    Fenced,
}

struct Shared {
    state: Mutex<LeaseState>,
    fenced_at: Mutex<Option<Instant>>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A lease kept alive by a thread.
pub struct LeaseKeeper {
    lease: LeaseId,
    ttl: Duration,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    session: EtcdSession,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .field("state", &self.state())
            .finish()
    }
}

impl LeaseKeeper {
    /// Grants a lease of `ttl_s` seconds in session `session` of the etcd cluster at
    /// `endpoints` and keeps it alive, declaring it fenced `margin` before it could expire.
    pub fn start(
        endpoints: &str,
        session: &str,
        ttl_s: i64,
        margin: Duration,
    ) -> Result<Self, CoordError> {
        let ttl = Duration::from_secs(u64::try_from(ttl_s.max(1)).unwrap_or(1));
        // Each call must end well before the fence could be due.
        let call = (ttl / 4).max(Duration::from_millis(50));
        let owner = EtcdSession::new(endpoints, session, call)?;
        let keeper_session = EtcdSession::new(endpoints, session, call)?;
        let sent = Instant::now();
        let lease = owner.grant(ttl_s.max(1))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(LeaseState::Held),
            fenced_at: Mutex::new(None),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let fence_after = ttl.saturating_sub(margin);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hs-lease".to_owned())
                .spawn(move || keep(&keeper_session, lease, ttl, fence_after, sent, &shared))
                .map_err(|e| CoordError::BadRecord {
                    key: "lease keeper".to_owned(),
                    why: format!("cannot start its thread: {e}"),
                })?
        };
        Ok(Self {
            lease,
            ttl,
            shared,
            thread: Some(thread),
            session: owner,
        })
    }

    /// The lease.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// How it stands now.
    pub fn state(&self) -> LeaseState {
        *self
            .shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When it was declared fenced, if it was.
    pub fn fenced_at(&self) -> Option<Instant> {
        *self
            .shared
            .fenced_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to `timeout` for the lease to be fenced; whether it is.
    pub fn wait_fenced(&self, timeout: Duration) -> bool {
        let guard = self
            .shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout_while(guard, timeout, |s| *s == LeaseState::Held)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard == LeaseState::Fenced
    }

    /// Revokes the lease (its keys go at once) and stops the keeper.
    pub fn revoke(mut self) -> Result<(), CoordError> {
        self.stop();
        self.session.revoke(self.lease)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            // A panicked keeper has nothing left to stop.
            let _ = t.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keep(
    session: &EtcdSession,
    lease: LeaseId,
    ttl: Duration,
    fence_after: Duration,
    mut last_ok_sent: Instant,
    shared: &Shared,
) {
    let period = ttl / 4;
    let fence = |shared: &Shared| {
        *shared
            .fenced_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let mut s = shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *s = LeaseState::Fenced;
        shared.changed.notify_all();
    };
    let mut next = Instant::now() + period;
    while !shared.stop.load(Ordering::Relaxed) {
        let fence_at = last_ok_sent + fence_after;
        let now = Instant::now();
        if now >= fence_at {
            tracing::warn!(lease = lease.0, "lease not refreshed in time: fenced");
            fence(shared);
            return;
        }
        if now < next {
            let wake = next.min(fence_at);
            let guard = shared
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Woken early only by stop.
            let _ = shared
                .changed
                .wait_timeout(guard, wake.saturating_duration_since(now))
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        let sent = Instant::now();
        match session.keepalive(lease) {
            Ok(true) => {
                last_ok_sent = sent;
                next = sent + period;
            }
            Ok(false) => {
                tracing::warn!(lease = lease.0, "the lease has expired: fenced");
                fence(shared);
                return;
            }
            Err(e) => {
                tracing::debug!(lease = lease.0, error = %e, "keepalive failed; retrying");
                next = Instant::now() + Duration::from_millis(20);
            }
        }
    }
}
