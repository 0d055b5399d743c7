//! Cluster coordination for hotspare: primary and spare on different hosts, leadership from
//! etcd (see `docs/CLUSTER.md` and DESIGN.md, "Cluster mode").
//!
//! - [`http`]: the small HTTP/1.1 client etcd's JSON gateway needs (deadlines on every read,
//!   watch streams closable from another thread).
//! - [`etcd`]: the etcd v3 calls: key-value, txn, leases, watches.
//! - [`coordinator`]: a session's leadership: the leader key, its create_revision as the epoch
//!   (the fencing token), campaigns, the config, nodes and suspicions.
//! - [`fence`]: the client's epoch fence (only the highest epoch seen is heard).
//! - [`follow`]: following the leader key (a watch checked by a read when quiet).
//! - [`keyfile`]: the shared key file (`--key-file`), refused if others can read it.
//! - [`proto`]: the client-agent messages and their frames.
//! - [`server`]: a private etcd process for tests and demos.
//! - [`lease`]: a lease kept alive by a thread, fenced before it could expire.
//! - [`netns`]: a rig of test hosts (network namespaces on a bridge) and its faults.
//! - [`status`]: a session's state as etcd holds it (`status --etcd ... --json`).

pub mod coordinator;
pub mod etcd;
pub mod fence;
pub mod follow;
pub mod http;
pub mod keyfile;
pub mod lease;
pub mod netns;
pub mod proto;
pub mod server;
pub mod status;

pub use coordinator::{
    Campaign, Coordinator, Epoch, EtcdSession, Leader, LeaderChange, NodeInfo, SpareSlot,
};
