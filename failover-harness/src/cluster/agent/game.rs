//! The agent's game loop: its game process and its clients, in one `poll`, never waiting for
//! etcd. It runs the game the control thread orders ([`Order`]) with the local engine's
//! [`LocalNode`] (pipes for a headless game, a pty for one on a terminal), reads its status
//! lines (a promoted game's resumed line gives the key-log position it continues from; the
//! stats lines, whether a spare is synced), a spare's silence lines (`holding`, `silent_ms`,
//! `heard`), and reports what matters to the control thread ([`Report`]).
//!
//! Clients (the [`service`](super::service) hands over their connections and frames): a
//! `Hello` is answered `Leading` only while this node's game leads an epoch at least the
//! client's and has started (a promoted game once its resumed line is read: a hello that
//! comes while it restores waits for it); `Keys` go to the game exactly once and in order;
//! everything the game writes goes out as `Output`, with a `Heartbeat` at least every
//! [`HEARTBEAT`] while it is quiet, and `Ended` when it ends.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hotspare_cluster::proto::ToClient;
use hotspare_cluster::{Epoch, NodeInfo};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::json;

use super::clients::{CLIENT_WRITE_DEADLINE, Client, HEARTBEAT};
use super::control::Msg;
use super::events::Events;
use super::relay::Hold;
use super::wake::{Inbound, Waker};
use super::{AgentOptions, GameConfig, Order, Report};
use crate::engine::local::{LocalLauncher, LocalNode};
use crate::engine::node::{Launcher as _, Node as _, Written};
use crate::report::Line;

/// The longest one `poll` waits.
const TICK: Duration = Duration::from_millis(10);
/// The games' stats period: a spare's sync is known within it.
pub(super) const STATS_MS: u64 = 2;
/// A pty game's size until a client says otherwise.
pub(super) const DEFAULT_SIZE: (u16, u16) = (24, 80);

use hslib::api::ENV_LISTEN_ADDR;

/// What the current game is to the session.
#[derive(Debug)]
pub(super) enum Role {
    /// It leads `epoch` (started fresh, or promoted and resumed).
    Primary,
    /// A spare; `promote` is the write end of its order pipe.
    Spare {
        /// The order pipe's write end.
        promote: File,
    },
    /// Promoted, restoring (the resumed line not read yet); the order pipe stays open.
    Promoting { _order: File },
    /// A fenced primary stopped (SIGSTOP) and kept: the only copy of the game.
    Suspended,
}

/// The running game.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) node: LocalNode,
    pub(super) game: u64,
    pub(super) role: Role,
    /// The epoch it leads (a spare: its primary's).
    pub(super) epoch: Epoch,
    /// A spare's silence pipe (its `HS_SILENCE_FD`).
    pub(super) silence: Option<LinePipe>,
    /// Key-log bytes given to it (or pending): the offset of the next byte.
    pub(super) accepted: u64,
    /// Accepted bytes the game has not taken yet.
    pub(super) pending: Vec<u8>,
    /// The key log ends here: the game's input closes once it has everything before.
    pub(super) end_at: Option<u64>,
    /// Key-log bytes its last checkpoint accounts for (stats lines).
    pub(super) accounted: u64,
    /// A spare holds a checkpoint of it (stats lines).
    pub(super) spare_synced: bool,
    /// The end of its output, for `Ended`.
    pub(super) tail: Vec<u8>,
    /// When it last wrote a status line (a running game writes one at least every 250 ms):
    /// no heartbeat speaks for a game silent longer than [`GAME_SILENT`] (stopped, hung), so
    /// the client's half of the fast path can see it.
    pub(super) last_line: Instant,
}

/// A game silent this long on its status pipe gets no heartbeats from its agent.
pub(super) const GAME_SILENT: Duration = Duration::from_millis(400);

impl Role {
    /// As the events name it: `primary` (also while restoring) or `spare`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Role::Spare { .. } => "spare",
            Role::Primary | Role::Promoting { .. } | Role::Suspended => "primary",
        }
    }
}

