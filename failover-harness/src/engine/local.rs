//! The engine's games as processes on this machine ([`Game`]): on a pseudo-terminal each
//! (`play`, `bench-failover`: the replay counts terminal bytes) or on pipes (`run`: the
//! replay counts script inputs, and each game writes its own `--stats` file).
//!
//! Every game listens for its spare at an address of its own (`HS_LISTEN_NAME`: a socket
//! named after the game in the session's directory; `HS_LISTEN_ADDR`: a port of its own on
//! 127.0.0.1), and a spare connects to the current primary's. So a promoted game listens at
//! once, never waiting for its dead primary's listening socket to be released, and the spare
//! started after a promotion connects to the promoted game. The current primary is the first
//! game until a spare reports that it took over (its resumed line). A listening or connecting
//! variable the caller put in [`Setup::env`] wins over the launcher's choice.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{LocalFlags, tcgetattr};
use nix::unistd::Pid;

use super::node::{Exit, Launcher, Node, Written};
use crate::game::{Game, Io, Setup};
use crate::link::{self, Transport};
use crate::report::{Line, Resumed, Stats};
use crate::sys;

/// The byte ^C sends on a terminal: a signal to the game (its terminal keeps ISIG).
const CTRL_C: u8 = 0x03;

/// Where a local game listens for its spare.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// A socket of this name in the session's directory.
    Unix(String),
    /// This address on 127.0.0.1.
    Tcp(String),
}

impl Place {
    /// Where the game `name` listens.
    fn of(transport: Transport, name: &str) -> anyhow::Result<Self> {
        Ok(match transport {
            Transport::Unix => Place::Unix(format!("{name}.sock")),
            Transport::Tcp => Place::Tcp(link::free_port()?),
        })
    }

    /// The variable that makes a game listen here.
    fn listen(&self) -> (String, OsString) {
        match self {
            Place::Unix(n) => (hslib::api::ENV_LISTEN_NAME.to_owned(), n.into()),
            Place::Tcp(a) => (hslib::api::ENV_LISTEN_ADDR.to_owned(), a.into()),
        }
    }

    /// The variable that makes a spare connect here.
    fn connect(&self) -> (String, OsString) {
        match self {
            Place::Unix(n) => (hslib::api::ENV_SOCKET_NAME.to_owned(), n.into()),
            Place::Tcp(a) => (hslib::api::ENV_TCP_ADDR.to_owned(), a.into()),
        }
    }
}

/// Where the current primary listens: set by the launch of a primary and by a spare's
/// resumed line, read by the launch of a spare.
type PrimaryPlace = Arc<Mutex<Option<Place>>>;

fn lock(place: &PrimaryPlace) -> std::sync::MutexGuard<'_, Option<Place>> {
    place.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts local game processes on pseudo-terminals or pipes.
#[derive(Debug)]
pub struct LocalLauncher {
    setup: Setup,
    io: Io,
    primary_at: PrimaryPlace,
    /// It gives each game its own listening address and a spare its primary's (else the
    /// caller's [`Setup::env`] says where games listen and connect).
    placing: bool,
}

impl LocalLauncher {
    /// Games for `setup`, each on its own `io`, each listening at an address of its own.
    pub fn new(setup: Setup, io: Io) -> Self {
        Self {
            setup,
            io,
            primary_at: PrimaryPlace::default(),
            placing: true,
        }
    }

    /// Games for `setup` whose addresses the caller sets in [`Setup::env`] (a cluster
    /// agent's game listens and connects at its host's and its leader's addresses).
    pub fn placed_by_caller(setup: Setup, io: Io) -> Self {
        Self {
            placing: false,
            ..Self::new(setup, io)
        }
    }
}

