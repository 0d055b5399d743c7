//! Leadership for one hot-spare session, through etcd: who the primary is, and its epoch.
//!
//! Keys live under `/hotspare/<session>/`:
//! - `config`: the game's arguments, written once by whoever starts the session;
//! - `leader`: the primary's node and addresses, held with the primary agent's lease; **its
//!   create_revision is the epoch**, a fencing token that only grows: a new incarnation of the
//!   key always gets a higher revision than any before it;
//! - `nodes/<name>`: each agent's addresses, with its lease;
//! - `spare`: the name of the node whose game is the spare, held with that agent's lease and
//!   taken with a create-if-absent txn (one spare at a time, however many nodes stand by);
//! - `history/<epoch>`: who led each epoch (kept: `status` counts failovers from it);
//! - `suspect/<epoch>`: the client's word that it hears nothing from that epoch's primary (the
//!   second witness of the fast path, see `docs/CLUSTER.md`).
//!
//! [`Coordinator`] is the seam the agent and the client are written against; [`EtcdSession`]
//! is its implementation.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::etcd::{Client, Created, EtcdError, Kv, LeaseId, Watch, WatchEvent};

/// A leader's epoch: the leader key's create_revision.
pub type Epoch = u64;

/// Why a coordination step failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// etcd failed or could not be reached.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A record in etcd is not what this program writes.
    #[error("{key}: not a record of ours: {why}")]
    BadRecord {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A session name that cannot be a key component.
    #[error("session name {0:?}: use letters, digits, '-', '_' or '.' (1 to 64)")]
    BadName(String),
}

/// A node's public face: its name and where its game can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's (host's) name.
    pub name: String,
    /// Where its game listens for its spare's stream (`IP:PORT`).
    pub stream_addr: String,
    /// Where its agent listens for the client (`IP:PORT`).
    pub client_addr: String,
    /// What its game is doing (as its agent last published).
    #[serde(default)]
    pub state: NodeState,
}

/// What a node's game is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// No game, or one starting.
    #[default]
    Starting,
    /// A spare; `synced` once it holds a checkpoint.
    Spare {
        /// It holds a checkpoint.
        synced: bool,
    },
    /// The primary of this epoch.
    Primary {
        /// Its epoch.
        epoch: Epoch,
    },
}

/// The current primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its node.
    pub node: NodeInfo,
    /// Its epoch.
    pub epoch: Epoch,
}

/// What a campaign found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Campaign {
    /// We lead, with this epoch.
    Won(Epoch),
    /// Someone else leads.
    Lost(Leader),
}

/// What an attempt at the spare slot found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpareSlot {
    /// We hold it; the slot key's create_revision (to release exactly this incarnation).
    Taken(i64),
    /// This node holds it.
    Held(String),
}

/// A change of leadership seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderChange {
    /// A new leader.
    Elected(Leader),
    /// The leader key went away (revoked, expired, resigned, deposed).
    Vacant {
        /// The store's revision of the deletion.
        revision: i64,
    },
}

/// The coordination a session's agents and client need.
pub trait Coordinator {
    /// The current leader, if any.
    fn leader(&self) -> Result<Option<Leader>, CoordError>;
    /// Becomes leader if nobody is (`create_revision(leader) == 0`), holding it with `lease`.
    fn campaign(&self, me: &NodeInfo, lease: LeaseId) -> Result<Campaign, CoordError>;
    /// Removes the leader key if it is still `epoch`'s (a leader stepping down, or the fast
    /// path deposing a silent one); false when another incarnation holds it.
    fn depose(&self, epoch: Epoch) -> Result<bool, CoordError>;
    /// A new lease of `ttl` seconds.
    fn grant(&self, ttl: i64) -> Result<LeaseId, CoordError>;
    /// Refreshes `lease`; false once it has expired.
    fn keepalive(&self, lease: LeaseId) -> Result<bool, CoordError>;
    /// Revokes `lease` (its keys go at once).
    fn revoke(&self, lease: LeaseId) -> Result<(), CoordError>;
    /// Publishes this node under `nodes/<name>` with `lease`.
    fn register(&self, me: &NodeInfo, lease: LeaseId) -> Result<(), CoordError>;
    /// Every registered node.
    fn nodes(&self) -> Result<Vec<NodeInfo>, CoordError>;
    /// The session's config, writing `proposed` first if there is none; the config in force.
    fn config_or_init(&self, proposed: &[u8]) -> Result<Vec<u8>, CoordError>;
    /// The session's config, if any.
    fn config(&self) -> Result<Option<Vec<u8>>, CoordError>;
    /// Records that the client hears nothing from `epoch`'s primary (with `lease`, so it goes
    /// with the client).
    fn suspect(&self, epoch: Epoch, lease: Option<LeaseId>) -> Result<(), CoordError>;
    /// Whether the client suspects `epoch`'s primary.
    fn suspected(&self, epoch: Epoch) -> Result<bool, CoordError>;
    /// Watches the leader key; the current leader (if any) is the first change reported.
    fn watch_leader(&self) -> Result<LeaderWatch, CoordError>;
    /// Records that `node` leads `epoch` (kept after the lease: the session's history).
    fn record_leader(&self, epoch: Epoch, node: &str) -> Result<(), CoordError>;
    /// Every leader so far, oldest first: (epoch, node).
    fn history(&self) -> Result<Vec<(Epoch, String)>, CoordError>;
    /// Takes the spare slot (`spare`) for node `name` if nobody holds it (one txn,
    /// `create_revision(spare) == 0`, the key held with `lease`): exactly one node's game is
    /// the session's spare at a time.
    fn take_spare(&self, name: &str, lease: LeaseId) -> Result<SpareSlot, CoordError>;
    /// Gives the spare slot up if it is still the incarnation `revision` took; whether it was.
    fn release_spare(&self, revision: i64) -> Result<bool, CoordError>;
    /// The node holding the spare slot, if any.
    fn spare_holder(&self) -> Result<Option<String>, CoordError>;
    /// Records that `epoch`'s game ended on purpose (`finished`, kept after the lease): the
    /// session is over, and a spare that ends cleanly afterwards was told goodbye for it.
    fn record_finished(&self, epoch: Epoch) -> Result<(), CoordError>;
    /// The epoch whose game ended on purpose, if one did.
    fn finished(&self) -> Result<Option<Epoch>, CoordError>;
}

