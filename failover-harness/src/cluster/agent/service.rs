//! The agent's door for clients: a TCP listener whose connections are authenticated with the
//! shared key exactly as hslib's TCP transport authenticates a spare (HMAC over both sides'
//! nonces), each on a thread of its own so a slow peer holds up nobody; then one thread per
//! connection reads its [`ToAgent`] frames and hands them to the game loop, which answers
//! on the connection's other half.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use anyhow::Context as _;
use hotspare_cluster::proto::{self, ToAgent};
use hslib::transport::tcp::{AuthKey, TcpConfig, TcpServer};

use super::wake::{Inbound, Waker};

/// The listener's thread (it runs for the agent's life).
#[derive(Debug)]
pub struct Service {
    addr: SocketAddr,
}

impl Service {
    /// Listens on `listen` for clients holding `key`; their connections and frames go to the
    /// game loop through `to_game` (each send followed by a wake-up).
    pub fn start(
        listen: SocketAddr,
        key: &[u8],
        to_game: Sender<Inbound>,
        waker: Waker,
    ) -> anyhow::Result<Self> {
        let key = AuthKey::new(key.to_vec()).context("the key file's key")?;
        let server = Arc::new(
            TcpServer::bind(listen, &TcpConfig::new(Some(key)))
                .with_context(|| format!("cannot serve clients on {listen}"))?,
        );
        let addr = server.local_addr().unwrap_or(listen);
        std::thread::Builder::new()
            .name("hs-agent-accept".to_owned())
            .spawn(move || accept_loop(&server, &to_game, &waker))
            .context("cannot start the client listener's thread")?;
        Ok(Self { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn accept_loop(server: &Arc<TcpServer>, to_game: &Sender<Inbound>, waker: &Waker) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    loop {
        let (stream, peer) = match server.accept_unauthenticated() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a client failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let server = Arc::clone(server);
        let to_game = to_game.clone();
        let waker = waker.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("hs-agent-client-{id}"))
            .spawn(move || serve(&server, stream, peer, id, &to_game, &waker));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, %peer, "no thread for a client; dropped");
        }
    }
}

/// One connection: authenticate it, give its write half to the game loop, then read frames.
fn serve(
    server: &TcpServer,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    to_game: &Sender<Inbound>,
    waker: &Waker,
) {
    let endpoint = match server.authenticate(stream, peer) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "a client failed authentication");
            return;
        }
    };
    let (mut reader, writer) = match (endpoint.stream().try_clone(), endpoint.stream().try_clone())
    {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, %peer, "cannot duplicate a client's socket");
            return;
        }
    };
    drop(endpoint);
    let send = |msg: Inbound| {
        let ok = to_game.send(msg).is_ok();
        waker.wake();
        ok
    };
    if !send(Inbound::Connected { id, stream: writer }) {
        return;
    }
    loop {
        match proto::read_frame::<ToAgent>(&mut reader) {
            Ok(msg) => {
                if !send(Inbound::Frame { id, msg }) {
                    return;
                }
            }
            Err(e) => {
                send(Inbound::Gone {
                    id,
                    why: e.to_string(),
                });
                return;
            }
        }
    }
}
