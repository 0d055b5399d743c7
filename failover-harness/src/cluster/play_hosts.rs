//! `failover-harness play --hosts` (root): the paper's demo, literally. It builds the
//! namespace rig on this machine ([`HostsRig`]: etcd, two or three agent hosts, a client
//! host) and runs `failover-harness client` in the client host on the user's terminal (stdio
//! inherited through `ip netns exec`). The status row, the keys and the axe of the primary's
//! game are the client's; its host-axe key writes the primary's node name to
//! `--axe-host-fd`, a pipe back to this process, which axes that host (cut off, then every
//! process in it killed), and after a moment heals the network and starts the host's agent
//! again, so the game can go on and be axed again. The rig is torn down however the session
//! ends (the client quits or fails, ^C, SIGTERM or SIGHUP to this process, an error).

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::fd::AsRawFd as _;
use std::process::{Child, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use crate::cluster::hosts::{HostsOptions, HostsRig};
use crate::sys;

/// What `play --hosts` was asked for.
#[derive(Clone, Debug)]
pub struct PlayHostsOptions {
    /// The rig.
    pub hosts: HostsOptions,
    /// The game's tetris options (`--seed`, `-l`, `-k`, `-p`, `-b`...), given to the client.
    pub tetris_args: Vec<OsString>,
    /// How long an axed host stays down before the network is healed and its agent restarts.
    pub down_for: Duration,
}

/// How long the client gets to put the terminal back after SIGTERM.
const TERM_WAIT: Duration = Duration::from_secs(2);

/// Plays; the client's exit status is the session's.
pub fn play_hosts(opts: &PlayHostsOptions) -> anyhow::Result<ExitCode> {
    let signals = sys::signal_pipe(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])
        .context("catching ^C, SIGTERM and SIGHUP for the teardown")?;
    let mut rig = HostsRig::new(opts.hosts.clone())?;
    rig.start_session()?;
    let (axe_read, axe_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("making the host-axe pipe")?;
    let mut args = opts.tetris_args.clone();
    args.extend([
        "--axe-host-fd".into(),
        axe_write.as_raw_fd().to_string().into(),
    ]);
    let (mut cmd, _events) = rig.client_command(&args)?;
    // Only the client keeps the write end; it dies with this process.
    sys::prepare_child(&mut cmd, vec![axe_write.as_raw_fd()], false);
    let child = cmd
        .spawn()
        .context("starting the client in the client host")?;
    drop(axe_write);
    let mut client = ClientGuard(Some(child));
    let (tx, rx) = mpsc::channel::<String>();
    let mut reader = BufReader::new(std::fs::File::from(axe_read));
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut signals = std::fs::File::from(signals);
    let mut down: Vec<(String, Instant)> = Vec::new();
    loop {
        if let Some(status) = client.try_wait()? {
            tracing::info!(%status, "the client ended");
            return Ok(exit_code(status));
        }
        let mut byte = [0u8; 16];
        if signals.read(&mut byte).is_ok_and(|n| n > 0) {
            tracing::info!("signalled: ending the session");
            client.end();
            return Ok(ExitCode::FAILURE);
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(node) => {
                if rig.agents().iter().any(|a| a.name == node) {
                    match rig.axe(&node) {
                        Ok(_) => down.push((node, Instant::now())),
                        Err(e) => tracing::warn!(node, error = %e, "axing a host"),
                    }
                } else {
                    tracing::warn!(node, "the client asked to axe a host the rig has not");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if down.iter().any(|(_, at)| at.elapsed() >= opts.down_for) {
            down.retain(|(_, at)| at.elapsed() < opts.down_for);
            if let Err(e) = rig.heal().and_then(|_| rig.restart_dead()) {
                tracing::warn!(error = %e, "healing and restarting the axed host");
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// The client, ended (SIGTERM, then SIGKILL) if the session ends before it does.
struct ClientGuard(Option<Child>);

impl ClientGuard {
    fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(c) = &mut self.0 else {
            return Ok(None);
        };
        let status = c.try_wait().context("waiting for the client")?;
        if status.is_some() {
            self.0 = None;
        }
        Ok(status)
    }

    /// SIGTERM (it puts the terminal back), then SIGKILL after [`TERM_WAIT`].
    fn end(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < TERM_WAIT {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.end();
    }
}