/// One session's keys in one etcd cluster.
#[derive(Debug)]
pub struct EtcdSession {
    client: Client,
    session: String,
}

impl EtcdSession {
    /// The session `session` in the etcd cluster at `endpoints` (`http://IP:PORT,...`).
    pub fn new(endpoints: &str, session: &str, timeout: Duration) -> Result<Self, CoordError> {
        let ok = !session.is_empty()
            && session.len() <= 64
            && session
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(CoordError::BadName(session.to_owned()));
        }
        Ok(Self {
            client: Client::new(endpoints, timeout)?,
            session: session.to_owned(),
        })
    }

    /// The raw etcd client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's key `rest` (`/hotspare/<session>/<rest>`).
    pub fn key(&self, rest: &str) -> String {
        format!("/hotspare/{}/{rest}", self.session)
    }

    fn leader_of(&self, kv: &Kv) -> Result<Leader, CoordError> {
        let node: NodeInfo =
            serde_json::from_slice(&kv.value).map_err(|e| CoordError::BadRecord {
                key: self.key("leader"),
                why: e.to_string(),
            })?;
        Ok(Leader {
            node,
            epoch: u64::try_from(kv.create_revision).unwrap_or(0),
        })
    }

    fn record(&self, me: &NodeInfo) -> Result<Vec<u8>, CoordError> {
        serde_json::to_vec(me).map_err(|e| CoordError::BadRecord {
            key: self.key("leader"),
            why: e.to_string(),
        })
    }
}

impl Coordinator for EtcdSession {
    fn take_spare(&self, name: &str, lease: LeaseId) -> Result<SpareSlot, CoordError> {
        match self
            .client
            .create(self.key("spare").as_bytes(), name.as_bytes(), Some(lease))?
        {
            Created::Won(rev) => Ok(SpareSlot::Taken(rev)),
            Created::Held(kv) => Ok(SpareSlot::Held(
                String::from_utf8_lossy(&kv.value).into_owned(),
            )),
        }
    }

    fn release_spare(&self, revision: i64) -> Result<bool, CoordError> {
        Ok(self
            .client
            .delete_if_created(self.key("spare").as_bytes(), revision)?)
    }

    fn spare_holder(&self) -> Result<Option<String>, CoordError> {
        let (kv, _) = self.client.get(self.key("spare").as_bytes())?;
        Ok(kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    fn record_leader(&self, epoch: Epoch, node: &str) -> Result<(), CoordError> {
        // Zero-padded, so etcd's key order is the epochs' order.
        let key = self.key(&format!("history/{epoch:020}"));
        self.client.put(key.as_bytes(), node.as_bytes(), None)?;
        Ok(())
    }

    fn record_finished(&self, epoch: Epoch) -> Result<(), CoordError> {
        let key = self.key("finished");
        self.client
            .put(key.as_bytes(), epoch.to_string().as_bytes(), None)?;
        Ok(())
    }

    fn finished(&self) -> Result<Option<Epoch>, CoordError> {
        let key = self.key("finished");
        let (kv, _) = self.client.get(key.as_bytes())?;
        kv.map(|kv| {
            String::from_utf8_lossy(&kv.value)
                .parse::<Epoch>()
                .map_err(|e| CoordError::BadRecord {
                    key: key.clone(),
                    why: format!("not an epoch: {e}"),
                })
        })
        .transpose()
    }

    fn history(&self) -> Result<Vec<(Epoch, String)>, CoordError> {
        let prefix = self.key("history/");
        let (kvs, _) = self.client.get_prefix(prefix.as_bytes())?;
        kvs.into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let epoch = key
                    .rsplit('/')
                    .next()
                    .and_then(|e| e.parse().ok())
                    .ok_or_else(|| CoordError::BadRecord {
                        key: key.clone(),
                        why: "no epoch at the end".to_owned(),
                    })?;
                Ok((epoch, String::from_utf8_lossy(&kv.value).into_owned()))
            })
            .collect()
    }

