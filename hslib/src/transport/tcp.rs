//! TCP between hosts, with mutual authentication from a shared key: each side proves it holds
//! the key by an HMAC-SHA256 over both sides' fresh random nonces, under a label per role so
//! one side's proof can never be replayed as the other's. Without a key the transport refuses
//! to start; a peer with a wrong key is refused on both sides. The exchange is bounded by a
//! timeout. (This authenticates the peer at connection time; it does not encrypt the stream.)

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::socket::SocketEndpoint;
use super::{HANDSHAKE_TIMEOUT, TransportError};

/// The environment variable the shared key is read from by [`AuthKey::from_env`].
pub const KEY_ENV: &str = "HS_KEY";
/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Greeting that opens the exchange: "HSAU", version 1, three zero bytes.
const GREETING: [u8; 8] = *b"HSAU\x01\0\0\0";
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const SERVER_LABEL: &[u8] = b"hotspare tcp auth v1: server proof";
const CLIENT_LABEL: &[u8] = b"hotspare tcp auth v1: client proof";
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret both ends hold (kept only as the keyed HMAC state).
#[derive(Clone)]
pub struct AuthKey {
    mac: HmacSha256,
    len: usize,
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey({} bytes)", self.len)
    }
}

impl AuthKey {
    /// A key of at least [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, TransportError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(TransportError::KeyTooShort {
                len: bytes.len(),
                min: MIN_KEY_LEN,
            });
        }
        // HMAC takes keys of any length, so this fails only if that ever changes.
        let mac = HmacSha256::new_from_slice(&bytes).map_err(|_| TransportError::KeyTooShort {
            len: bytes.len(),
            min: MIN_KEY_LEN,
        })?;
        Ok(Self {
            mac,
            len: bytes.len(),
        })
    }

    /// The key in [`KEY_ENV`], if set and non-empty.
    pub fn from_env() -> Result<Option<Self>, TransportError> {
        match std::env::var_os(KEY_ENV) {
            Some(v) if !v.is_empty() => {
                Self::new(std::os::unix::ffi::OsStringExt::into_vec(v)).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn proof(
        &self,
        label: &[u8],
        client: &[u8; NONCE_LEN],
        server: &[u8; NONCE_LEN],
    ) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(label);
        mac.update(client);
        mac.update(server);
        mac
    }
}

/// Settings of the TCP transport.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The shared key; `None` makes both [`TcpServer::bind`] and [`connect`] refuse.
    pub key: Option<AuthKey>,
    /// The bound on the authentication exchange.
    pub handshake_timeout: Duration,
}

impl TcpConfig {
    /// With `key` and the default handshake timeout.
    pub fn new(key: Option<AuthKey>) -> Self {
        Self {
            key,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    fn key(&self) -> Result<&AuthKey, TransportError> {
        self.key
            .as_ref()
            .ok_or(TransportError::MissingKey { var: KEY_ENV })
    }
}

fn nonce() -> Result<[u8; NONCE_LEN], TransportError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(TransportError::Random)?;
    Ok(n)
}

/// One step of the exchange, with its name for the error.
fn step<T>(peer: &str, stage: &'static str, r: io::Result<T>) -> Result<T, TransportError> {
    r.map_err(|source| TransportError::Handshake {
        peer: peer.to_owned(),
        stage,
        source,
    })
}

fn set_timeouts(s: &TcpStream, t: Option<Duration>) -> io::Result<()> {
    s.set_read_timeout(t)?;
    s.set_write_timeout(t)
}

/// A listening TCP socket that authenticates every connection it accepts.
#[derive(Debug)]
pub struct TcpServer {
    listener: TcpListener,
    key: AuthKey,
    timeout: Duration,
}

impl TcpServer {
    /// Listens on `addr`; refuses without a key.
    pub fn bind(
        addr: impl ToSocketAddrs + fmt::Debug,
        config: &TcpConfig,
    ) -> Result<Self, TransportError> {
        let key = config.key()?.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| TransportError::Net {
            what: "binding",
            addr: format!("{addr:?}"),
            source,
        })?;
        Ok(Self {
            listener,
            key,
            timeout: config.handshake_timeout,
        })
    }

    /// The bound address (for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts the next connection and authenticates it; a peer that fails is dropped and
    /// the error returned (the caller goes on accepting). One peer at a time: a server that
    /// must not be held up by a slow peer uses [`TcpServer::accept_unauthenticated`] and
    /// authenticates each peer on a thread of its own.
    pub fn accept(&self) -> Result<TcpEndpoint, TransportError> {
        let (stream, peer) = self.accept_unauthenticated()?;
        self.authenticate(stream, peer)
    }

    /// Accepts the next connection without authenticating it: nothing may be sent to the
    /// peer or read from it before [`TcpServer::authenticate`] succeeds.
    pub fn accept_unauthenticated(&self) -> Result<(TcpStream, SocketAddr), TransportError> {
        self.listener
            .accept()
            .map_err(|source| TransportError::Net {
                what: "accepting on",
                addr: format!("{:?}", self.listener.local_addr().ok()),
                source,
            })
    }