impl LocalLauncher {
    /// [`Launcher::launch`], the game also inheriting the descriptors `inherit` (a cluster
    /// spare's promote and silence pipes).
    pub fn launch_keeping(
        &mut self,
        role: &hslib::Role,
        epoch: u64,
        name: &str,
        inherit: &[std::os::fd::RawFd],
    ) -> anyhow::Result<LocalNode> {
        let (extra, stats_path) = match self.io {
            Io::Pipes => {
                let path = self.setup.link.path(&format!("{name}.stats"));
                let extra = vec![OsString::from("--stats"), path.clone().into_os_string()];
                (extra, Some(path))
            }
            Io::Pty(..) => (Vec::new(), None),
        };
        let place = if self.placing {
            Some(Place::of(self.setup.link.transport(), name)?)
        } else {
            None
        };
        // The placement's variables hold for this launch only: the caller's stay.
        let callers = self.setup.env.len();
        if let Some(place) = &place {
            self.setup.env.push(place.listen());
            match role {
                hslib::Role::Spare => {
                    if let Some(primary) = &*lock(&self.primary_at) {
                        self.setup.env.push(primary.connect());
                    }
                }
                _ => *lock(&self.primary_at) = Some(place.clone()),
            }
        }
        let game = Game::spawn_keeping(&self.setup, role, epoch, self.io, name, &extra, inherit);
        self.setup.env.truncate(callers);
        let game = game?;
        Ok(LocalNode {
            name: name.to_owned(),
            game,
            output_open: true,
            input_open: true,
            in_game_mode: false,
            stats_path,
            place,
            primary_at: Arc::clone(&self.primary_at),
        })
    }

    /// The setup its games share.
    pub fn setup_mut(&mut self) -> &mut Setup {
        &mut self.setup
    }
}

impl Launcher for LocalLauncher {
    type Node = LocalNode;

    fn launch(&mut self, role: &hslib::Role, epoch: u64, name: &str) -> anyhow::Result<LocalNode> {
        self.launch_keeping(role, epoch, name, &[])
    }

    fn resumed_at(&self, resumed: &Resumed) -> u64 {
        match self.io {
            Io::Pipes => resumed.inputs,
            Io::Pty(..) => resumed.tty_bytes.unwrap_or(0),
        }
    }

    fn accounted(&self, stats: &Stats) -> u64 {
        match self.io {
            Io::Pipes => stats.inputs,
            Io::Pty(..) => stats.tty_bytes,
        }
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        if let Io::Pty(..) = self.io {
            self.io = Io::Pty(rows, cols);
        }
    }
}

/// A local game process.
#[derive(Debug)]
pub struct LocalNode {
    name: String,
    game: Game,
    output_open: bool,
    input_open: bool,
    /// On a terminal: the game has switched it to its own mode (no echo) at least once.
    /// Its terminal echoes, as a user's does (so the score prompt shows what is typed), and
    /// keys written before the game took the terminal would be echoed onto the screen: they
    /// wait until it has.
    in_game_mode: bool,
    stats_path: Option<PathBuf>,
    /// Where it listens as primary (none when the caller placed it).
    place: Option<Place>,
    /// Where the session's current primary listens (this one's, once it took over).
    primary_at: PrimaryPlace,
}

impl LocalNode {
    /// The descriptor its input goes to: its terminal, or its stdin pipe.
    fn input(&self) -> Option<BorrowedFd<'_>> {
        if !self.input_open {
            return None;
        }
        self.game
            .pty()
            .or_else(|| self.game.stdin.as_ref().map(AsFd::as_fd))
    }

    /// The descriptor its output comes from: its terminal, or its stdout pipe.
    fn output(&self) -> Option<BorrowedFd<'_>> {
        if !self.output_open {
            return None;
        }
        self.game
            .pty()
            .or_else(|| self.game.stdout.as_ref().map(AsFd::as_fd))
    }
}