impl Current {
    pub(super) fn leads(&self) -> bool {
        matches!(self.role, Role::Primary)
    }
}

/// Non-blocking line reader (a spare's silence pipe).
#[derive(Debug)]
pub(super) struct LinePipe {
    pub(super) fd: OwnedFd,
    pub(super) partial: Vec<u8>,
}

impl LinePipe {
    fn lines(&mut self) -> Vec<serde_json::Value> {
        let mut buf = [0u8; 1024];
        loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            match serde_json::from_slice(&line) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!(line = %String::from_utf8_lossy(&line), error = %e,
                    "a silence line that is not JSON"),
            }
        }
        out
    }
}

/// The game loop.
#[derive(Debug)]
pub struct GameLoop {
    pub(super) me: NodeInfo,
    pub(super) session: String,
    pub(super) exe: Option<std::path::PathBuf>,
    pub(super) base_env: Vec<(String, OsString)>,
    pub(super) inbox: Receiver<Inbound>,
    pub(super) waker: Waker,
    pub(super) to_control: Sender<Msg>,
    pub(super) events: Events,
    pub(super) launcher: Option<(GameConfig, LocalLauncher)>,
    pub(super) size: (u16, u16),
    pub(super) current: Option<Current>,
    pub(super) clients: BTreeMap<u64, Client>,
    /// The highest epoch this node knows of.
    pub(super) known_epoch: Epoch,
    /// A game this node led that ended on purpose: its epoch and result, for late clients.
    pub(super) finished: Option<(Epoch, Vec<u8>)>,
    pub(super) last_beat: Instant,
    /// The relay's hold ([`super::relay`]).
    pub(super) hold: Hold,
}

impl GameLoop {
    /// The loop for node `me`, its games holding `key` for their stream.
    pub fn new(
        opts: &AgentOptions,
        key: &[u8],
        me: &NodeInfo,
        inbox: Receiver<Inbound>,
        waker: Waker,
        to_control: Sender<Msg>,
        events: Events,
    ) -> anyhow::Result<Self> {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let base_env = vec![
            (hslib::api::ENV_TRANSPORT.to_owned(), OsString::from("tcp")),
            (
                hslib::transport::tcp::KEY_ENV.to_owned(),
                OsString::from(hex),
            ),
            (
                hslib::silence::ENV_SUSPECT_MS.to_owned(),
                OsString::from(opts.suspect.as_millis().to_string()),
            ),
            (
                hslib::link::ENV_HEARTBEAT_MS.to_owned(),
                OsString::from(stream_heartbeat(opts.suspect).as_millis().to_string()),
            ),
            (ENV_LISTEN_ADDR.to_owned(), OsString::from(&me.stream_addr)),
        ];
        Ok(Self {
            me: me.clone(),
            session: opts.session.clone(),
            exe: opts.tetris.clone(),
            base_env,
            inbox,
            waker,
            to_control,
            events,
            launcher: None,
            size: DEFAULT_SIZE,
            current: None,
            clients: BTreeMap::new(),
            known_epoch: 0,
            finished: None,
            last_beat: Instant::now(),
            hold: Hold::default(),
        })
    }

    /// Runs until the control thread is gone.
    pub fn run(mut self) -> anyhow::Result<()> {
        loop {
            self.wait()?;
            self.waker.drain();
            loop {
                match self.inbox.try_recv() {
                    Ok(msg) => self.inbound(msg)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if let Err(e) = self.service_game() {
                let _ = self
                    .to_control
                    .send(Msg::Report(Report::Failed(format!("{e:#}"))));
                return Err(e);
            }
            self.heartbeats();
            self.update_hold();
        }
    }

    pub(super) fn report(&self, r: Report) {
        let _ = self.to_control.send(Msg::Report(r));
    }

    /// Polls the wake-up pipe, the game and a spare's silence pipe, for a tick at most.
    fn wait(&self) -> anyhow::Result<()> {
        let mut fds = vec![PollFd::new(self.waker.read.as_fd(), PollFlags::POLLIN)];
        if let Some(cur) = &self.current {
            // Held input waits for an echo, which the waker announces.
            let writing = !cur.pending.is_empty() && self.relay_open();
            for (fd, flags) in cur.node.wait_on(writing) {
                fds.push(PollFd::new(fd, flags));
            }
            if let Some(s) = &cur.silence {
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
            }
        }
        let ms = u16::try_from(TICK.as_millis()).unwrap_or(10);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e).context("poll in the agent's game loop"),
        }
    }

