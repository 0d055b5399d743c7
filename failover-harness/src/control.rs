//! Reaching a running `play` session from another terminal: `failover-harness axe` and
//! `failover-harness status`.
//!
//! Each session listens on a Unix socket `session-PID.sock` (PID: the harness's) in a
//! per-user runtime directory, `$XDG_RUNTIME_DIR/hotspare-harness`, else
//! `/tmp/hotspare-harness-UID`, of mode 0700 (a directory with looser permissions or another
//! owner is refused). A client sends one line, `status`, `events` or `axe`, and reads one
//! JSON line: for status
//! `{"primary_pid":N,"spare_pid":N,"epoch":N,"failovers":N,"checkpoints":N,...}` (those five
//! keys first, in that order: a contract; then `spare_deaths`, `last_rto_ms`, `lag`,
//! `stall_last_us`, `stall_p99_us`, `mode`, `transport`), for events `{"events":["..."]}`,
//! and for axe `{"axed":PID}` once the spare has taken over, or `{"error":"..."}`. A socket
//! nobody answers on is a session that died: it is removed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

/// The variable that moves the runtime directory (tests use it).
pub const DIR_ENV: &str = "HOTSPARE_HARNESS_DIR";
/// How long a client waits for a session's answer (an axe may wait for the spare's sync).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the session waits for a client's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How many events a session keeps for `status --events` (the oldest go first; `play
/// --events FILE` keeps them all).
pub const EVENTS_KEPT: usize = 1000;

/// `status --json`'s object; serialised in this order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The primary's pid.
    pub primary_pid: u32,
    /// The spare's pid (0: none).
    pub spare_pid: u32,
    /// The primary's epoch.
    pub epoch: u64,
    /// Failovers so far.
    pub failovers: u64,
    /// The session's checkpoints (a promoted game goes on from the one it restored).
    pub checkpoints: u64,
    /// Spares that ended without taking over while their game went on.
    #[serde(default)]
    pub spare_deaths: u64,
    /// The last failover's recovery time (SIGKILL to the promoted game's first byte).
    #[serde(default)]
    pub last_rto_ms: Option<f64>,
    /// Checkpoints the spare has not acknowledged.
    #[serde(default)]
    pub lag: u64,
    /// The last checkpoint's stall, microseconds.
    #[serde(default)]
    pub stall_last_us: f64,
    /// The 99th percentile stall, microseconds.
    #[serde(default)]
    pub stall_p99_us: f64,
    /// `async` or `sync`.
    #[serde(default)]
    pub mode: String,
    /// `unix` or `tcp`.
    #[serde(default)]
    pub transport: String,
}

impl Status {
    /// The JSON line's text (no newline), keys in the documented order.
    pub fn to_json(&self) -> String {
        // A struct of numbers and strings always serialises.
        serde_json::to_string(self).unwrap_or_else(|e| error_json(&e.to_string()))
    }
}

/// The per-user runtime directory (created 0700 if missing, checked if present).
pub fn runtime_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d).join("hotspare-harness"),
            None => PathBuf::from(format!("/tmp/hotspare-harness-{}", nix::unistd::geteuid())),
        },
    };
    hslib::transport::unix::secure_dir(&dir)
        .with_context(|| format!("the runtime directory {} is not usable", dir.display()))?;
    Ok(dir)
}

/// An axe asked for by a client, with where its answer goes.
#[derive(Debug)]
pub struct AxeRequest {
    /// The answer: the pid axed, or why not.
    pub reply: Sender<Result<u32, String>>,
}

/// The session's end: a socket answered by a thread; axes go to the session's loop.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    status: Arc<Mutex<Status>>,
    events: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Axe requests for the session's loop.
    pub axes: Receiver<AxeRequest>,
    wake: OwnedFd,
}

impl Server {
    /// Listens in `dir` for this process's session.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(format!("session-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let status = Arc::new(Mutex::new(Status::default()));
        let (tx, axes) = mpsc::channel();
        let (wake, wake_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("cannot create the control wake-up pipe")?;
        let events = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let shared = Shared {
            status: Arc::clone(&status),
            events: Arc::clone(&events),
        };
        std::thread::Builder::new()
            .name("control".to_owned())
            .spawn(move || serve(&listener, &shared, &tx, &wake_tx))
            .context("cannot start the control thread")?;
        Ok(Self {
            path,
            status,
            events,
            axes,
            wake,
        })
    }

