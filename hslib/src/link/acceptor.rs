//! The spare acceptor: listens on the socket transports and hands each spare that connects
//! to the sender, which opens a session with it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::{Job, LinkError, spawn};
use crate::transport::{self, Endpoint, TcpConfig, TcpServer, TransportError, UnixServer};

/// Listens on the Unix socket `dir/name` (the directory made private first) and hands every
/// spare that connects to the sender; returns where it listens, for messages.
pub(super) fn listen_unix(dir: &Path, name: &str, jobs: Sender<Job>) -> Result<String, LinkError> {
    transport::unix::secure_dir(dir)?;
    let server = bind_unix(dir, name)?;
    let describe = format!("unix:{}", server.path().display());
    spawn("hs-accept", move || {
        accept_loop(|| server.accept().map(|e| Box::new(e) as _), &jobs)
    })?;
    Ok(describe)
}

/// Listens on TCP at `addr` and hands every spare that authenticates to the sender; returns
/// where it listens, for messages.
pub(super) fn listen_tcp(
    addr: SocketAddr,
    config: &TcpConfig,
    jobs: Sender<Job>,
) -> Result<String, LinkError> {
    let server = bind_with_grace(|| TcpServer::bind(addr, config))?;
    let describe = format!("tcp:{}", server.local_addr().unwrap_or(addr));
    spawn("hs-accept", move || {
        accept_loop(|| server.accept().map(|e| Box::new(e) as _), &jobs)
    })?;
    Ok(describe)
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

fn accept_loop(
    mut accept: impl FnMut() -> Result<Box<dyn Endpoint>, TransportError>,
    jobs: &Sender<Job>,
) {
    loop {
        match accept() {
            Ok(ep) => {
                tracing::info!(peer = %ep.describe(), "spare connected");
                if jobs.send(Job::Connect(ep)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // A refused handshake (wrong key, ...) is the peer's problem; keep listening.
                tracing::warn!(error = %e, "a spare's connection was refused");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