    fn inbound(&mut self, msg: Inbound) -> anyhow::Result<()> {
        match msg {
            Inbound::Order(o) => {
                let game = match &o {
                    Order::StartPrimary { game, .. } | Order::StartSpare { game, .. } => {
                        Some(*game)
                    }
                    Order::Promote { .. } | Order::Kill | Order::Fence | Order::Continue { .. } => {
                        None
                    }
                };
                if let Err(e) = self.order(o) {
                    // A game that could not start is one that died at once: the control
                    // thread goes on as after any death.
                    tracing::warn!(error = %format!("{e:#}"), "an order failed");
                    if let Some(game) = game {
                        self.report(Report::Exited {
                            game,
                            success: false,
                            status: format!("could not start: {e:#}"),
                        });
                    }
                }
                Ok(())
            }
            Inbound::Connected { id, stream } => {
                // A client that cannot take a frame within the deadline is dropped.
                let _ = stream.set_write_timeout(Some(CLIENT_WRITE_DEADLINE));
                let _ = stream.set_nodelay(true);
                self.clients.insert(id, Client::new(stream));
                Ok(())
            }
            Inbound::Frame { id, msg } => {
                self.frame(id, msg);
                Ok(())
            }
            Inbound::Gone { id, why } => {
                tracing::debug!(id, why, "client gone");
                self.clients.remove(&id);
                Ok(())
            }
        }
    }

    /// Everything the game has for us: output, status and silence lines, its exit; and the
    /// input it can take.
    fn service_game(&mut self) -> anyhow::Result<()> {
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        let game = cur.game;
        // Output first: a game's last words come before its exit.
        let output = cur.node.read_output()?;
        let lines = cur.node.read_status()?;
        if !lines.is_empty() {
            cur.last_line = Instant::now();
        }
        let silence = cur
            .silence
            .as_mut()
            .map(LinePipe::lines)
            .unwrap_or_default();
        if let Some(out) = output.filter(|o| !o.is_empty()) {
            cur.tail.extend_from_slice(&out);
            if cur.tail.len() > 64 * 1024 {
                let cut = cur.tail.len() - 64 * 1024;
                cur.tail.drain(..cut);
            }
            if cur.leads() {
                let epoch = cur.epoch;
                self.relay_output(epoch, out);
            }
        }
        for line in lines {
            self.status_line(line);
        }
        for v in silence {
            self.silence_line(game, &v);
        }
        self.flush_input()?;
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        let Some(exit) = cur.node.exited()? else {
            return Ok(());
        };
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        // Whatever it wrote before it died, after what the relay kept (the game has stopped:
        // nothing is left to hold).
        if cur.leads() {
            self.flush_held(cur.epoch);
        }
        while let Some(out) = cur.node.read_output()? {
            if out.is_empty() {
                break;
            }
            cur.tail.extend_from_slice(&out);
            if cur.leads() {
                let epoch = cur.epoch;
                self.broadcast_followers(&ToClient::Output { epoch, bytes: out });
            }
        }
        self.events.emit(
            "game_ended",
            json!({"epoch":cur.epoch,"role":cur.role.name(),"status":exit.text,
                "success":exit.success}),
        );
        if !exit.success {
            tracing::warn!(words = %cur.node.last_words(), status = %exit.text, "game died");
        }
        if cur.leads() {
            let output = last_line(&cur.tail);
            self.broadcast_followers(&ToClient::Ended {
                epoch: cur.epoch,
                finished: exit.success,
                output: output.clone(),
            });
            if exit.success {
                self.finished = Some((cur.epoch, output));
            }
        }
        for c in self.clients.values_mut() {
            c.following = false;
        }
        self.report(Report::Exited {
            game,
            success: exit.success,
            status: exit.text,
        });
        Ok(())
    }

