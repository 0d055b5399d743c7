//! The spare acceptor: listens on the socket transports, and runs each connection's
//! handshake (TCP authentication, the hello and its ack) on a thread of its own, so that
//! peers that connect and never finish (idle, or trickling a byte at a time) hold up neither
//! a real spare nor the sender. A spare whose handshake succeeds goes to the sender, which
//! opens its session.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Job, LinkError, StreamParams, spawn};
use crate::session;
use crate::transport::{
    self, Endpoint, HANDSHAKE_TIMEOUT, TcpConfig, TcpServer, TransportError, UnixEndpoint,
    UnixServer,
};
use crate::wire::{AckReader, CheckpointWriter};

/// How many handshakes may run at once. When a peer connects with all of them taken, the
/// one that has been at it longest is cut off: an impostor holds its place for at most a
/// handshake timeout, and only until newer peers arrive.
const MAX_HANDSHAKES: usize = 32;

/// A spare that proved itself (TCP: holds the key) and acked the hello.
pub(super) struct Handshaken {
    /// Who it is, for messages.
    pub(super) peer: String,
    /// The session's writer, the hello written (its first checkpoint number is set by the
    /// sender).
    pub(super) writer: CheckpointWriter<Box<dyn Endpoint>>,
    /// Reads the spare's acks after the hello's.
    pub(super) acks: AckReader,
    /// The stream the acks are read from (a second handle on the writer's).
    pub(super) ack_stream: Box<dyn Endpoint>,
}

/// Listens on the Unix socket `dir/name` (the directory made private first) and hands every
/// spare that connects to the sender; returns where it listens, for messages.
pub(super) fn listen_unix(
    dir: &Path,
    name: &str,
    params: StreamParams,
    jobs: Sender<Job>,
) -> Result<String, LinkError> {
    transport::unix::secure_dir(dir)?;
    let server = bind_unix(dir, name)?;
    let describe = format!("unix:{}", server.path().display());
    start(server, params, jobs)?;
    Ok(describe)
}

/// Listens on TCP at `addr` and hands every spare that authenticates to the sender; returns
/// where it listens, for messages.
pub(super) fn listen_tcp(
    addr: SocketAddr,
    config: &TcpConfig,
    params: StreamParams,
    jobs: Sender<Job>,
) -> Result<String, LinkError> {
    let server = bind_with_grace(|| TcpServer::bind(addr, config))?;
    let describe = format!("tcp:{}", server.local_addr().unwrap_or(addr));
    start(server, params, jobs)?;
    Ok(describe)
}

/// A listening socket whose connections must pass a handshake before they are spares.
trait Listen: Send + Sync + 'static {
    /// A connection accepted, not yet trusted.
    type Conn: Send + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> Result<Self::Conn, TransportError>;
    /// Another handle on the connection's socket, to cut it off from another thread.
    fn cutter(conn: &Self::Conn) -> std::io::Result<Cutter>;
    /// Proves who the peer is (TCP: that it holds the key).
    fn authenticate(&self, conn: Self::Conn) -> Result<Box<dyn Endpoint>, TransportError>;
}

/// Cuts a connection off: shuts its socket down, which fails the handshake's reads.
type Cutter = Box<dyn FnOnce() + Send>;

impl Listen for TcpServer {
    type Conn = (TcpStream, SocketAddr);

    fn accept(&self) -> Result<Self::Conn, TransportError> {
        self.accept_unauthenticated()
    }

    fn cutter((stream, _): &Self::Conn) -> std::io::Result<Cutter> {
        let other = stream.try_clone()?;
        Ok(Box::new(move || {
            let _ = other.shutdown(Shutdown::Both);
        }))
    }

    fn authenticate(
        &self,
        (stream, peer): Self::Conn,
    ) -> Result<Box<dyn Endpoint>, TransportError> {
        Ok(Box::new(TcpServer::authenticate(self, stream, peer)?))
    }
}

impl Listen for UnixServer {
    type Conn = UnixEndpoint;

    fn accept(&self) -> Result<Self::Conn, TransportError> {
        UnixServer::accept(self)
    }

    fn cutter(conn: &Self::Conn) -> std::io::Result<Cutter> {
        // The endpoint's own shutdown: it reaches the answers' socket too, if it has come.
        let other = conn.try_clone_endpoint()?;
        Ok(Box::new(move || {
            let _ = other.shutdown();
        }))
    }

    fn authenticate(&self, conn: Self::Conn) -> Result<Box<dyn Endpoint>, TransportError> {
        // Only this user can enter the socket's directory.
        Ok(Box::new(conn))
    }
}

/// The handshakes under way, oldest first.
#[derive(Default)]
struct Handshakes {
    running: Mutex<VecDeque<(u64, Cutter)>>,
    next: Mutex<u64>,
    /// The sender is gone (the link finished): stop accepting.
    closed: AtomicBool,
}

