//! Cluster mode's commands (see `docs/CLUSTER.md`): the per-host agent, the user's client,
//! and the test rig of hosts in network namespaces. The coordination layer they share (etcd,
//! epochs, fences, frames) is crate `hotspare-cluster`.

pub mod agent;
pub mod client;
pub mod status;