    fn status_line(&mut self, line: Line) {
        let Some(cur) = &mut self.current else { return };
        let Some((_, launcher)) = &self.launcher else {
            return;
        };
        match line {
            Line::Stats(s) => {
                let synced_before = cur.spare_synced;
                cur.accounted = launcher.accounted(&s);
                cur.spare_synced = s.synced;
                if cur.leads() && synced_before != cur.spare_synced {
                    // The pace of a scripted client hangs on it: say it at once.
                    self.last_beat = Instant::now() - HEARTBEAT;
                    self.heartbeats();
                }
            }
            Line::Resumed(r) => {
                if !matches!(cur.role, Role::Promoting { .. }) {
                    return;
                }
                let position = launcher.resumed_at(&r);
                cur.accepted = position;
                cur.accounted = position;
                cur.role = Role::Primary;
                let (game, epoch) = (cur.game, cur.epoch);
                tracing::info!(epoch, position, "the promoted game runs");
                self.report(Report::Resumed { game, position });
                self.answer_waiting();
            }
        }
    }

    fn silence_line(&mut self, game: u64, v: &serde_json::Value) {
        if let Some(ms) = v.get("silent_ms").and_then(serde_json::Value::as_u64) {
            self.report(Report::Silent { game, ms });
        } else if v.get("heard").is_some() {
            self.report(Report::Heard { game });
        } else if let Some(checkpoint) = v.get("holding").and_then(serde_json::Value::as_u64) {
            let epoch = v
                .get("epoch")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            self.report(Report::Holding {
                game,
                checkpoint,
                epoch,
            });
        }
    }

    /// Gives the game the pending input it takes now; closes its input at the log's end.
    fn flush_input(&mut self) -> anyhow::Result<()> {
        let open = self.relay_open();
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        if !cur.leads() || !open {
            return Ok(());
        }
        if !cur.pending.is_empty() {
            match cur.node.write_input(&cur.pending)? {
                Written::Took(n) => {
                    cur.pending.drain(..n.min(cur.pending.len()));
                }
                Written::Closed => cur.pending.clear(),
            }
        }
        if cur.pending.is_empty() && cur.end_at.is_some_and(|end| end <= cur.accepted) {
            cur.end_at = None;
            cur.node.close_input();
        }
        Ok(())
    }
}

/// The last line of `out` (with its newline), or its unfinished end.
fn last_line(out: &[u8]) -> Vec<u8> {
    let body = out.strip_suffix(b"\n").unwrap_or(out);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    out[start..].to_vec()
}

/// How often a cluster game's idle stream carries a heartbeat: five beats per suspicion
/// window, so that a spare falls silent only when its primary does, not when one beat is late
/// on a busy machine (hslib's default, 100 ms, is two thirds of the default 150 ms window: 50
/// ms of scheduling delay made a healthy primary look silent). Never under 5 ms.
pub(super) fn stream_heartbeat(suspect: Duration) -> Duration {
    (suspect / 5).max(Duration::from_millis(5))
}

#[cfg(test)]
mod tests {
    use super::{last_line, stream_heartbeat};
    use std::time::Duration;

    #[test]
    fn a_cluster_game_beats_five_times_per_suspicion_window() {
        assert_eq!(
            stream_heartbeat(Duration::from_millis(150)),
            Duration::from_millis(30)
        );
        assert_eq!(
            stream_heartbeat(Duration::from_millis(1000)),
            Duration::from_millis(200)
        );
        assert_eq!(
            stream_heartbeat(Duration::from_millis(10)),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn the_last_line_of_the_output_is_the_result_line() {
        assert_eq!(last_line(b"a\n{\"x\":1}\n"), b"{\"x\":1}\n");
        assert_eq!(last_line(b"{\"x\":1}\n"), b"{\"x\":1}\n");
        assert_eq!(last_line(b"a\nbc"), b"bc");
        assert_eq!(last_line(b""), b"");
    }
}
