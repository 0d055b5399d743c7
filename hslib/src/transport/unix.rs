//! The default transport: a Unix stream socket in a directory only this user can enter
//! (mode 0700, owned by the effective uid). An existing directory with looser permissions,
//! another owner, or that is a symbolic link is refused rather than repaired, on both the
//! listening and the connecting side.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::TransportError;
use super::socket::SocketEndpoint;

/// The directory sockets go in when none is given: `$XDG_RUNTIME_DIR/hotspare`, else
/// `/tmp/hotspare-<uid>`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("hotspare"),
        _ => PathBuf::from(format!("/tmp/hotspare-{}", nix::unistd::geteuid())),
    }
}

/// Creates `dir` with mode 0700 if it is missing, then checks that it is a real directory
/// owned by this process's effective uid with no group or other permissions.
pub fn secure_dir(dir: &Path) -> Result<(), TransportError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(TransportError::Path {
                what: "creating socket directory",
                path: dir.to_owned(),
                source,
            });
        }
    }
    check_dir(dir)
}

/// Checks without creating: a directory (not a link), ours, mode 0700 or stricter.
pub fn check_dir(dir: &Path) -> Result<(), TransportError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| TransportError::Path {
        what: "inspecting socket directory",
        path: dir.to_owned(),
        source,
    })?;
    if !meta.file_type().is_dir() {
        return Err(TransportError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(TransportError::DirectoryOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TransportError::DirectoryMode {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A listening Unix socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct UnixServer {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixServer {
    /// Listens on `dir/name`, creating `dir` (0700) if needed and replacing a stale socket
    /// file left by a dead process; a socket a live server still answers on is refused.
    pub fn bind(dir: &Path, name: &str) -> Result<Self, TransportError> {
        secure_dir(dir)?;
        let path = dir.join(name);
        if let Ok(meta) = fs::symlink_metadata(&path)
            && meta.file_type().is_socket()
        {
            if UnixStream::connect(&path).is_ok() {
                return Err(TransportError::Path {
                    what: "binding (a live server answers there)",
                    path,
                    source: io::ErrorKind::AddrInUse.into(),
                });
            }
            // Nobody answers, and only this user can write the directory: our stale socket.
            fs::remove_file(&path).map_err(|source| TransportError::Path {
                what: "removing stale socket",
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|source| TransportError::Path {
            what: "binding",
            path: path.clone(),
            source,
        })?;
        Ok(Self { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<UnixEndpoint, TransportError> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|source| TransportError::Path {
                what: "accepting on",
                path: self.path.clone(),
                source,
            })?;
        Ok(UnixEndpoint::new(
            stream,
            format!("unix:{}", self.path.display()),
        ))
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        // Best effort: a leftover socket file is replaced by the next bind anyway.
        let _ = fs::remove_file(&self.path);
    }
}

/// Connects to `dir/name` after checking that `dir` is private (0700, ours).
pub fn connect(dir: &Path, name: &str) -> Result<UnixEndpoint, TransportError> {
    check_dir(dir)?;
    let path = dir.join(name);
    let stream = UnixStream::connect(&path).map_err(|source| TransportError::Path {
        what: "connecting to",
        path: path.clone(),
        source,
    })?;
    Ok(UnixEndpoint::new(
        stream,
        format!("unix:{}", path.display()),
    ))
}

/// A connected Unix socket.
pub type UnixEndpoint = SocketEndpoint<UnixStream>;
