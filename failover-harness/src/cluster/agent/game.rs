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
use std::io::Write as _;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hotspare_cluster::proto::{self, ToAgent, ToClient};
use hotspare_cluster::{Epoch, NodeInfo};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::json;

use super::control::Msg;
use super::events::Events;
use super::{AgentOptions, GameConfig, Order, Report};
use crate::engine::local::{LocalLauncher, LocalNode};
use crate::engine::node::{Launcher as _, Node as _, Written};
use crate::game::{Io, Setup};
use crate::link::{Link, Transport};
use crate::report::Line;

/// The longest a following client goes without a frame while the game is quiet.
pub const HEARTBEAT: Duration = Duration::from_millis(25);
/// The longest one `poll` waits.
const TICK: Duration = Duration::from_millis(10);
/// The games' stats period: a spare's sync is known within it.
const STATS_MS: u64 = 2;
/// A client's socket may hold up the loop this long before the client is dropped.
const CLIENT_WRITE_DEADLINE: Duration = Duration::from_millis(200);
/// A pty game's size until a client says otherwise.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// hslib's variables of the cluster role (branch `roles`).
const ENV_LISTEN_ADDR: &str = "HS_LISTEN_ADDR";
const ENV_PROMOTE_FD: &str = "HS_PROMOTE_FD";

/// What reaches the game loop.
#[derive(Debug)]
pub enum Inbound {
    /// From the control thread.
    Order(Order),
    /// A client authenticated; the loop writes to it on `stream`.
    Connected {
        /// The connection's number.
        id: u64,
        /// Its write half.
        stream: TcpStream,
    },
    /// A client's frame.
    Frame {
        /// The connection.
        id: u64,
        /// The message.
        msg: ToAgent,
    },
    /// A client's connection ended.
    Gone {
        /// The connection.
        id: u64,
        /// Why.
        why: String,
    },
}

/// Wakes the game loop's `poll` (a non-blocking self-pipe); cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker {
    read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
}

