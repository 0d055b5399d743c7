//! How a session's games reach each other: a Unix socket in a private directory (0700), or
//! TCP on 127.0.0.1 with a fresh random key (the transport authenticates both ends with it);
//! and the session's private working directory, which also holds the games' error output and
//! stats files.

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
}

impl Link {
    /// A new private directory and, for TCP, a free port on 127.0.0.1 and a random key.
    pub fn new(transport: Transport) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hotspare-harness-")
            .tempdir()
            .context("cannot create the session's private directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.path().display()))?;
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
        Ok(Self { dir, vars })
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

/// The transport's name as `HS_TRANSPORT` and `status --json` write it.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Unix => "unix",
        Transport::Tcp => "tcp",
    }
}

/// A port on 127.0.0.1 that is free now (the kernel's pick; the primary binds it next).
fn free_port() -> anyhow::Result<String> {
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
