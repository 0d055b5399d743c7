//! One game process: the harness's own executable re-run as `failover-harness game -- ARGS`
//! (which is `tetris ARGS`) in the role, epoch and mode the session asks for, with a status
//! pipe (`TETRIS_STATUS_FD`), a pidfd to see it exit, and either pipes for a headless game or
//! a pseudo-terminal of its own for a game on a screen.
//!
//! Dropping a [`Game`] SIGKILLs the process if it still runs, and reaps it.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use anyhow::Context as _;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::openpty;
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{
    InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr,
};
use nix::unistd::Pid;

use hslib::api::{ENV_EPOCH, ENV_MODE, ENV_ROLE, ENV_STRATEGY};
use hslib::track::ENV_OVERRIDE as ENV_TRACKER;
use hslib::{Mode, Role};

use crate::link::Link;
use crate::report::StatusPipe;
use crate::sys;

/// The `HS_ROLE` value for a game started as `role` (the harness starts primaries and spares).
fn role_value(role: &Role) -> anyhow::Result<&'static str> {
    match role {
        Role::Primary => Ok("primary"),
        Role::Spare => Ok("spare"),
        other => anyhow::bail!("the harness starts primaries and spares, not {other:?}"),
    }
}

/// The `HS_MODE` value for `mode`.
pub fn mode_value(mode: Mode) -> &'static str {
    mode.name()
}

/// Everything the games of one session share.
#[derive(Debug)]
pub struct Setup {
    /// The executable to run as the game (the harness itself).
    pub exe: PathBuf,
    /// `tetris` arguments.
    pub args: Vec<OsString>,
    /// How primary and spare reach each other.
    pub link: Link,
    /// async or sync checkpoints.
    pub mode: Mode,
    /// How often the games write stats lines, milliseconds.
    pub stats_ms: u64,
    /// The games' `TERM`, where no user's terminal is involved (else the caller's).
    pub term: Option<&'static str>,
    /// More variables for the games, set last: a cluster agent's `HS_*` addresses, keys and
    /// descriptors, or (for the one launch) the listening address a local launcher gives each
    /// game and its primary's for a spare.
    pub env: Vec<(String, OsString)>,
}

impl Setup {
    /// A setup running this executable as the game.
    pub fn new(args: Vec<OsString>, link: Link, mode: Mode, stats_ms: u64) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the harness's own executable")?;
        Ok(Self {
            exe,
            args,
            link,
            mode,
            stats_ms,
            term: None,
            env: Vec::new(),
        })
    }
}

/// How a game talks to the harness besides its status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Headless: stdin and stdout are pipes, stderr goes to a file in the session directory.
    Pipes,
    /// On a pseudo-terminal of this size (rows, columns): stdin, stdout and stderr.
    Pty(u16, u16),
}

/// A running (or exited, not yet dropped) game process.
#[derive(Debug)]
pub struct Game {
    child: Child,
    pidfd: OwnedFd,
    /// Its status pipe.
    pub status: StatusPipe,
    /// Headless: its stdin (`None` once closed).
    pub stdin: Option<ChildStdin>,
    /// Headless: its stdout.
    pub stdout: Option<ChildStdout>,
    pty: Option<OwnedFd>,
    /// Where its stderr goes (headless).
    pub stderr_path: Option<PathBuf>,
    exit: Option<ExitStatus>,
}

impl Game {
    /// Starts a game as `role` with epoch `epoch`; `name` tells its files apart.
    /// `extra` goes after the setup's `tetris` arguments.
    pub fn spawn(
        setup: &Setup,
        role: &Role,
        epoch: u64,
        io: Io,
        name: &str,
        extra: &[OsString],
    ) -> anyhow::Result<Game> {
        Self::spawn_keeping(setup, role, epoch, io, name, extra, &[])
    }