    fn leader(&self) -> Result<Option<Leader>, CoordError> {
        let (kv, _) = self.client.get(self.key("leader").as_bytes())?;
        kv.map(|kv| self.leader_of(&kv)).transpose()
    }

    fn campaign(&self, me: &NodeInfo, lease: LeaseId) -> Result<Campaign, CoordError> {
        let value = self.record(me)?;
        match self
            .client
            .create(self.key("leader").as_bytes(), &value, Some(lease))?
        {
            Created::Won(rev) => Ok(Campaign::Won(u64::try_from(rev).unwrap_or(0))),
            Created::Held(kv) => Ok(Campaign::Lost(self.leader_of(&kv)?)),
        }
    }

    fn depose(&self, epoch: Epoch) -> Result<bool, CoordError> {
        let rev = i64::try_from(epoch).unwrap_or(i64::MAX);
        Ok(self
            .client
            .delete_if_created(self.key("leader").as_bytes(), rev)?)
    }

    fn grant(&self, ttl: i64) -> Result<LeaseId, CoordError> {
        Ok(self.client.grant(ttl)?.0)
    }

    fn keepalive(&self, lease: LeaseId) -> Result<bool, CoordError> {
        Ok(self.client.keepalive(lease)?.is_some())
    }

    fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        Ok(self.client.revoke(lease)?)
    }

    fn register(&self, me: &NodeInfo, lease: LeaseId) -> Result<(), CoordError> {
        let value = self.record(me)?;
        let key = self.key(&format!("nodes/{}", me.name));
        self.client.put(key.as_bytes(), &value, Some(lease))?;
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>, CoordError> {
        let prefix = self.key("nodes/");
        let (kvs, _) = self.client.get_prefix(prefix.as_bytes())?;
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| CoordError::BadRecord {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    why: e.to_string(),
                })
            })
            .collect()
    }

    fn config_or_init(&self, proposed: &[u8]) -> Result<Vec<u8>, CoordError> {
        match self
            .client
            .create(self.key("config").as_bytes(), proposed, None)?
        {
            Created::Won(_) => Ok(proposed.to_vec()),
            Created::Held(kv) => Ok(kv.value),
        }
    }

    fn config(&self) -> Result<Option<Vec<u8>>, CoordError> {
        let (kv, _) = self.client.get(self.key("config").as_bytes())?;
        Ok(kv.map(|kv| kv.value))
    }

    fn suspect(&self, epoch: Epoch, lease: Option<LeaseId>) -> Result<(), CoordError> {
        let key = self.key(&format!("suspect/{epoch}"));
        self.client.put(key.as_bytes(), b"1", lease)?;
        Ok(())
    }

    fn suspected(&self, epoch: Epoch) -> Result<bool, CoordError> {
        let key = self.key(&format!("suspect/{epoch}"));
        Ok(self.client.get(key.as_bytes())?.0.is_some())
    }

    fn watch_leader(&self) -> Result<LeaderWatch, CoordError> {
        let key = self.key("leader");
        // Read, then watch from the next revision: nothing between the two is missed.
        let (kv, rev) = self.client.get(key.as_bytes())?;
        let watch = self.client.watch(key.as_bytes(), false, rev + 1)?;
        let mut pending = Vec::new();
        match kv {
            Some(kv) => pending.push(LeaderChange::Elected(self.leader_of(&kv)?)),
            None => pending.push(LeaderChange::Vacant { revision: rev }),
        }
        Ok(LeaderWatch {
            watch,
            pending,
            key,
        })
    }
}

/// Leadership changes, in order.
#[derive(Debug)]
pub struct LeaderWatch {
    watch: Watch,
    pending: Vec<LeaderChange>,
    key: String,
}

impl LeaderWatch {
    /// The next changes, waiting until `deadline` (empty if none came).
    pub fn next(&mut self, deadline: Instant) -> Result<Vec<LeaderChange>, CoordError> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let events = self.watch.next(deadline)?;
        events
            .into_iter()
            .map(|e| match e {
                WatchEvent::Put(kv) => {
                    let node: NodeInfo =
                        serde_json::from_slice(&kv.value).map_err(|e| CoordError::BadRecord {
                            key: self.key.clone(),
                            why: e.to_string(),
                        })?;
                    Ok(LeaderChange::Elected(Leader {
                        node,
                        epoch: u64::try_from(kv.create_revision).unwrap_or(0),
                    }))
                }
                WatchEvent::Delete { mod_revision, .. } => Ok(LeaderChange::Vacant {
                    revision: mod_revision,
                }),
            })
            .collect()
    }

    /// A handle that ends this watch from another thread.
    pub fn closer(&self) -> Result<crate::http::Closer, CoordError> {
        Ok(self.watch.closer()?)
    }
}
