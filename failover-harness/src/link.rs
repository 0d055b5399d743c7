//! How a session's games reach each other: a Unix socket in a private directory (0700), or
//! TCP on 127.0.0.1 with a fresh random key (the transport authenticates both ends with it);
//! and the session's private working directory, which also holds the games' error output and
//! stats files.
//!
//! The directory is removed when the session ends, however it ends but by SIGKILL; for that
//! case it holds `harness.pid` (the harness's pid and start time), and the next session
//! removes the directories of harnesses that are gone.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use hslib::api::{ENV_SOCKET_DIR, ENV_SOCKET_NAME, ENV_TCP_ADDR, ENV_TRANSPORT};
use hslib::transport::tcp::KEY_ENV;
use tempfile::TempDir;

/// The transport between primary and spare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A Unix stream socket in a private directory.
    Unix,
    /// TCP on 127.0.0.1, mutually authenticated with a random key.
    Tcp,
}

/// The socket's name in the private directory.
const SOCKET_NAME: &str = "game";

/// A session's private directory (mode 0700, removed when dropped) and the `HS_*` variables
/// that point its games at each other.
#[derive(Debug)]
pub struct Link {
    dir: TempDir,
    vars: Vec<(&'static str, OsString)>,
    transport: Transport,
}

impl Link {
    /// A new private directory and, for TCP, a free port on 127.0.0.1 and a random key.
    pub fn new(transport: Transport) -> anyhow::Result<Self> {
        sweep_stale(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("cannot create the session's private directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.path().display()))?;
        let owner = dir.path().join(OWNER_FILE);
        std::fs::write(
            &owner,
            process_identity(std::process::id()).unwrap_or_default(),
        )
        .with_context(|| format!("cannot write {}", owner.display()))?;
        let mut vars = vec![(ENV_TRANSPORT, OsString::from(transport_name(transport)))];
        match transport {
            Transport::Unix => {
                vars.push((ENV_SOCKET_DIR, dir.path().as_os_str().to_owned()));
                vars.push((ENV_SOCKET_NAME, OsString::from(SOCKET_NAME)));
            }
            Transport::Tcp => {
                vars.push((ENV_TCP_ADDR, OsString::from(free_port()?)));
                vars.push((KEY_ENV, OsString::from(random_key()?)));
            }
        }
        Ok(Self {
            dir,
            vars,
            transport,
        })
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sets the link's `HS_*` variables on `command`.
    pub fn apply(&self, command: &mut Command) {
        for (k, v) in &self.vars {
            command.env(k, v);
        }
    }
}

/// The file in a session directory that names the harness owning it.
const OWNER_FILE: &str = "harness.pid";
/// How session directories' names begin.
const DIR_PREFIX: &str = "hotspare-harness-";

/// `"PID STARTTIME"` of a running process (its start time tells a reused pid apart), or
/// `None` if it does not run.
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields after it are counted.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3rd field of the line) ... starttime (22nd).
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(format!("{pid} {}", fields.get(19)?))
}

/// Removes the session directories in `tmp` (ours only) whose harness is gone.
pub fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt as _;
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        // A directory without the file is not a session's (the control sockets' directory
        // shares the prefix) or is being made right now.
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .and_then(process_identity)
            .is_some_and(|now| now == owner.trim());
        if !alive {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(dir = %path.display(), "removed a dead session's directory")
                }
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove a dead session's directory")
                }
            }
        }
    }
}

/// The transport's name as `HS_TRANSPORT` and `status --json` write it.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Unix => "unix",
        Transport::Tcp => "tcp",
    }
}

/// A port on 127.0.0.1 that is free now (the kernel's pick; a game binds it next), as
/// `127.0.0.1:PORT`.
pub fn free_port() -> anyhow::Result<String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free TCP port on 127.0.0.1")?;
    let addr = probe
        .local_addr()
        .context("cannot read the probe's address")?;
    Ok(addr.to_string())
}

/// 32 random bytes as 64 hex digits (`HS_KEY` wants at least 16 bytes).
fn random_key() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("cannot draw a random key: {e}"))?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn directories_of_dead_harnesses_are_swept_and_live_ones_kept() {
        let tmp = TempDir::new().unwrap();
        let dead = tmp.path().join("hotspare-harness-dead");
        let live = tmp.path().join("hotspare-harness-live");
        let other = tmp.path().join("hotspare-harness-1000");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        // A child that has exited and been reaped: its pid names no process of that start.
        let mut child = Command::new("true").spawn().unwrap();
        let gone = process_identity(child.id()).unwrap_or_else(|| format!("{} 1", child.id()));
        child.wait().unwrap();
        std::fs::write(dead.join(OWNER_FILE), gone).unwrap();
        let me = process_identity(std::process::id()).unwrap();
        std::fs::write(live.join(OWNER_FILE), me).unwrap();
        sweep_stale(tmp.path());
        assert!(!dead.exists(), "the dead session's directory is left");
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn the_directory_is_private_and_the_key_long_and_fresh() {
        let a = Link::new(Transport::Tcp).unwrap();
        let b = Link::new(Transport::Tcp).unwrap();
        let mode = std::fs::metadata(a.dir()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key = |l: &Link| {
            l.vars
                .iter()
                .find(|(k, _)| *k == KEY_ENV)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(key(&a).len(), 64);
        assert_ne!(key(&a), key(&b));
        let unix = Link::new(Transport::Unix).unwrap();
        assert!(
            unix.vars
                .iter()
                .any(|(k, v)| *k == ENV_SOCKET_DIR && v == unix.dir().as_os_str())
        );
    }
}