    /// Readable when an axe request waits; [`Server::drain_wake`] empties it.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Empties the wake-up pipe.
    pub fn drain_wake(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
    }

    /// What `status` answers from now on.
    pub fn set_status(&self, s: Status) {
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = s;
    }

    /// Adds a line to what `status --events` answers.
    pub fn push_event(&self, line: String) {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(line);
    }
}

/// What the control thread reads.
struct Shared {
    status: Arc<Mutex<Status>>,
    events: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, status: &Shared, axes: &Sender<AxeRequest>, wake: &OwnedFd) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else {
            continue;
        };
        if let Err(e) = answer(&mut conn, status, axes, wake) {
            tracing::warn!(error = %e, "a control request failed");
        }
    }
}

fn answer(
    conn: &mut UnixStream,
    shared: &Shared,
    axes: &Sender<AxeRequest>,
    wake: &OwnedFd,
) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_json(),
        "events" => {
            let events = shared
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            serde_json::json!({ "events": *events }).to_string()
        }
        "axe" => {
            let (tx, rx) = mpsc::channel();
            axes.send(AxeRequest { reply: tx })
                .map_err(|_| anyhow::anyhow!("the session is ending"))?;
            let _ = nix::unistd::write(wake, &[1]);
            match rx.recv_timeout(CLIENT_TIMEOUT) {
                Ok(Ok(pid)) => format!("{{\"axed\":{pid}}}"),
                Ok(Err(why)) => error_json(&why),
                Err(_) => error_json("the session did not axe its primary in time"),
            }
        }
        other => error_json(&format!("unknown request {other:?}")),
    };
    conn.write_all(format!("{reply}\n").as_bytes())?;
    Ok(())
}

fn error_json(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

/// The sessions answering in `dir`, by harness pid; sockets nobody answers on are removed.
pub fn sessions(dir: &Path) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("session-")
            .and_then(|s| s.strip_suffix(".sock"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if UnixStream::connect(&path).is_ok() {
            found.push((pid, path));
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    found.sort();
    Ok(found)
}

/// Sends `request` to the one running session (or the one of `pid`) and returns its line.
pub fn ask(request: &str, pid: Option<u32>) -> anyhow::Result<String> {
    let dir = runtime_dir()?;
    let all = sessions(&dir)?;
    let chosen = match (pid, all.as_slice()) {
        (Some(p), _) => all.iter().find(|(q, _)| *q == p).with_context(|| {
            format!(
                "no failover-harness session of pid {p} runs (looked in {})",
                dir.display()
            )
        })?,
        (None, []) => bail!(
            "no failover-harness session is running (looked in {}); start one with \
             `failover-harness play`",
            dir.display()
        ),
        (None, [one]) => one,
        (None, many) => {
            let pids: Vec<String> = many.iter().map(|(p, _)| p.to_string()).collect();
            bail!(
                "{} sessions are running (harness pids {}): choose one with --session PID",
                many.len(),
                pids.join(", ")
            )
        }
    };
    let mut conn = UnixStream::connect(&chosen.1)
        .with_context(|| format!("cannot reach the session at {}", chosen.1.display()))?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .context("the session did not answer")?;
    if line.is_empty() {
        bail!("the session closed the connection without an answer");
    }
    Ok(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_json_has_the_documented_keys_in_order() {
        let s = Status {
            primary_pid: 1,
            spare_pid: 2,
            epoch: 3,
            failovers: 4,
            checkpoints: 5,
            spare_deaths: 6,
            last_rto_ms: Some(1.5),
            lag: 7,
            stall_last_us: 2.25,
            stall_p99_us: 8.0,
            mode: "sync".to_owned(),
            transport: "tcp".to_owned(),
        };
        assert_eq!(
            s.to_json(),
            r#"{"primary_pid":1,"spare_pid":2,"epoch":3,"failovers":4,"checkpoints":5,"spare_deaths":6,"last_rto_ms":1.5,"lag":7,"stall_last_us":2.25,"stall_p99_us":8.0,"mode":"sync","transport":"tcp"}"#
        );
        let none = Status::default().to_json();
        assert!(none.contains(r#""last_rto_ms":null"#), "{none}");
        let back: Status = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }
}