impl Handshakes {
    fn running(&self) -> MutexGuard<'_, VecDeque<(u64, Cutter)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a new handshake in, cutting off the oldest if all places are taken.
    fn add(&self, cut: Cutter) -> u64 {
        let id = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *next += 1;
            *next
        };
        let oldest = {
            let mut running = self.running();
            running.push_back((id, cut));
            (running.len() > MAX_HANDSHAKES)
                .then(|| running.pop_front())
                .flatten()
        };
        if let Some((old, cut)) = oldest {
            tracing::warn!(
                handshake = old,
                "too many handshakes at once; cutting off the oldest"
            );
            cut();
        }
        id
    }

    fn remove(&self, id: u64) {
        self.running().retain(|(i, _)| *i != id);
    }
}

fn start<L: Listen>(listener: L, params: StreamParams, jobs: Sender<Job>) -> Result<(), LinkError> {
    let listener = Arc::new(listener);
    let params = Arc::new(params);
    spawn("hs-accept", move || accept_loop(&listener, &params, &jobs))?;
    Ok(())
}

fn accept_loop<L: Listen>(listener: &Arc<L>, params: &Arc<StreamParams>, jobs: &Sender<Job>) {
    let handshakes = Arc::new(Handshakes::default());
    while !handshakes.closed.load(Ordering::Acquire) {
        let conn = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a spare's connection failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let cut = match L::cutter(&conn) {
            Ok(cut) => cut,
            Err(e) => {
                tracing::warn!(error = %e, "duplicating a connection's socket failed; dropping it");
                continue;
            }
        };
        let id = handshakes.add(cut);
        let (listener, params, jobs, hs) = (
            Arc::clone(listener),
            Arc::clone(params),
            jobs.clone(),
            Arc::clone(&handshakes),
        );
        let started = spawn("hs-handshake", move || {
            let done = handshake(&*listener, conn, &params);
            hs.remove(id);
            if let Some(spare) = done
                && jobs.send(Job::Spare(spare)).is_err()
            {
                hs.closed.store(true, Ordering::Release);
            }
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread for a connection's handshake; dropping it");
            handshakes.remove(id);
        }
    }
}

/// Authenticates the peer and exchanges the hello with it; `None` (logged) if it fails.
fn handshake<L: Listen>(listener: &L, conn: L::Conn, params: &StreamParams) -> Option<Handshaken> {
    let ep = match listener.authenticate(conn) {
        Ok(ep) => ep,
        Err(e) => {
            // A refused handshake (wrong key, silence, ...) is the peer's problem.
            tracing::warn!(error = %e, "a spare's connection was refused");
            return None;
        }
    };
    let peer = ep.describe();
    let ack_stream = match ep.try_clone_endpoint() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(peer, error = %e, "cloning the spare's stream failed");
            return None;
        }
    };
    // The first checkpoint's number is the sender's to set when it takes the session.
    match session::open_primary(ep, params.epoch, 1, &params.hello, HANDSHAKE_TIMEOUT) {
        Ok(s) => {
            tracing::info!(peer, "spare connected");
            Some(Handshaken {
                peer,
                writer: s.writer,
                acks: s.acks,
                ack_stream,
            })
        }
        Err(e) => {
            tracing::warn!(peer, error = %e, "opening a session with a spare failed");
            None
        }
    }
}

/// How long a new primary waits for a dying one's listening socket to go away.
const LISTENER_GRACE: Duration = Duration::from_secs(2);
/// The first wait between binds; it doubles up to [`LISTENER_RETRY_MAX`]. The dying
/// primary's socket usually goes within a millisecond or two, and a promoted spare's user is
/// waiting: look again soon, then back off.
const LISTENER_RETRY_MIN: Duration = Duration::from_micros(50);
/// The longest wait between binds.
const LISTENER_RETRY_MAX: Duration = Duration::from_millis(2);

/// Binds a listener with `bind`, waiting a little while the address is in use: a promoted
/// spare sees its primary's stream end while the kernel may still be releasing the dead
/// primary's listening socket (descriptors of an exiting process are released in no
/// promised order). A server that stays alive there for [`LISTENER_GRACE`] is refused.
fn bind_with_grace<S>(
    mut bind: impl FnMut() -> Result<S, TransportError>,
) -> Result<S, TransportError> {
    let start = Instant::now();
    let mut pause = LISTENER_RETRY_MIN;
    loop {
        match bind() {
            Err(e) if addr_in_use(&e) && start.elapsed() < LISTENER_GRACE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(LISTENER_RETRY_MAX);
            }
            other => return other,
        }
    }
}

fn addr_in_use(e: &TransportError) -> bool {
    match e {
        TransportError::Path { source, .. } | TransportError::Net { source, .. } => {
            source.kind() == std::io::ErrorKind::AddrInUse
        }
        _ => false,
    }
}

/// Binds the Unix listener (see [`bind_with_grace`]).
fn bind_unix(dir: &Path, name: &str) -> Result<UnixServer, TransportError> {
    bind_with_grace(|| UnixServer::bind(dir, name))
}
