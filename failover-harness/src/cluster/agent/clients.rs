//! The game loop's clients: hellos answered `Leading` or `NotLeading` (a promoted game's
//! answer waits for its resumed line), key-log bytes given to the game once and in order,
//! output and heartbeats to the clients that follow the game, the axe, resizes and signals.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use hotspare_cluster::Epoch;
use hotspare_cluster::proto::{self, ToAgent, ToClient};
use nix::errno::Errno;
use serde_json::json;

use super::events::monotonic_us;
use super::game::{GAME_SILENT, GameLoop, Role};
use super::relay::grace_us;
use crate::engine::node::{Launcher as _, Node as _};
use anyhow::Context as _;

/// How often a following client gets a heartbeat (a stamp to echo: see [`super::relay`]).
pub const HEARTBEAT: Duration = Duration::from_millis(25);
/// A client's socket may hold up the loop this long before the client is dropped.
pub const CLIENT_WRITE_DEADLINE: Duration = Duration::from_millis(200);

/// A client connection.
#[derive(Debug)]
pub struct Client {
    /// Its write half.
    pub stream: TcpStream,
    /// The epoch its hello named (`None` before the hello).
    pub epoch: Option<Epoch>,
    /// It was answered `Leading` for the current game: it gets output and heartbeats.
    pub following: bool,
    /// Its hello waits for a promoted game's resumed line.
    pub waiting: bool,
    /// The stamp of the freshest heartbeat it echoed.
    pub echoed: Option<u64>,
    /// Its grace (microseconds): the relay serves it this long after an echoed stamp.
    pub grace_us: u64,
}

impl Client {
    /// A connection that has not said hello yet.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            epoch: None,
            following: false,
            waiting: false,
            echoed: None,
            grace_us: 0,
        }
    }
}

