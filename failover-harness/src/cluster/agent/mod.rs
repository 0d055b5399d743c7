//! `failover-harness agent`: one per host. It supervises its local game, holds its place in
//! the session through etcd, and serves the user's client (`docs/CLUSTER.md`, "The agent").
//!
//! Three threads, so the game's I/O never waits for etcd:
//! - the **game loop** ([`game`]): the game process (pipes or a pty, its status pipe, its
//!   pidfd, a spare's promote and silence pipes) and every client connection, in one `poll`;
//! - the **control thread** ([`control`]): the session's lifecycle in etcd (lease, register,
//!   campaign, spare slot, fast path, revoke), every call with a deadline; it orders the game
//!   loop about ([`Order`]) and hears from it ([`Report`]);
//! - the **leader watch** ([`control::watch_leader`], on `hotspare_cluster::follow`): etcd's changes of the leader key.
//!
//! Client connections are accepted and authenticated by a thread of their own, and each one's
//! frames are read by a thread of its own ([`service`]), which hand them to the game loop.

pub mod clients;
pub mod control;
pub mod events;
pub mod game;
pub mod orders;
pub mod relay;
pub mod service;
pub mod wake;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use hotspare_cluster::{Epoch, NodeInfo};

use self::events::Events;

/// What `agent` was asked for.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// etcd's client URLs, comma-separated.
    pub etcd: String,
    /// The session.
    pub session: String,
    /// This node's name.
    pub name: String,
    /// Where clients reach this agent; its game's stream listens on the next port.
    pub listen: SocketAddr,
    /// The shared key file.
    pub key_file: PathBuf,
    /// A spare's silence before it suspects its primary.
    pub suspect: Duration,
    /// The lease's TTL in seconds.
    pub ttl_s: i64,
    /// Where the events go (JSON lines), if anywhere.
    pub events: Option<PathBuf>,
    /// The executable run as the game (`failover-harness game -- ARGS`); default: this one.
    pub tetris: Option<PathBuf>,
}

impl AgentOptions {
    /// This node as etcd shows it: the client address, and the stream on the next port.
    pub fn node_info(&self) -> anyhow::Result<NodeInfo> {
        let port = self.listen.port().checked_add(1).with_context(|| {
            format!("--listen {}: no port above it for the stream", self.listen)
        })?;
        Ok(NodeInfo {
            name: self.name.clone(),
            stream_addr: SocketAddr::new(self.listen.ip(), port).to_string(),
            client_addr: self.listen.to_string(),
            state: hotspare_cluster::coordinator::NodeState::Starting,
        })
    }
}

/// The session's game configuration (`/hotspare/S/config`, written by the client).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GameConfig {
    /// `tetris` arguments.
    pub args: Vec<String>,
    /// A headless game (pipes; the key log is script inputs) or one on a terminal (a pty; the
    /// key log is terminal bytes).
    #[serde(default)]
    pub headless: bool,
}

/// From the control thread to the game loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// Start a fresh primary leading `epoch`.
    StartPrimary {
        /// The number of the game (reports about it carry it).
        game: u64,
        /// Its epoch (`HS_EPOCH`).
        epoch: Epoch,
        /// The game.
        config: GameConfig,
    },
    /// Start a spare of `leader`'s game.
    StartSpare {
        /// The number of the game (reports about it carry it).
        game: u64,
        /// The primary it follows.
        leader: NodeInfo,
        /// The primary's epoch.
        epoch: Epoch,
        /// The game.
        config: GameConfig,
    },
    /// The spare's game takes over with `epoch`.
    Promote {
        /// The epoch won.
        epoch: Epoch,
    },
    /// SIGKILL the game, whatever it is, and forget it.
    Kill,
    /// The agent's lease is fenced while its game leads: SIGKILL it if a spare holds a
    /// checkpoint of it (the spare takes over), else SIGSTOP it and keep it
    /// ([`Report::Suspended`]): it is the game's only copy, and the agent may lead it again
    /// once etcd answers ([`Order::Continue`]).
    Fence,
    /// SIGCONT the suspended game, which leads again with the new `epoch`.
    Continue {
        /// The epoch won.
        epoch: Epoch,
    },
}

