//! The game loop's orders from the control thread: start a fresh primary, start a spare of
//! a leader's game (with its promote and silence pipes), promote it, kill the game.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::Context as _;
use hotspare_cluster::proto::ToClient;
use hslib::api::ENV_PROMOTE_FD;
use nix::fcntl::OFlag;
use serde_json::json;

use super::game::{Current, GameLoop, LinePipe, Role, STATS_MS};
use super::{GameConfig, Order, Report};
use crate::engine::local::LocalLauncher;
use crate::engine::node::Node as _;
use crate::game::{Io, Setup};
use crate::link::{Link, Transport};
use hotspare_cluster::Epoch;

impl GameLoop {
    pub(super) fn launcher(&mut self, config: &GameConfig) -> anyhow::Result<&mut LocalLauncher> {
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
            self.launcher = Some((config.clone(), LocalLauncher::placed_by_caller(setup, io)));
        }
        match &mut self.launcher {
            Some((_, l)) => Ok(l),
            None => anyhow::bail!("no game launcher"),
        }
    }

    pub(super) fn order(&mut self, order: Order) -> anyhow::Result<()> {
        match order {
            Order::Kill => {
                self.kill_current("ordered");
                Ok(())
            }
            Order::Fence => {
                self.fence_current();
                Ok(())
            }
            Order::Continue { epoch } => {
                self.continue_current(epoch);
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
                    last_line: Instant::now(),
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
                    last_line: Instant::now(),
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
    /// The lease is fenced: a leading game whose spare holds a checkpoint is killed (the
    /// spare takes over); one with no such spare is the game's only copy, so it is stopped
    /// (SIGSTOP, before the lease can expire: nothing of it reaches the spare or the client
    /// from then on) and kept for a later lead. Anything else is killed.
    fn fence_current(&mut self) {
        let keep = self
            .current
            .as_ref()
            .is_some_and(|c| c.leads() && !c.spare_synced);
        if !keep {
            self.kill_current("fenced");
            return;
        }
        let Some(cur) = &mut self.current else { return };
        if let Err(e) = stop_or_continue(cur.node.pid(), nix::sys::signal::Signal::SIGSTOP) {
            tracing::warn!(error = %format!("{e:#}"), "cannot stop the fenced game; killing it");
            self.kill_current("fenced");
            return;
        }
        cur.role = Role::Suspended;
        let (game, epoch) = (cur.game, cur.epoch);
        tracing::warn!(
            epoch,
            "fenced with no spare holding the game: stopped and kept"
        );
        self.events
            .emit("suspended", json!({"epoch":epoch,"pid":cur.node.pid()}));
        for c in self.clients.values_mut() {
            c.following = false;
        }
        self.report(Report::Suspended { game, epoch });
    }

    /// The suspended game leads again, with `epoch`.
    fn continue_current(&mut self, epoch: Epoch) {
        let Some(cur) = &mut self.current else {
            tracing::warn!(epoch, "continue ordered with no game");
            return;
        };
        if !matches!(cur.role, Role::Suspended) {
            tracing::warn!(epoch, "continue ordered for a game not suspended");
            return;
        }
        if let Err(e) = stop_or_continue(cur.node.pid(), nix::sys::signal::Signal::SIGCONT) {
            tracing::warn!(error = %format!("{e:#}"), "cannot continue the suspended game");
            return;
        }
        let from = cur.epoch;
        cur.role = Role::Primary;
        cur.epoch = epoch;
        cur.last_line = Instant::now();
        self.known_epoch = self.known_epoch.max(epoch);
        self.events.emit(
            "continued",
            json!({"epoch":epoch,"from":from,"pid":cur.node.pid()}),
        );
        self.answer_waiting();
    }

    pub(super) fn kill_current(&mut self, why: &str) {
        let Some(mut cur) = self.current.take() else {
            return;
        };
        if let Err(e) = cur.node.kill() {
            tracing::warn!(error = %e, "cannot kill the game");
        }
        let leading = cur.leads();
        self.events.emit(
            "game_ended",
            json!({"epoch":cur.epoch,"role":cur.role.name(),"status":format!("killed: {why}")}),
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
}

/// Sends `sig` (SIGSTOP or SIGCONT) to the game `pid`.
fn stop_or_continue(pid: Option<u32>, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let pid = pid.context("the game has no pid")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("a pid out of range")?);
    nix::sys::signal::kill(pid, sig).with_context(|| format!("cannot send {sig} to game {pid}"))
}