    /// Authenticates a connection [`TcpServer::accept_unauthenticated`] took. The whole
    /// exchange must end within the handshake timeout: a peer that trickles its bytes does
    /// not renew it.
    pub fn authenticate(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<TcpEndpoint, TransportError> {
        let peer_s = format!("tcp:{peer}");
        let deadline = Instant::now() + self.timeout;
        server_exchange(Bounded::new(&stream, deadline), &self.key, &peer_s)?;
        step(&peer_s, "clearing the timeout", set_timeouts(&stream, None))?;
        // Frames are written whole by the writer; send them at once.
        step(&peer_s, "setting TCP_NODELAY", stream.set_nodelay(true))?;
        Ok(TcpEndpoint::new(stream, peer_s))
    }
}

/// The socket during the exchange: every read and write bounded by what is left until one
/// deadline for the whole exchange.
struct Bounded<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> Bounded<'a> {
    fn new(stream: &'a TcpStream, deadline: Instant) -> Self {
        Self { stream, deadline }
    }

    /// The time left, as a socket timeout (never zero, which would mean no timeout).
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake's deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn server_exchange(mut s: Bounded<'_>, key: &AuthKey, peer: &str) -> Result<(), TransportError> {
    let mut hello = [0u8; GREETING.len() + NONCE_LEN];
    step(
        peer,
        "reading the client's greeting",
        s.read_exact(&mut hello),
    )?;
    check_greeting(&hello, peer)?;
    let mut client = [0u8; NONCE_LEN];
    client.copy_from_slice(&hello[GREETING.len()..]);
    let server = nonce()?;
    let proof = key
        .proof(SERVER_LABEL, &client, &server)
        .finalize()
        .into_bytes();
    let mut reply = [0u8; GREETING.len() + NONCE_LEN + PROOF_LEN];
    reply[..GREETING.len()].copy_from_slice(&GREETING);
    reply[GREETING.len()..GREETING.len() + NONCE_LEN].copy_from_slice(&server);
    reply[GREETING.len() + NONCE_LEN..].copy_from_slice(&proof);
    step(peer, "sending the server's proof", s.write_all(&reply))?;
    let mut theirs = [0u8; PROOF_LEN];
    step(
        peer,
        "reading the client's proof",
        s.read_exact(&mut theirs),
    )?;
    // `verify_slice` compares in constant time.
    let ok = key
        .proof(CLIENT_LABEL, &client, &server)
        .verify_slice(&theirs)
        .is_ok();
    let verdict = if ok { ACCEPTED } else { REFUSED };
    // The verdict tells an honest client with the wrong key why it is cut off; when refusing,
    // a failure to send it changes nothing.
    let sent = s.write_all(&[verdict]);
    if !ok {
        return Err(TransportError::PeerNotAuthenticated {
            peer: peer.to_owned(),
        });
    }
    step(peer, "sending the verdict", sent)
}

fn check_greeting(got: &[u8], peer: &str) -> Result<(), TransportError> {
    if got[..GREETING.len()] != GREETING {
        let mut found = [0u8; 8];
        found.copy_from_slice(&got[..GREETING.len()]);
        return Err(TransportError::BadGreeting {
            peer: peer.to_owned(),
            found,
        });
    }
    Ok(())
}

/// Connects to `addr` and authenticates both ways; refuses without a key.
pub fn connect(addr: SocketAddr, config: &TcpConfig) -> Result<TcpEndpoint, TransportError> {
    let key = config.key()?;
    let stream = TcpStream::connect_timeout(&addr, config.handshake_timeout).map_err(|source| {
        TransportError::Net {
            what: "connecting to",
            addr: addr.to_string(),
            source,
        }
    })?;
    let peer = format!("tcp:{addr}");
    let deadline = Instant::now() + config.handshake_timeout;
    client_exchange(Bounded::new(&stream, deadline), key, &peer)?;
    step(&peer, "clearing the timeout", set_timeouts(&stream, None))?;
    step(&peer, "setting TCP_NODELAY", stream.set_nodelay(true))?;
    Ok(TcpEndpoint::new(stream, peer))
}

fn client_exchange(mut s: Bounded<'_>, key: &AuthKey, peer: &str) -> Result<(), TransportError> {
    let client = nonce()?;
    let mut hello = [0u8; GREETING.len() + NONCE_LEN];
    hello[..GREETING.len()].copy_from_slice(&GREETING);
    hello[GREETING.len()..].copy_from_slice(&client);
    step(peer, "sending the greeting", s.write_all(&hello))?;
    let mut reply = [0u8; GREETING.len() + NONCE_LEN + PROOF_LEN];
    step(peer, "reading the server's proof", s.read_exact(&mut reply))?;
    check_greeting(&reply, peer)?;
    let mut server = [0u8; NONCE_LEN];
    server.copy_from_slice(&reply[GREETING.len()..GREETING.len() + NONCE_LEN]);
    // The server proves itself first: a client never sends its proof to an impostor.
    if key
        .proof(SERVER_LABEL, &client, &server)
        .verify_slice(&reply[GREETING.len() + NONCE_LEN..])
        .is_err()
    {
        return Err(TransportError::PeerNotAuthenticated {
            peer: peer.to_owned(),
        });
    }
    let proof = key
        .proof(CLIENT_LABEL, &client, &server)
        .finalize()
        .into_bytes();
    step(peer, "sending the client's proof", s.write_all(&proof))?;
    let mut verdict = [0u8; 1];
    match s.read_exact(&mut verdict) {
        Ok(()) if verdict[0] == ACCEPTED => Ok(()),
        Ok(()) => Err(TransportError::Refused {
            peer: peer.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(TransportError::Refused {
            peer: peer.to_owned(),
        }),
        Err(source) => Err(TransportError::Handshake {
            peer: peer.to_owned(),
            stage: "reading the verdict",
            source,
        }),
    }
}

/// An authenticated TCP connection.
pub type TcpEndpoint = SocketEndpoint<TcpStream>;
