//! The client's connections to agents: each is opened, authenticated (the shared key, as
//! hslib's TCP transport does) and read on a thread of its own, so a host that is cut off
//! (a connect or a read that never answers) never holds up the client; what it reads comes
//! to the client's loop as [`Msg`]s tagged with the connection's id. The loop writes frames
//! itself, on a clone of the socket with a write timeout.

use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::time::Duration;

use hotspare_cluster::LeaderChange;
use hotspare_cluster::proto::{ToAgent, ToClient, read_frame, write_frame};
use hslib::transport::{AuthKey, TcpConfig};

/// How long connecting to an agent and authenticating may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a frame's write to an agent may block (a stopped or cut-off agent).
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the client's loop hears from its threads.
#[derive(Debug)]
pub enum Msg {
    /// The leader watch saw a change.
    Leader(LeaderChange),
    /// The leader watch failed (it starts again by itself).
    WatchFailed(String),
    /// Connection `id` is open and hello was sent: its writing end.
    Connected {
        /// The connection.
        id: u64,
        /// Where frames to the agent are written.
        writer: TcpStream,
    },
    /// A frame on connection `id`.
    Frame {
        /// The connection.
        id: u64,
        /// The message.
        msg: ToClient,
    },
    /// Connection `id` failed or ended.
    Closed {
        /// The connection.
        id: u64,
        /// Why.
        why: String,
    },
    /// A background etcd step finished (a suspicion written, a loss checked).
    Etcd(EtcdReply),
    /// Bytes from the user's terminal.
    Stdin(Vec<u8>),
    /// The user's terminal went away.
    StdinClosed,
    /// A signal, by number.
    Signal(u8),
}

/// The answers of background etcd steps.
#[derive(Debug)]
pub enum EtcdReply {
    /// `suspect/<epoch>` was written.
    Suspected(u64),
    /// Writing it failed.
    SuspectFailed(u64, String),
    /// The loss check: `Some(why)` when the game is lost, `None` when a spare still holds it.
    Lost(Option<String>),
    /// The loss check could not reach etcd.
    CheckFailed(String),
}

/// Opens connection `id` to the agent at `addr` on a thread: connects, authenticates with
/// `key`, sends `hello`, reports [`Msg::Connected`], then passes on every frame until the
/// connection ends ([`Msg::Closed`]).
pub fn open(id: u64, addr: SocketAddr, key: AuthKey, hello: ToAgent, tx: Sender<Msg>) {
    let spawned = std::thread::Builder::new()
        .name(format!("hs-client-conn-{id}"))
        .spawn({
            let tx = tx.clone();
            move || {
                let why = match run(id, addr, key, &hello, &tx) {
                    Ok(()) => "the agent closed the connection".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                // The loop has ended when this fails: nobody is left to tell.
                let _ = tx.send(Msg::Closed { id, why });
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(Msg::Closed {
            id,
            why: format!("cannot start a connection thread: {e}"),
        });
    }
}

fn run(
    id: u64,
    addr: SocketAddr,
    key: AuthKey,
    hello: &ToAgent,
    tx: &Sender<Msg>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = TcpConfig {
        key: Some(key),
        handshake_timeout: CONNECT_TIMEOUT,
    };
    let endpoint = hslib::transport::tcp::connect(addr, &config)
        .with_context(|| format!("connecting to the agent at {addr}"))?;
    let stream = endpoint
        .stream()
        .try_clone()
        .context("cannot clone the agent's socket")?;
    drop(endpoint);
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .context("cannot set the socket's write timeout")?;
    let mut writer = stream
        .try_clone()
        .context("cannot clone the agent's socket")?;
    write_frame(&mut writer, hello).with_context(|| format!("sending hello to {addr}"))?;
    if tx.send(Msg::Connected { id, writer }).is_err() {
        return Ok(());
    }
    let mut reader = BufReader::new(stream);
    loop {
        let msg: ToClient =
            read_frame(&mut reader).with_context(|| format!("reading from the agent at {addr}"))?;
        if tx.send(Msg::Frame { id, msg }).is_err() {
            return Ok(());
        }
    }
}

/// Writes one frame to an agent; an error closes the socket (its reader then reports it).
pub fn send(writer: &mut TcpStream, msg: &ToAgent) -> bool {
    match write_frame(writer, msg) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "writing to the agent failed: the connection is closed");
            let _ = writer.shutdown(Shutdown::Both);
            false
        }
    }
}
