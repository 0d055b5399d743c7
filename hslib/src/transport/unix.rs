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
        Ok(UnixEndpoint::accepted(
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
    UnixEndpoint::connected(stream, format!("unix:{}", path.display())).map_err(|source| {
        TransportError::Path {
            what: "sending the answers' socket to",
            path,
            source,
        }
    })
}

/// A connected Unix socket.
pub type UnixEndpoint = SocketEndpoint<UnixStream>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Endpoint;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    /// This thread's voluntary context switches so far (each sleep it woke from).
    fn voluntary_switches() -> u64 {
        let status = fs::read_to_string("/proc/thread-self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in /proc/thread-self/status")
    }

    /// A server in a private directory, and the directory (kept alive by the caller).
    fn server() -> (UnixServer, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socks = dir.path().join("s");
        fs::create_dir(&socks).expect("mkdir");
        fs::set_permissions(&socks, fs::Permissions::from_mode(0o700)).expect("chmod");
        (UnixServer::bind(&socks, "p").expect("bind"), dir)
    }

    /// A connection with one exchange done, so the answers' socket is in place on both
    /// sides: (accepted side, connecting side). Taking in the first byte wakes the spare
    /// once, as any first read of what it wrote on the connection.
    fn exchanged(server: &UnixServer) -> (UnixEndpoint, UnixEndpoint) {
        let (mut primary, mut spare) = connection(server);
        primary.write_all(&[1]).expect("write");
        spare.read_exact(&mut [0u8; 1]).expect("read");
        spare.write_all(&[2]).expect("the first answer");
        primary.read_exact(&mut [0u8; 1]).expect("the first answer");
        (primary, spare)
    }

    /// A connection from `connect` to `server`: (accepted side, connecting side).
    fn connection(server: &UnixServer) -> (UnixEndpoint, UnixEndpoint) {
        let dir = server.path().parent().expect("socket directory");
        let spare = connect(dir, "p").expect("connect");
        let primary = server.accept().expect("accept");
        (primary, spare)
    }

    #[test]
    fn a_connectors_answers_travel_on_a_socket_of_their_own() {
        let (server, _dir) = server();
        let (mut primary, mut spare) = connection(&server);
        assert!(
            spare.answers_apart(),
            "the connector made its answers' socket"
        );
        assert!(!primary.answers_apart(), "unknown before the first read");
        primary.write_all(b"checkpoint").expect("primary writes");
        let mut got = [0u8; 10];
        spare.read_exact(&mut got).expect("spare reads");
        assert_eq!(&got, b"checkpoint");
        spare.write_all(b"ack").expect("spare answers");
        let mut ack = [0u8; 3];
        primary
            .read_exact(&mut ack)
            .expect("primary reads the answer");
        assert_eq!(&ack, b"ack");
        assert!(primary.answers_apart(), "the answer came on its own socket");
        // The connection itself carries only the primary's bytes now.
        primary
            .stream()
            .set_nonblocking(true)
            .expect("non-blocking");
        let err = primary
            .stream()
            .read(&mut [0u8; 8])
            .expect_err("no answer on the connection");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    }

    /// The spare, asleep waiting for the next checkpoint, is not woken when the primary
    /// reads its answer (one socket per direction, and no poll before the read).
    #[test]
    fn a_connector_waiting_for_data_sleeps_through_its_answer_being_read() {
        let (server, _dir) = server();
        let (mut primary, mut spare) = exchanged(&server);
        spare.write_all(&[2u8; 64]).expect("the spare's answer");
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            primary
                .read_exact(&mut [0u8; 64])
                .expect("the primary reads the answer");
            std::thread::sleep(Duration::from_millis(50));
            primary
                .write_all(&[3u8; 4096])
                .expect("the next checkpoint");
            primary
        });
        let before = voluntary_switches();
        let mut first = [0u8; 1];
        assert_eq!(spare.read(&mut first).expect("the next checkpoint"), 1);
        let slept = voluntary_switches() - before;
        let _primary = other.join().expect("the primary's thread");
        assert_eq!(first, [3]);
        assert_eq!(slept, 1, "the spare woke {slept} times for one checkpoint");
    }

    /// And the primary, asleep waiting for the answer, is not woken when the spare reads
    /// the checkpoint.
    #[test]
    fn an_acceptor_waiting_for_an_answer_sleeps_through_its_data_being_read() {
        let (server, _dir) = server();
        let (mut primary, mut spare) = exchanged(&server);
        primary.write_all(&[4u8; 4096]).expect("a checkpoint");
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            spare
                .read_exact(&mut [0u8; 4096])
                .expect("the spare reads it");
            std::thread::sleep(Duration::from_millis(50));
            spare.write_all(&[5]).expect("the answer");
            spare
        });
        let before = voluntary_switches();
        let mut one = [0u8; 1];
        assert_eq!(primary.read(&mut one).expect("the answer"), 1);
        let slept = voluntary_switches() - before;
        let _spare = other.join().expect("the spare's thread");
        assert_eq!(one, [5]);
        assert_eq!(slept, 1, "the primary woke {slept} times for one answer");
    }

    /// With enough processors to spin on, a read that spins sleeps no time while its input
    /// comes within the bound; without spinning the same read sleeps once.
    fn sleeps_waiting(spin: Duration, reader_is_spare: bool) -> Option<u64> {
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            return None;
        }
        let (server, _dir) = server();
        let (primary, spare) = exchanged(&server);
        let (mut reader, mut writer) = if reader_is_spare {
            (spare, primary)
        } else {
            (primary, spare)
        };
        reader.spin_for_input(spin);
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer
                .write_all(&[7u8; 4096])
                .expect("the other side writes");
            writer
        });
        let before = voluntary_switches();
        let mut got = [0u8; 1];
        assert_eq!(reader.read(&mut got).expect("read"), 1);
        let slept = voluntary_switches() - before;
        let _writer = other.join().expect("the writer's thread");
        assert_eq!(got, [7]);
        Some(slept)
    }

    #[test]
    fn a_spinning_spare_takes_a_checkpoint_that_comes_soon_without_sleeping() {
        let Some(slept) = sleeps_waiting(Duration::from_secs(2), true) else {
            return;
        };
        assert_eq!(slept, 0, "the spare slept {slept} times");
        let slept = sleeps_waiting(Duration::ZERO, true).expect("two processors");
        assert_eq!(slept, 1, "not spinning, the spare slept {slept} times");
    }

    #[test]
    fn a_spinning_primary_takes_an_answer_that_comes_soon_without_sleeping() {
        let Some(slept) = sleeps_waiting(Duration::from_secs(2), false) else {
            return;
        };
        assert_eq!(slept, 0, "the primary slept {slept} times");
        let slept = sleeps_waiting(Duration::ZERO, false).expect("two processors");
        assert_eq!(slept, 1, "not spinning, the primary slept {slept} times");
    }

    /// A peer that sends no answers' socket (not hotspare's connector) is read and
    /// answered on the one socket.
    #[test]
    fn a_plain_peer_is_read_on_the_one_socket() {
        let (server, _dir) = server();
        let mut plain = UnixStream::connect(server.path()).expect("connect");
        let mut primary = server.accept().expect("accept");
        plain.write_all(b"HSCP").expect("write");
        let mut got = [0u8; 4];
        primary.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"HSCP");
        assert!(!primary.answers_apart());
        primary.write_all(b"ok").expect("answer");
        let mut two = [0u8; 2];
        plain.read_exact(&mut two).expect("read the answer");
        assert_eq!(&two, b"ok");
    }

    /// A read timeout set before the answers' socket came applies to it.
    #[test]
    fn a_timeout_set_before_the_answers_socket_came_ends_a_read_there() {
        let (server, _dir) = server();
        let (mut primary, _spare) = connection(&server);
        primary
            .set_read_timeout(Some(Duration::from_millis(60)))
            .expect("timeout");
        let started = Instant::now();
        let err = primary.read(&mut [0u8; 8]).expect_err("no answer comes");
        assert!(primary.answers_apart(), "the first read took the socket in");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
    }

    /// Shutting the connection down through another handle ends a read waiting on the
    /// answers' socket (the acceptor cuts a handshake off this way).
    #[test]
    fn a_shutdown_through_another_handle_ends_a_read_of_the_answers() {
        let (server, _dir) = server();
        let (mut primary, mut spare) = connection(&server);
        spare.write_all(&[1]).expect("answer");
        primary.read_exact(&mut [0u8; 1]).expect("the first answer");
        let cutter = primary.try_clone_endpoint().expect("clone");
        let reader = std::thread::spawn(move || {
            let started = Instant::now();
            let r = primary.read(&mut [0u8; 8]);
            (r, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        cutter.shutdown().expect("shutdown");
        let (r, took) = reader.join().expect("the reader");
        assert_eq!(r.expect("end of stream"), 0);
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(spare);
    }

    /// The connector's `shutdown_write` ends the answers: the acceptor reads their end,
    /// while the connector still reads what the acceptor writes.
    #[test]
    fn a_connectors_shutdown_write_ends_its_answers_only() {
        let (server, _dir) = server();
        let (mut primary, mut spare) = connection(&server);
        spare.write_all(b"last").expect("answer");
        spare.shutdown_write().expect("shutdown write");
        let mut all = Vec::new();
        primary.read_to_end(&mut all).expect("read to the end");
        assert_eq!(all, b"last");
        primary
            .write_all(b"goodbye")
            .expect("the primary still writes");
        let mut got = [0u8; 7];
        spare.read_exact(&mut got).expect("the spare still reads");
        assert_eq!(&got, b"goodbye");
    }
}