impl Node for LocalNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn pid(&self) -> Option<u32> {
        Some(self.game.pid())
    }

    fn write_input(&mut self, bytes: &[u8]) -> anyhow::Result<Written> {
        if !self.in_game_mode
            && let Some(pty) = self.game.pty()
        {
            // A pty master's termios is its slave's.
            match tcgetattr(pty) {
                Ok(t) if !t.local_flags.contains(LocalFlags::ECHO) => self.in_game_mode = true,
                // Its output (the game drawing) wakes the engine to look again.
                Ok(_) => return Ok(Written::Took(0)),
                Err(_) => {}
            }
        }
        let Some(fd) = self.input() else {
            return Ok(Written::Closed);
        };
        let mut done = 0;
        while done < bytes.len() {
            match nix::unistd::write(fd, &bytes[done..]) {
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // The reader is gone (a pipe), or every holder of the terminal's slave.
                Err(Errno::EPIPE | Errno::EIO) if done == 0 => return Ok(Written::Closed),
                Err(Errno::EPIPE | Errno::EIO) => break,
                Err(e) => {
                    return Err(e).with_context(|| format!("writing input to game {}", self.name));
                }
            }
        }
        Ok(Written::Took(done))
    }

    fn close_input(&mut self) {
        // A terminal stays (it is also the game's screen); a pipe's end tells EOF.
        if self.game.pty().is_none() {
            self.game.stdin = None;
            self.input_open = false;
        }
    }

    fn interrupt(&mut self) -> anyhow::Result<()> {
        if let Some(pty) = self.game.pty() {
            return match nix::unistd::write(pty, &[CTRL_C]) {
                Ok(_) | Err(Errno::EAGAIN | Errno::EIO) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("typing ^C to game {}", self.name)),
            };
        }
        let pid = Pid::from_raw(i32::try_from(self.game.pid()).context("a pid out of range")?);
        match kill(pid, Signal::SIGINT) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot interrupt game {pid}")),
        }
    }

    fn read_output(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(fd) = self.output() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                // EIO: every holder of the terminal's slave is gone.
                Ok(0) | Err(Errno::EIO) => {
                    self.output_open = false;
                    return Ok(if out.is_empty() { None } else { Some(out) });
                }
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() >= 64 * 1024 {
                        return Ok(Some(out));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(Some(out)),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading the output of game {}", self.name));
                }
            }
        }
    }

    fn read_status(&mut self) -> anyhow::Result<Vec<Line>> {
        let lines = self
            .game
            .status
            .read_lines()
            .with_context(|| format!("reading the status of game {}", self.name))?;
        if let Some(place) = &self.place
            && lines.iter().any(|l| matches!(l, Line::Resumed(_)))
        {
            // It took over: the next spare connects to it.
            *lock(&self.primary_at) = Some(place.clone());
        }
        Ok(lines)
    }

    fn exited(&mut self) -> anyhow::Result<Option<Exit>> {
        Ok(self.game.exited()?.map(|status| Exit {
            success: status.success(),
            text: status.to_string(),
        }))
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.game.kill()
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        if let Some(pty) = self.game.pty() {
            // A game that has exited has no one to tell.
            let _ = sys::set_window_size(pty, rows, cols);
        }
    }

    fn last_words(&self) -> String {
        self.game.stderr_tail()
    }

    fn final_stats(&self) -> Option<String> {
        std::fs::read_to_string(self.stats_path.as_ref()?).ok()
    }

    fn wait_on(&self, writing: bool) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::with_capacity(4);
        match (self.game.pty(), self.output()) {
            (Some(pty), Some(_)) => {
                let mut flags = PollFlags::POLLIN;
                if writing && self.in_game_mode {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push((pty, flags));
            }
            (Some(_), None) => {}
            (None, out) => {
                if let Some(out) = out {
                    fds.push((out, PollFlags::POLLIN));
                }
                if let Some(input) = self.input().filter(|_| writing) {
                    fds.push((input, PollFlags::POLLOUT));
                }
            }
        }
        // Both stay readable once the game is gone: polled only until that is known.
        if !self.game.status.at_eof() {
            fds.push((self.game.status.fd(), PollFlags::POLLIN));
        }
        if !self.game.has_exited() {
            fds.push((self.game.pidfd(), PollFlags::POLLIN));
        }
        fds
    }
}