/// From the game loop to the control thread. `game` is the number the start order gave the
/// game a report is about, so a report about a game already replaced is recognised as stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// A spare's game first holds a whole checkpoint of the primary's epoch `epoch`.
    Holding {
        /// The game.
        game: u64,
        /// Its checkpoint.
        checkpoint: u64,
        /// The primary's epoch.
        epoch: Epoch,
    },
    /// A spare's game has heard nothing from its primary for `ms` milliseconds.
    Silent {
        /// The game.
        game: u64,
        /// How long.
        ms: u64,
    },
    /// It hears its primary again.
    Heard {
        /// The game.
        game: u64,
    },
    /// A fenced primary's game was stopped and kept, no spare holding a checkpoint of it.
    Suspended {
        /// The game.
        game: u64,
        /// The epoch it led.
        epoch: Epoch,
    },
    /// A promoted game has restored its checkpoint and runs.
    Resumed {
        /// The game.
        game: u64,
        /// Key-log bytes its state accounts for.
        position: u64,
    },
    /// The game ended.
    Exited {
        /// The game.
        game: u64,
        /// On purpose (exit status 0).
        success: bool,
        /// Its status as people read it.
        status: String,
    },
    /// The game loop cannot go on.
    Failed(String),
}

/// Runs the agent until it fails (it runs for good otherwise).
pub fn run(opts: &AgentOptions) -> anyhow::Result<()> {
    let key = hotspare_cluster::keyfile::load(&opts.key_file)?;
    let me = opts.node_info()?;
    let events = Events::open(opts.events.as_deref(), &opts.name)?;
    let (to_game, game_inbox) = mpsc::channel();
    let waker = wake::Waker::new()?;
    let (to_control, control_inbox) = mpsc::channel();
    let service = service::Service::start(opts.listen, &key, to_game.clone(), waker.clone())?;
    let game_loop = game::GameLoop::new(
        opts,
        &key,
        &me,
        game_inbox,
        waker.clone(),
        to_control.clone(),
        events.clone(),
    )?;
    let game_thread = std::thread::Builder::new()
        .name("hs-agent-game".to_owned())
        .spawn(move || game_loop.run())
        .context("cannot start the agent's game loop")?;
    let control = control::Control::new(
        opts,
        me,
        control_inbox,
        to_control,
        wake::Mailbox::new(to_game, waker),
        events,
    )?;
    tracing::info!(addr = %service.addr(), "serving clients");
    let outcome = control.run();
    // The game loop ends when its mailbox closes (the control thread dropped it).
    match game_thread.join() {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => outcome.and(Err(e)),
        Err(_) => outcome.and(Err(anyhow::anyhow!("the agent's game loop panicked"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(listen: &str) -> AgentOptions {
        AgentOptions {
            etcd: "http://10.0.0.1:2379".to_owned(),
            session: "s".to_owned(),
            name: "a".to_owned(),
            listen: listen.parse().unwrap_or_else(|e| panic!("{listen}: {e}")),
            key_file: PathBuf::from("/nonexistent"),
            suspect: Duration::from_millis(150),
            ttl_s: 1,
            events: None,
            tetris: None,
        }
    }

    #[test]
    fn a_node_serves_clients_on_its_port_and_its_stream_on_the_next() {
        let me = opts("10.0.0.2:7000")
            .node_info()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (me.client_addr.as_str(), me.stream_addr.as_str()),
            ("10.0.0.2:7000", "10.0.0.2:7001")
        );
        let err = opts("10.0.0.2:65535")
            .node_info()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no port above"), "{err}");
    }

    #[test]
    fn the_config_the_client_writes_is_read_and_headless_defaults_to_false() {
        let c: GameConfig = serde_json::from_str(r#"{"args":["--seed","7"],"headless":true}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.args, ["--seed", "7"]);
        assert!(c.headless);
        let c: GameConfig =
            serde_json::from_str(r#"{"args":[]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.headless);
        assert!(serde_json::from_str::<GameConfig>(r#"{"headless":true}"#).is_err());
    }
}
