//! The client on the user's terminal, with `play`'s pieces: raw mode restored on every exit
//! path ([`RawTerminal`]: drop, panic hook), the game's screen passed through and tracked
//! ([`vt::Tracker`]), and the status row ([`statusrow::draw_text`]) on the last line. Keys: the
//! axe key (^X) asks the leader's agent to SIGKILL its game; with `--axe-host-fd N` the
//! host-axe key (^B) writes the leader's node name and `\n` to fd N (`play --hosts` axes
//! that host); ^C is sent to the game as SIGINT; ^Z is dropped (the game would stop itself on
//! its host, with nobody there to continue it); everything else is the game's, logged.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::sync::mpsc::Sender;

use anyhow::{Context as _, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use super::link::Msg;
use crate::play::{MIN_COLS, MIN_ROWS};
use crate::statusrow::{self, AXE_KEY};
use crate::term::RawTerminal;
use crate::{sys, vt};

/// The key that axes the leader's whole host (with `--axe-host-fd`): Ctrl-B.
pub const HOST_AXE_KEY: u8 = 0x02;
/// The byte ^C sends.
const CTRL_C: u8 = 0x03;
/// The byte ^Z sends: not passed on (the game, on another host, would stop itself there with
/// nobody to continue it).
const CTRL_Z: u8 = 0x1a;
/// Enters the alternate screen and clears it.
const ENTER_ALT_SCREEN: &[u8] = b"\x1b[?1049h\x1b[H\x1b[2J";

/// What the user's keys ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Keys for the game (logged).
    Keys(Vec<u8>),
    /// The axe key.
    Axe,
    /// ^C.
    Interrupt,
    /// The host-axe key (only with `--axe-host-fd`).
    AxeHost,
}

/// The user's terminal while the client holds it.
pub struct Terminal {
    term: RawTerminal,
    tracker: vt::Tracker,
    rows: u16,
    cols: u16,
    row_dirty: bool,
    shown: Option<String>,
    axe_host: Option<File>,
}