impl Waker {
    /// A new self-pipe.
    pub fn new() -> anyhow::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("cannot create the game loop's wake-up pipe")?;
        Ok(Self {
            read: Arc::new(read),
            write: Arc::new(write),
        })
    }

    /// Wakes the loop (a full pipe already holds a wake-up).
    pub fn wake(&self) {
        let _ = nix::unistd::write(self.write.as_fd(), &[1]);
    }

    fn drain(&self) {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(self.read.as_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

/// The control thread's way to the game loop.
#[derive(Debug)]
pub struct Mailbox {
    tx: Sender<Inbound>,
    waker: Waker,
}

impl Mailbox {
    /// A mailbox sending on `tx` and waking with `waker`.
    pub fn new(tx: Sender<Inbound>, waker: Waker) -> Self {
        Self { tx, waker }
    }

    /// Gives the loop an order.
    pub fn send(&self, order: Order) -> anyhow::Result<()> {
        self.tx
            .send(Inbound::Order(order))
            .map_err(|_| anyhow::anyhow!("the agent's game loop has stopped"))?;
        self.waker.wake();
        Ok(())
    }
}

/// What the current game is to the session.
#[derive(Debug)]
enum Role {
    /// It leads `epoch` (started fresh, or promoted and resumed).
    Primary,
    /// A spare; `promote` is the write end of its order pipe.
    Spare { promote: File },
    /// Promoted, restoring (the resumed line not read yet); the order pipe stays open.
    Promoting { _order: File },
}

/// The running game.
#[derive(Debug)]
struct Current {
    node: LocalNode,
    game: u64,
    role: Role,
    /// The epoch it leads (a spare: its primary's).
    epoch: Epoch,
    /// A spare's silence pipe (its `HS_SILENCE_FD`).
    silence: Option<LinePipe>,
    /// Key-log bytes given to it (or pending): the offset of the next byte.
    accepted: u64,
    /// Accepted bytes the game has not taken yet.
    pending: Vec<u8>,
    /// The key log ends here: the game's input closes once it has everything before.
    end_at: Option<u64>,
    /// Key-log bytes its last checkpoint accounts for (stats lines).
    accounted: u64,
    /// A spare holds a checkpoint of it (stats lines).
    spare_synced: bool,
    /// The end of its output, for `Ended`.
    tail: Vec<u8>,
}

impl Current {
    fn leads(&self) -> bool {
        matches!(self.role, Role::Primary)
    }
}

/// A client connection.
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    /// The epoch its hello named (`None` before the hello).
    epoch: Option<Epoch>,
    /// It was answered `Leading` for the current game: it gets output and heartbeats.
    following: bool,
    /// Its hello waits for a promoted game's resumed line.
    waiting: bool,
}

/// Non-blocking line reader (a spare's silence pipe).
#[derive(Debug)]
struct LinePipe {
    fd: OwnedFd,
    partial: Vec<u8>,
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
    me: NodeInfo,
    session: String,
    exe: Option<std::path::PathBuf>,
    base_env: Vec<(String, OsString)>,
    inbox: Receiver<Inbound>,
    waker: Waker,
    to_control: Sender<Msg>,
    events: Events,
    launcher: Option<(GameConfig, LocalLauncher)>,
    size: (u16, u16),
    current: Option<Current>,
    clients: BTreeMap<u64, Client>,
    /// The highest epoch this node knows of.
    known_epoch: Epoch,
    /// A game this node led that ended on purpose: its epoch and result, for late clients.
    finished: Option<(Epoch, Vec<u8>)>,
    last_beat: Instant,
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
        }
    }

    fn report(&self, r: Report) {
        let _ = self.to_control.send(Msg::Report(r));
    }

    /// Polls the wake-up pipe, the game and a spare's silence pipe, for a tick at most.
    fn wait(&self) -> anyhow::Result<()> {
        let mut fds = vec![PollFd::new(self.waker.read.as_fd(), PollFlags::POLLIN)];
        if let Some(cur) = &self.current {
            let writing = !cur.pending.is_empty();
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
            Inbound::Order(o) => self.order(o),
            Inbound::Connected { id, stream } => {
                // A client that cannot take a frame within the deadline is dropped.
                let _ = stream.set_write_timeout(Some(CLIENT_WRITE_DEADLINE));
                let _ = stream.set_nodelay(true);
                self.clients.insert(
                    id,
                    Client {
                        stream,
                        epoch: None,
                        following: false,
                        waiting: false,
                    },
                );
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

    fn launcher(&mut self, config: &GameConfig) -> anyhow::Result<&mut LocalLauncher> {
        let fresh = !matches!(&self.launcher, Some((c, _)) if c == config);
        if fresh {
            let mut args: Vec<OsString> = config.args.iter().map(OsString::from).collect();
            if config.headless && !config.args.iter().any(|a| a == "--headless") {
                args.insert(0, "--headless".into());
            }
            let link = Link::new(Transport::Tcp)?;
            let mut setup = Setup::new(args, link, hslib::Mode::Async, STATS_MS)?;
            if let Some(exe) = &self.exe {
                setup.exe.clone_from(exe);
            }
            setup.term = Some("xterm");
            let io = if config.headless {
                Io::Pipes
            } else {
                Io::Pty(self.size.0, self.size.1)
            };
            self.launcher = Some((config.clone(), LocalLauncher::new(setup, io)));
        }
        match &mut self.launcher {
            Some((_, l)) => Ok(l),
            None => anyhow::bail!("no game launcher"),
        }
    }

    fn order(&mut self, order: Order) -> anyhow::Result<()> {
        match order {
            Order::Kill => {
                self.kill_current("ordered");
                Ok(())
            }
            Order::StartPrimary {
                game,
                epoch,
                config,
            } => {
                self.kill_current("replaced");
                self.known_epoch = self.known_epoch.max(epoch);
                self.finished = None;
                let mut env = self.base_env.clone();
                env.push((
                    hslib::api::ENV_TCP_ADDR.to_owned(),
                    OsString::from(&self.me.stream_addr),
                ));
                let name = format!("{}-{game}", self.me.name);
                let launcher = self.launcher(&config)?;
                launcher.setup_mut().env = env;
                let node = launcher.launch_keeping(&hslib::Role::Primary, epoch, &name, &[])?;
                self.events.emit(
                    "game_started",
                    json!({"role":"primary","epoch":epoch,"pid":node.pid()}),
                );
                self.current = Some(Current {
                    node,
                    game,
                    role: Role::Primary,
                    epoch,
                    silence: None,
                    accepted: 0,
                    pending: Vec::new(),
                    end_at: None,
                    accounted: 0,
                    spare_synced: false,
                    tail: Vec::new(),
                });
                self.answer_waiting();
                Ok(())
            }
            Order::StartSpare {
                game,
                leader,
                epoch,
                config,
            } => {
                self.kill_current("replaced");
                self.known_epoch = self.known_epoch.max(epoch);
                let (promote_r, promote_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                    .context("cannot create a spare's promote pipe")?;
                let (silence_r, silence_w) =
                    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                        .context("cannot create a spare's silence pipe")?;
                // The game writes its silence lines blocking (they are rare and short).
                nix::fcntl::fcntl(&silence_w, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
                    .context("cannot make the silence pipe's write end blocking")?;
                let mut env = self.base_env.clone();
                env.push((
                    hslib::api::ENV_TCP_ADDR.to_owned(),
                    OsString::from(&leader.stream_addr),
                ));
                env.push((
                    ENV_PROMOTE_FD.to_owned(),
                    OsString::from(promote_r.as_raw_fd().to_string()),
                ));
                env.push((
                    hslib::silence::ENV_SILENCE_FD.to_owned(),
                    OsString::from(silence_w.as_raw_fd().to_string()),
                ));
                let name = format!("{}-{game}", self.me.name);
                let launcher = self.launcher(&config)?;
                launcher.setup_mut().env = env;
                let node = launcher.launch_keeping(
                    &hslib::Role::Spare,
                    epoch.max(1),
                    &name,
                    &[promote_r.as_raw_fd(), silence_w.as_raw_fd()],
                )?;
                // The child's ends are the child's now.
                drop(promote_r);
                drop(silence_w);
                self.events.emit(
                    "game_started",
                    json!({"role":"spare","epoch":epoch,"pid":node.pid(),"primary":leader.name}),
                );
                self.current = Some(Current {
                    node,
                    game,
                    role: Role::Spare {
                        promote: File::from(promote_w),
                    },
                    epoch,
                    silence: Some(LinePipe {
                        fd: silence_r,
                        partial: Vec::new(),
                    }),
                    accepted: 0,
                    pending: Vec::new(),
                    end_at: None,
                    accounted: 0,
                    spare_synced: false,
                    tail: Vec::new(),
                });
                Ok(())
            }
            Order::Promote { epoch } => {
                self.known_epoch = self.known_epoch.max(epoch);
                let Some(cur) = &mut self.current else {
                    tracing::warn!(epoch, "promote ordered with no game");
                    return Ok(());
                };
                let role = std::mem::replace(&mut cur.role, Role::Primary);
                let Role::Spare { mut promote } = role else {
                    cur.role = role;
                    tracing::warn!(epoch, "promote ordered to a game that is no spare");
                    return Ok(());
                };
                if let Err(e) = promote.write_all(format!("promote {epoch}\n").as_bytes()) {
                    // It is dying: its exit is reported as any other.
                    tracing::warn!(error = %e, "cannot order the spare's promotion");
                }
                cur.epoch = epoch;
                cur.role = Role::Promoting { _order: promote };
                cur.silence = None;
                tracing::info!(epoch, "promotion ordered");
                Ok(())
            }
        }
    }

    /// SIGKILLs the current game (if any) and tells following clients it ended.
    fn kill_current(&mut self, why: &str) {
        let Some(mut cur) = self.current.take() else {
            return;
        };
        if let Err(e) = cur.node.kill() {
            tracing::warn!(error = %e, "cannot kill the game");
        }
        let leading = cur.leads();
        self.events.emit(
            "game_ended",
            json!({"epoch":cur.epoch,"status":format!("killed: {why}")}),
        );
        if leading {
            self.broadcast_followers(&ToClient::Ended {
                epoch: cur.epoch,
                finished: false,
                output: Vec::new(),
            });
        }
        for c in self.clients.values_mut() {
            c.following = false;
        }
    }

    fn frame(&mut self, id: u64, msg: ToAgent) {
        match msg {
            ToAgent::Hello { session, epoch } => {
                if session != self.session {
                    tracing::warn!(id, session, "a client of another session");
                    let known = self.known_epoch;
                    self.send_to(id, &ToClient::NotLeading { epoch: known });
                    self.clients.remove(&id);
                    return;
                }
                if let Some(c) = self.clients.get_mut(&id) {
                    c.epoch = Some(epoch);
                    c.waiting = true;
                    c.following = false;
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
            self.clients.remove(&id);
            return;
        }
        let skip = usize::try_from(cur.accepted - offset).unwrap_or(usize::MAX);
        if skip < bytes.len() {
            cur.pending.extend_from_slice(&bytes[skip..]);
            cur.accepted += (bytes.len() - skip) as u64;
        }
    }

    /// Answers the hellos that wait, as far as the game's state allows.
    fn answer_waiting(&mut self) {
        let ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.waiting)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
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
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            self.clients.remove(&id);
        }
    }

    fn broadcast_followers(&mut self, msg: &ToClient) {
        let ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.following)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send_to(id, msg);
        }
        self.last_beat = Instant::now();
    }

    fn heartbeats(&mut self) {
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
        let beat = ToClient::Heartbeat {
            epoch: cur.epoch,
            position: cur.accounted,
            spare_synced: cur.spare_synced,
        };
        self.broadcast_followers(&beat);
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
                self.broadcast_followers(&ToClient::Output { epoch, bytes: out });
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
        // Whatever it wrote before it died.
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
            json!({"epoch":cur.epoch,"status":exit.text,"success":exit.success}),
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
        let Some(cur) = &mut self.current else {
            return Ok(());
        };
        if !cur.leads() {
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

fn signal(pid: Option<u32>, sig: i32) -> anyhow::Result<()> {
    let pid = pid.context("no pid")?;
    let sig = nix::sys::signal::Signal::try_from(sig).with_context(|| format!("signal {sig}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("a pid out of range")?);
    match nix::sys::signal::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot send {sig} to game {pid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::last_line;

    #[test]
    fn the_last_line_of_the_output_is_the_result_line() {
        assert_eq!(last_line(b"a\n{\"x\":1}\n"), b"{\"x\":1}\n");
        assert_eq!(last_line(b"{\"x\":1}\n"), b"{\"x\":1}\n");
        assert_eq!(last_line(b"a\nbc"), b"bc");
        assert_eq!(last_line(b""), b"");
    }
}
