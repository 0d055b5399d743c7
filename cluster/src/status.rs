//! A session's state as etcd holds it: `failover-harness status --etcd URL --session S --json`
//! prints [`ClusterStatus::to_json`].

use serde::Serialize;

use crate::coordinator::{CoordError, Coordinator, Epoch, NodeState};

/// Who leads, who stands by, and how many failovers there were.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The latest leader's epoch (0 before the first).
    pub epoch: Epoch,
    /// The node holding the leader key now; `None` during a failover.
    pub primary: Option<String>,
    /// The holder of the spare slot, if its game holds a checkpoint (its agent published
    /// `Spare { synced: true }`); else `None`.
    pub spare: Option<String>,
    /// Leaders after the first.
    pub failovers: u64,
}

impl ClusterStatus {
    /// Reads it.
    pub fn read(coord: &dyn Coordinator) -> Result<Self, CoordError> {
        let leader = coord.leader()?;
        let history = coord.history()?;
        let nodes = coord.nodes()?;
        let holder = coord.spare_holder()?;
        let primary = leader.as_ref().map(|l| l.node.name.clone());
        let spare = holder.filter(|h| {
            Some(h) != primary.as_ref()
                && nodes
                    .iter()
                    .any(|n| &n.name == h && n.state == NodeState::Spare { synced: true })
        });
        let epoch = history
            .iter()
            .map(|(e, _)| *e)
            .chain(leader.map(|l| l.epoch))
            .max()
            .unwrap_or(0);
        Ok(Self {
            epoch,
            primary,
            spare,
            failovers: u64::try_from(history.len().saturating_sub(1)).unwrap_or(u64::MAX),
        })
    }

    /// The contract's JSON line: `{"epoch":E,"primary":"NODE"|null,"spare":"NODE"|null,"failovers":N}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
