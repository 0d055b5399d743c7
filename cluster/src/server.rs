//! A private etcd server for tests and demos: Debian's `etcd` (3.4) started on loopback (or
//! inside a test host's namespace) with a data directory of its own, and killed when dropped.
//!
//! It runs with `--heartbeat-interval 10 --election-timeout 100`: etcd raises a lease TTL below
//! ceil(1.5 x election timeout) silently, and the cluster mode's 1 s TTL must hold.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::Client;

/// Set to `1` to make a missing `etcd` a test failure instead of a skip (CI sets it).
pub const REQUIRE_ENV: &str = "HOTSPARE_REQUIRE_ETCD";

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No `etcd` executable on the PATH.
    #[error("etcd is not installed (apt-get install etcd-server)")]
    NotInstalled,
    /// Starting it failed.
    #[error("starting etcd ({what}) failed: {source}")]
    Spawn {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It did not answer in time.
    #[error("etcd did not answer on {url} within {waited:?}; its log: {log}")]
    NotReady {
        /// Its client URL.
        url: String,
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Finds `etcd` on the PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// Whether tests that need etcd should run: `Ok(())`, or the reason they skip. Panics (a
/// test failure) when [`REQUIRE_ENV`] is `1` and etcd is missing.
pub fn available_for_tests() -> Result<(), String> {
    if etcd_binary().is_some() {
        return Ok(());
    }
    let why = ServerError::NotInstalled.to_string();
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {why}");
    }
    Err(why)
}

/// How long a new etcd gets to answer.
pub const READY_WAIT: Duration = Duration::from_secs(15);

/// A running single-member etcd.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl EtcdProcess {
    /// Starts etcd on 127.0.0.1 at free ports, its data and log under `dir`.
    pub fn start_local(dir: &Path) -> Result<Self, ServerError> {
        let client = free_port()?;
        let peer = free_port()?;
        Self::start(dir, "127.0.0.1", client, peer, None)
    }

    /// Starts etcd listening on `ip` (client port `client`, peer port `peer`), its data and
    /// log under `dir`; inside network namespace `netns` if given (`ip netns exec`), and then
    /// without waiting for it: the caller waits from inside ([`EtcdProcess::wait_ready`]).
    pub fn start(
        dir: &Path,
        ip: &str,
        client: u16,
        peer: u16,
        netns: Option<&str>,
    ) -> Result<Self, ServerError> {
        let etcd = etcd_binary().ok_or(ServerError::NotInstalled)?;
        let data = dir.join("etcd-data");
        let log = dir.join("etcd.log");
        let url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let log_file = std::fs::File::create(&log).map_err(|source| ServerError::Spawn {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let log_err = log_file.try_clone().map_err(|source| ServerError::Spawn {
            what: format!("opening {}", log.display()),
            source,
        })?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&etcd);
                c
            }
            None => Command::new(&etcd),
        };
        cmd.arg("--name")
            .arg("hs0")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("hs0={peer_url}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd.spawn().map_err(|source| ServerError::Spawn {
            what: format!("{}", etcd.display()),
            source,
        })?;
        let mut server = Self { child, url, log };
        if netns.is_none() {
            server.wait_ready(READY_WAIT)?;
        }
        Ok(server)
    }

    /// Its client URL (`http://IP:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it answers (from the calling thread's network namespace: a server started
    /// in a test host is waited for from inside that host, see `netns::Rig::in_host`).
    pub fn wait_ready(&mut self, wait: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        let not_ready = |s: &Self| ServerError::NotReady {
            url: s.url.clone(),
            waited: wait,
            log: tail(&s.log),
        };
        let client =
            Client::new(&self.url, Duration::from_millis(500)).map_err(|_| not_ready(self))?;
        while start.elapsed() < wait {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Err(not_ready(self));
            }
            if client.get(b"/").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(not_ready(self))
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        // Already gone is fine: either way it is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, ServerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| ServerError::Spawn {
        what: "finding a free port".to_owned(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| ServerError::Spawn {
            what: "finding a free port".to_owned(),
            source,
        })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
