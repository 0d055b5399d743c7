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

/// How many times [`EtcdProcess::start_local`] tries new ports.
pub const PORT_TRIES: usize = 5;

/// The data directory's name under the server's directory.
const DATA_DIR: &str = "etcd-data";

/// The log's name under the server's directory.
const LOG_FILE: &str = "etcd.log";

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
    ///
    /// A port that was free when picked can be taken by another process before etcd binds it
    /// (tests run side by side); etcd then exits saying so, and is started again on new ports,
    /// up to [`PORT_TRIES`] times.
    pub fn start_local(dir: &Path) -> Result<Self, ServerError> {
        Self::start_local_on(dir, free_port)
    }

    /// [`EtcdProcess::start_local`] with the ports drawn from `pick`.
    fn start_local_on(
        dir: &Path,
        mut pick: impl FnMut() -> Result<u16, ServerError>,
    ) -> Result<Self, ServerError> {
        let mut tries = 1;
        loop {
            let (client, peer) = (pick()?, pick()?);
            match Self::start(dir, "127.0.0.1", client, peer, None) {
                Err(ServerError::NotReady { .. }) if tries < PORT_TRIES && lost_a_port(dir) => {
                    // The data directory may hold the first attempt's member (with its peer
                    // URL): the next attempt starts from nothing.
                    let data = dir.join(DATA_DIR);
                    if let Err(source) = std::fs::remove_dir_all(&data)
                        && source.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(ServerError::Spawn {
                            what: format!("removing {}", data.display()),
                            source,
                        });
                    }
                    tries += 1;
                }
                other => return other,
            }
        }
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
        let data = dir.join(DATA_DIR);
        let log = dir.join(LOG_FILE);
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

/// Whether the etcd logging to `dir` exited because a port it was to listen on was taken.
fn lost_a_port(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .is_ok_and(|log| log.contains("address already in use"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port held open for the test, and a directory for its etcd; `None` (the test skips)
    /// when etcd is not installed.
    fn a_taken_port() -> Option<(TcpListener, u16, tempfile::TempDir)> {
        if let Err(why) = available_for_tests() {
            eprintln!("skipped: {why}");
            return None;
        }
        let taken = TcpListener::bind("127.0.0.1:0").expect("binding a port to hold");
        let port = taken.local_addr().expect("its address").port();
        Some((taken, port, tempfile::tempdir().expect("tempdir")))
    }

    #[test]
    fn a_local_etcd_whose_port_is_taken_before_it_binds_starts_on_new_ports() {
        let Some((_taken, taken_port, dir)) = a_taken_port() else {
            return;
        };
        // The first pick is the held port, as if another test had bound it in between.
        let mut first = true;
        let pick = || {
            if std::mem::take(&mut first) {
                Ok(taken_port)
            } else {
                free_port()
            }
        };
        let server =
            EtcdProcess::start_local_on(dir.path(), pick).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(server.url(), format!("http://127.0.0.1:{taken_port}"));
        let client = Client::new(server.url(), Duration::from_secs(2)).expect("a client");
        client
            .put(b"k", b"v", None)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_local_etcd_that_never_finds_a_free_port_says_which_address_was_taken() {
        let Some((_taken, taken_port, dir)) = a_taken_port() else {
            return;
        };
        let mut picks = 0;
        let pick = || {
            picks += 1;
            Ok(taken_port)
        };
        let err = EtcdProcess::start_local_on(dir.path(), pick).expect_err("every port is taken");
        assert_eq!(picks, 2 * PORT_TRIES);
        let text = err.to_string();
        assert!(text.contains("address already in use"), "{text}");
        assert!(text.contains(&taken_port.to_string()), "{text}");
    }
}