impl Terminal {
    /// Takes the terminal (raw mode) and starts the threads that pass its keys and the
    /// signals (window size, hang-up, termination) to the client's loop.
    pub fn enter(tx: Sender<Msg>, axe_host_fd: Option<i32>) -> anyhow::Result<Self> {
        // The descriptor is reopened through /proc: a File of our own, no unsafe adoption.
        let axe_host = match axe_host_fd {
            Some(fd) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                    .with_context(|| format!("--axe-host-fd {fd} cannot be written"))?,
            ),
            None => None,
        };
        let signals = sys::signal_pipe(&[
            Signal::SIGWINCH,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGQUIT,
        ])
        .context("cannot route signals")?;
        let mut term = RawTerminal::enter()?;
        let (rows, cols) = term.size()?;
        if rows < MIN_ROWS || cols < MIN_COLS {
            term.restore();
            bail!(
                "the terminal is {cols}x{rows}: the client needs at least {MIN_COLS}x{MIN_ROWS} \
                 (the game's 40x23 and a status row)"
            );
        }
        let keys_tx = tx.clone();
        std::thread::Builder::new()
            .name("hs-client-keys".to_owned())
            .spawn(move || {
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 1024];
                loop {
                    match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if keys_tx.send(Msg::Stdin(buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = keys_tx.send(Msg::StdinClosed);
            })
            .context("cannot start the keys' thread")?;
        std::thread::Builder::new()
            .name("hs-client-signals".to_owned())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::NONE).is_err() {
                        continue;
                    }
                    let n = nix::unistd::read(&signals, &mut buf).unwrap_or(0);
                    for &s in &buf[..n] {
                        if tx.send(Msg::Signal(s)).is_err() {
                            return;
                        }
                    }
                }
            })
            .context("cannot start the signals' thread")?;
        Ok(Self {
            term,
            tracker: vt::Tracker::new(),
            rows,
            cols,
            row_dirty: true,
            shown: None,
            axe_host,
        })
    }

    /// The game's screen size: the terminal less the status row.
    pub fn game_size(&self) -> (u16, u16) {
        (self.rows.saturating_sub(1).max(1), self.cols)
    }

    /// A signal: true for a window size change (the game is told), false for one that ends
    /// the client.
    pub fn on_signal(&mut self, signal: u8) -> anyhow::Result<bool> {
        if i32::from(signal) != Signal::SIGWINCH as i32 {
            return Ok(false);
        }
        (self.rows, self.cols) = self.term.size()?;
        self.row_dirty = true;
        Ok(true)
    }

    fn write(bytes: &[u8]) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .context("cannot write to the terminal")
    }

    /// The leader's game drew `bytes`.
    pub fn forward(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Self::write(bytes)?;
        self.tracker.feed(bytes);
        self.term.note_alt_screen(self.tracker.alt_screen());
        self.row_dirty = true;
        Ok(())
    }

    /// Another game takes the screen: the dead one's last frame may stop mid-sequence. A game
    /// reached after it started drew its first screen (and entered the alternate screen) for
    /// nobody: the client enters the alternate screen itself and asks the game for a full
    /// redraw (the key the game's ^L is, a key like any other in the log).
    pub fn new_game(&mut self) -> anyhow::Result<Vec<u8>> {
        Self::write(self.tracker.cut())?;
        if !self.tracker.alt_screen() {
            self.forward(ENTER_ALT_SCREEN)?;
        }
        self.row_dirty = true;
        Ok(vec![tetris::rules::CTRL_L])
    }

    /// Draws the status row when the game's screen is up, between sequences, and the row may
    /// have changed.
    pub fn status(&mut self, row: &str) -> anyhow::Result<()> {
        let changed = self.shown.as_deref() != Some(row);
        if !(self.tracker.alt_screen() && self.tracker.at_boundary() && (self.row_dirty || changed))
        {
            return Ok(());
        }
        let mut line = row.to_owned();
        if self.axe_host.is_some() {
            line = line.replacen("axe|", "axe|^B axe host|", 1);
        }
        Self::write(&statusrow::draw_text(
            &format!(" {line}"),
            self.rows,
            self.cols,
        ))?;
        self.row_dirty = false;
        self.shown = Some(row.to_owned());
        Ok(())
    }

    /// The user's keys, split into the game's and the client's.
    pub fn keys(&mut self, bytes: &[u8]) -> Vec<Action> {
        let host_axe = self.axe_host.is_some();
        let special =
            |b: u8| b == AXE_KEY || b == CTRL_C || b == CTRL_Z || (host_axe && b == HOST_AXE_KEY);
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|&b| special(b)) {
            let (keys, last) = match chunk.split_last() {
                Some((&b, rest)) if special(b) => (rest, Some(b)),
                _ => (chunk, None),
            };
            if !keys.is_empty() {
                out.push(Action::Keys(keys.to_vec()));
            }
            match last {
                Some(AXE_KEY) => out.push(Action::Axe),
                Some(CTRL_C) => out.push(Action::Interrupt),
                Some(HOST_AXE_KEY) => out.push(Action::AxeHost),
                Some(CTRL_Z) => tracing::info!("^Z: not passed on to a game on another host"),
                _ => {}
            }
        }
        out
    }

    /// Asks whoever holds `--axe-host-fd` to axe `node`'s host; false if it cannot be asked.
    pub fn axe_host(&mut self, node: &str) -> bool {
        let Some(file) = &mut self.axe_host else {
            return false;
        };
        if let Err(e) = file.write_all(format!("{node}\n").as_bytes()) {
            tracing::warn!(error = %e, "cannot write to --axe-host-fd: the host axe is off");
            self.axe_host = None;
            return false;
        }
        true
    }

    /// Gives the terminal back.
    pub fn restore(&mut self) {
        self.term.note_alt_screen(self.tracker.alt_screen());
        self.term.restore();
    }
}