    /// [`Game::spawn`], the child also inheriting the (close-on-exec here) descriptors
    /// `inherit` under their own numbers (a cluster spare's promote and silence pipes).
    pub fn spawn_keeping(
        setup: &Setup,
        role: &Role,
        epoch: u64,
        io: Io,
        name: &str,
        extra: &[OsString],
        inherit: &[RawFd],
    ) -> anyhow::Result<Game> {
        let (status_read, status_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("cannot create a status pipe")?;
        // The game writes blocking: a full pipe only holds up its stats thread.
        fcntl(&status_write, FcntlArg::F_SETFL(OFlag::empty()))
            .context("cannot make the status pipe's write end blocking")?;
        let mut cmd = Command::new(&setup.exe);
        cmd.arg("game").arg("--").args(&setup.args).args(extra);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            // The harness says who is who; only the tuning knobs pass through.
            if k.starts_with("HS_") && k != ENV_STRATEGY && k != ENV_TRACKER {
                cmd.env_remove(&*k);
            }
        }
        cmd.env_remove(tetris::status::STATS_MS_ENV);
        if let Some(term) = setup.term {
            cmd.env("TERM", term);
        }
        setup.link.apply(&mut cmd);
        cmd.env(ENV_ROLE, role_value(role)?)
            .env(ENV_EPOCH, epoch.to_string())
            .env(ENV_MODE, mode_value(setup.mode))
            .env(
                tetris::status::STATUS_FD_ENV,
                status_write.as_raw_fd().to_string(),
            )
            .env(tetris::status::STATS_MS_ENV, setup.stats_ms.to_string());
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let mut keep = vec![status_write.as_raw_fd()];
        keep.extend_from_slice(inherit);
        let mut stderr_path = None;
        let mut pty = None;
        match io {
            Io::Pipes => {
                let path = setup.link.path(&format!("{name}.stderr"));
                let err = File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
                stderr_path = Some(path);
                sys::prepare_child(&mut cmd, keep, false);
            }
            Io::Pty(rows, cols) => {
                let (master, slave) = open_pty(rows, cols)?;
                cmd.stdin(Stdio::from(
                    slave.try_clone().context("cannot dup the pty slave")?,
                ))
                .stdout(Stdio::from(
                    slave.try_clone().context("cannot dup the pty slave")?,
                ))
                .stderr(Stdio::from(slave));
                sys::prepare_child(&mut cmd, keep, true);
                pty = Some(master);
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} as a game", setup.exe.display()))?;
        // Our copies of the child's ends go now, so EOF means the child is gone.
        drop(cmd);
        drop(status_write);
        let pidfd = match sys::pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("pidfd_open on a game failed");
            }
        };
        let stdin = child.stdin.take();
        if let Some(s) = &stdin {
            non_blocking(s).context("cannot make a game's stdin non-blocking")?;
        }
        let stdout = child.stdout.take();
        if let Some(s) = &stdout {
            non_blocking(s).context("cannot make a game's stdout non-blocking")?;
        }
        tracing::info!(pid = child.id(), ?role, epoch, name, "game started");
        Ok(Game {
            stdout,
            stdin,
            child,
            pidfd,
            status: StatusPipe::new(status_read),
            pty,
            stderr_path,
            exit: None,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Readable once it has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Its pseudo-terminal's master, for a game on a screen.
    pub fn pty(&self) -> Option<BorrowedFd<'_>> {
        self.pty.as_ref().map(AsFd::as_fd)
    }

    /// SIGKILLs it (nothing if it has already exited).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.exited()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("a pid out of range")?);
        match kill(pid, Signal::SIGKILL) {
            // Exited (a zombie still takes signals; ESRCH cannot happen before the reap).
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot SIGKILL game {pid}")),
        }
    }

    /// Its exit status if it has exited (reaping it), without waiting.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("cannot check game {}", self.child.id()))?;
        }
        Ok(self.exit)
    }

    /// True once its exit has been seen.
    pub fn has_exited(&self) -> bool {
        self.exit.is_some()
    }

    /// The last lines of its stderr file, for error messages.
    pub fn stderr_tail(&self) -> String {
        let Some(path) = &self.stderr_path else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Game {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn non_blocking(fd: &impl AsFd) -> nix::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map(drop)
}

/// A pseudo-terminal for a game: non-blocking master; a slave with no echo, no canonical
/// mode and no flow control, and only ^C as a signal key, so every other byte the harness
/// types reaches the game's reads one for one (the game's count of terminal bytes and the
/// harness's key log stay aligned).
fn open_pty(rows: u16, cols: u16) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pair = openpty(&size, None).context("openpty failed")?;
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .context("FD_CLOEXEC on a pty")?;
    }
    let flags = fcntl(&pair.master, FcntlArg::F_GETFL).context("F_GETFL on a pty master")?;
    fcntl(
        &pair.master,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .context("cannot make a pty master non-blocking")?;
    let mut t = tcgetattr(&pair.slave).context("tcgetattr on a pty slave")?;
    // Echo stays on, as on a user's terminal: the game turns it off for play and back on
    // for its score prompt (the engine gives a game no keys before it took its terminal).
    t.local_flags &= !LocalFlags::ICANON;
    t.input_flags &= !(InputFlags::IXON | InputFlags::IXOFF);
    for c in [
        SpecialCharacterIndices::VQUIT,
        SpecialCharacterIndices::VSUSP,
    ] {
        t.control_chars[c as usize] = 0;
    }
    tcsetattr(&pair.slave, SetArg::TCSANOW, &t).context("tcsetattr on a pty slave")?;
    Ok((pair.master, pair.slave))
}
