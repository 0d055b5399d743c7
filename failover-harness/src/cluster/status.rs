//! `failover-harness status --etcd URL --session S [--json]`: a cluster session's state as
//! etcd holds it (who leads which epoch, which node's game is the synced spare, how many
//! failovers), read without any agent's help.

use std::time::Duration;

use anyhow::Context as _;
use hotspare_cluster::EtcdSession;
use hotspare_cluster::status::ClusterStatus;

/// How long each etcd call of `status` may take.
const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// The session's status, read from the etcd cluster at `endpoints`.
pub fn read(endpoints: &str, session: &str) -> anyhow::Result<ClusterStatus> {
    let coord = EtcdSession::new(endpoints, session, CALL_DEADLINE)
        .with_context(|| format!("session {session:?} at {endpoints}"))?;
    ClusterStatus::read(&coord)
        .with_context(|| format!("reading session {session:?} from etcd at {endpoints}"))
}

/// The human line: `session S: primary A (epoch E) | spare B | failovers N`.
pub fn human(session: &str, s: &ClusterStatus) -> String {
    let primary = s
        .primary
        .as_deref()
        .map_or_else(|| "none (failing over)".to_owned(), str::to_owned);
    let spare = s.spare.as_deref().unwrap_or("none");
    format!(
        "session {session}: primary {primary} (epoch {}) | spare {spare} | failovers {}",
        s.epoch, s.failovers
    )
}