impl GameLoop {
    /// Closes client `id`'s connection (both halves: its reader thread holds the other) and
    /// forgets it.
    fn drop_client(&mut self, id: u64) {
        if let Some(c) = self.clients.remove(&id) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The ids of the clients `pick` chooses.
    fn client_ids(&self, pick: impl Fn(&Client) -> bool) -> Vec<u64> {
        self.clients
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drops every following client (they come back with a hello).
    pub(super) fn drop_followers(&mut self) {
        for id in self.client_ids(|c| c.following) {
            self.drop_client(id);
        }
    }

    pub(super) fn frame(&mut self, id: u64, msg: ToAgent) {
        match msg {
            ToAgent::Echo { stamp } => {
                // A stamp from the future is not one of ours: ignored.
                if stamp <= monotonic_us()
                    && let Some(c) = self.clients.get_mut(&id)
                {
                    c.echoed = c.echoed.max(Some(stamp));
                }
            }
            ToAgent::Hello {
                session,
                epoch,
                suspect_ms,
            } => {
                if session != self.session {
                    tracing::warn!(id, session, "a client of another session");
                    let known = self.known_epoch;
                    self.send_to(id, &ToClient::NotLeading { epoch: known });
                    self.drop_client(id);
                    return;
                }
                if let Some(c) = self.clients.get_mut(&id) {
                    c.epoch = Some(epoch);
                    c.waiting = true;
                    c.following = false;
                    c.grace_us = grace_us(suspect_ms);
                }
                self.answer_waiting();
            }
            ToAgent::Keys { offset, bytes } => self.keys(id, offset, &bytes),
            ToAgent::EndInput { offset } => {
                if self.is_following(id)
                    && let Some(cur) = &mut self.current
                {
                    cur.end_at = Some(offset);
                }
            }
            ToAgent::Resize { rows, cols } => {
                self.size = (rows, cols);
                if let Some((_, l)) = &mut self.launcher {
                    l.resize(rows, cols);
                }
                if let Some(cur) = &mut self.current {
                    cur.node.resize(rows, cols);
                }
            }
            ToAgent::Axe => {
                if let Some(cur) = &mut self.current {
                    tracing::info!(pid = cur.node.pid(), "axe from a client");
                    self.events
                        .emit("axed", json!({"epoch":cur.epoch,"pid":cur.node.pid()}));
                    if let Err(e) = cur.node.kill() {
                        tracing::warn!(error = %e, "cannot axe the game");
                    }
                }
            }
            ToAgent::Signal(sig) => {
                if let Some(cur) = &mut self.current {
                    let r = if sig == libc::SIGINT {
                        cur.node.interrupt()
                    } else {
                        signal(cur.node.pid(), sig)
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, sig, "cannot signal the game");
                    }
                }
            }
        }
    }

    fn is_following(&self, id: u64) -> bool {
        self.clients.get(&id).is_some_and(|c| c.following)
    }

    /// Key-log bytes from client `id`: each byte once, in order; a gap closes the connection.
    fn keys(&mut self, id: u64, offset: u64, bytes: &[u8]) {
        if !self.is_following(id) {
            return;
        }
        let Some(cur) = &mut self.current else { return };
        if !cur.leads() {
            return;
        }
        if offset > cur.accepted {
            tracing::warn!(
                id,
                offset,
                accepted = cur.accepted,
                "a client's keys leave a gap; closing it"
            );
            self.drop_client(id);
            return;
        }
        let skip = usize::try_from(cur.accepted - offset).unwrap_or(usize::MAX);
        if skip < bytes.len() {
            cur.pending.extend_from_slice(&bytes[skip..]);
            cur.accepted += (bytes.len() - skip) as u64;
        }
    }

    /// Answers the hellos that wait, as far as the game's state allows.
    pub(super) fn answer_waiting(&mut self) {
        for id in self.client_ids(|c| c.waiting) {
            let Some(their) = self.clients.get(&id).and_then(|c| c.epoch) else {
                continue;
            };
            let answer = match (&self.current, &self.finished) {
                (Some(cur), _) if cur.leads() && cur.epoch >= their => Some(vec![
                    ToClient::Leading {
                        epoch: cur.epoch,
                        node: self.me.name.clone(),
                        position: cur.accepted,
                    },
                    ToClient::Heartbeat {
                        epoch: cur.epoch,
                        stamp: monotonic_us(),
                        position: cur.accounted,
                        spare_synced: cur.spare_synced,
                    },
                ]),
                // Restoring: the answer waits for the resumed line.
                (Some(cur), _)
                    if matches!(cur.role, Role::Promoting { .. }) && cur.epoch >= their =>
                {
                    None
                }
                (None, Some((epoch, output))) if *epoch >= their => Some(vec![
                    ToClient::Leading {
                        epoch: *epoch,
                        node: self.me.name.clone(),
                        position: 0,
                    },
                    ToClient::Ended {
                        epoch: *epoch,
                        finished: true,
                        output: output.clone(),
                    },
                ]),
                _ => Some(vec![ToClient::NotLeading {
                    epoch: self.known_epoch.max(their),
                }]),
            };
            let Some(frames) = answer else { continue };
            let following =
                matches!(frames.first(), Some(ToClient::Leading { .. })) && self.current.is_some();
            if let Some(c) = self.clients.get_mut(&id) {
                c.waiting = false;
                c.following = following;
            }
            for f in &frames {
                self.send_to(id, f);
            }
        }
    }

    fn send_to(&mut self, id: u64, msg: &ToClient) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if let Err(e) = proto::write_frame(&mut c.stream, msg) {
            tracing::debug!(id, error = %e, "a client cannot be written to; dropped");
            self.drop_client(id);
        }
    }

    pub(super) fn broadcast_followers(&mut self, msg: &ToClient) {
        for id in self.client_ids(|c| c.following) {
            self.send_to(id, msg);
        }
    }

    pub(super) fn heartbeats(&mut self) {
        if self.last_beat.elapsed() < HEARTBEAT {
            return;
        }
        let Some(cur) = &self.current else {
            self.last_beat = Instant::now();
            return;
        };
        if !cur.leads() {
            self.last_beat = Instant::now();
            return;
        }
        if cur.last_line.elapsed() > GAME_SILENT {
            // A stopped or hung game: the agent must not speak for it.
            return;
        }
        self.last_beat = Instant::now();
        let beat = ToClient::Heartbeat {
            epoch: cur.epoch,
            stamp: monotonic_us(),
            position: cur.accounted,
            spare_synced: cur.spare_synced,
        };
        self.broadcast_followers(&beat);
    }
}

fn signal(pid: Option<u32>, sig: i32) -> anyhow::Result<()> {
    let pid = pid.context("no pid")?;
    let sig = nix::sys::signal::Signal::try_from(sig).with_context(|| format!("signal {sig}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("a pid out of range")?);
    match nix::sys::signal::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot send {sig} to game {pid}")),
    }
}
