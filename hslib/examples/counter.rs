//! A TCP counter service that survives the death of its process: the count lives in an hslib
//! region and the listening socket is registered with hslib, so when the primary is killed
//! the promoted spare listens on the same port and carries on the count.
//!
//! ```sh
//! cargo build -p hslib --example counter && cd target/debug/examples
//! ./counter --port 7070 --role primary & primary=$!
//! ./counter --port 7070 --role spare &
//! printf 'INCR\nINCR\nGET\n' | nc -q1 127.0.0.1 7070      # 1, 2, 2
//! kill -9 $primary                                        # the spare takes over
//! printf 'INCR\n' | nc -q1 127.0.0.1 7070                 # 3
//! ```
//!
//! Nothing here knows about games or terminals: this is the library's interface as any
//! daemon would use it (`cargo run -p hslib --example counter -- --help`).

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hslib::transport::unix;
use hslib::{Context, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role, WorkerResult};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The worker's name (the spare checks that the checkpoint names the same).
const NAME: &str = "counter";
/// The region holding [`State`].
const REGION: RegionId = RegionId(7);
/// The listening socket's registration name.
const LISTENER: &str = "listener";
/// The listen backlog (registered, so a promoted spare listens with the same).
const BACKLOG: u32 = 64;
/// The longest request line, newline included.
const MAX_LINE: u64 = 64;

const USAGE: &str = "\
counter: a TCP counter whose count survives the death of its process

usage: counter --port N [--host ADDR] [--role primary|spare|standalone]
               [--socket-dir DIR] [--spare-wait SECS]

A client connects and sends lines; each gets one line back:
  INCR      adds one and replies the new count, once the spare has it
  GET       replies the count
  STATUS    replies count=N epoch=E spare=yes|no synced=yes|no: whether a spare is
            connected, and whether it acknowledged the last INCR's checkpoint
  SHUTDOWN  replies BYE and stops the service (its spare stops too)
One client is served at a time; after a failover a client reconnects to the same port.

options:
  --port N           the TCP port to listen on (0: any; the \"listening on\" line tells)
  --host ADDR        the address to listen on (default 127.0.0.1)
  --role ROLE        primary (default): serve clients and checkpoint to a spare;
                     spare: replicate the primary, take over its port when it dies;
                     standalone: no spare
  --socket-dir DIR   the directory (mode 0700) of the Unix socket primary and spare
                     share (default $XDG_RUNTIME_DIR/hotspare or /tmp/hotspare-UID)
  --spare-wait SECS  how long a spare looks for its primary, and a fresh primary
                     waits for its first spare before it listens (default 10)
  -h, --help         this text

The HS_* variables of hslib (HS_ROLE, HS_TRANSPORT, HS_SOCKET_DIR, HS_SOCKET_NAME,
HS_TCP_ADDR, HS_KEY, HS_MODE, HS_STRATEGY, HS_EPOCH) are honoured; options override them.
COUNTER_LOG=error|warn|info|debug|trace logs to stderr. stdout carries one line,
\"listening on ADDR\", once the service takes requests.
";

/// The checkpointed state: the region's root value.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct State {
    /// The count.
    counter: u64,
}

/// The count, wherever the state lies in its region.
fn count(ctx: &Context) -> Result<u64, hslib::HsError> {
    Ok(ctx.get(REGION, ctx.root::<State>(REGION)?)?.counter)
}

/// The command line.
struct Args {
    port: u16,
    host: IpAddr,
    role: Option<Role>,
    socket_dir: Option<PathBuf>,
    spare_wait: Option<Duration>,
}

/// Why the command line was not understood.
struct Usage(String);

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, Usage> {
    let mut port = None;
    let mut host = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut role = None;
    let mut socket_dir = None;
    let mut spare_wait = None;
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| Usage(format!("{flag} needs a value")))
        };
        let bad = |v: &str, why: &dyn std::fmt::Display| Usage(format!("{flag} {v:?}: {why}"));
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|e| bad(&v, &e))?);
            }
            "--host" => {
                let v = value()?;
                host = v.parse().map_err(|e| bad(&v, &e))?;
            }
            "--role" => {
                let v = value()?;
                role = Some(match v.as_str() {
                    "primary" => Role::Primary,
                    "spare" => Role::Spare,
                    "standalone" => Role::Standalone,
                    _ => return Err(bad(&v, &"use primary, spare or standalone")),
                });
            }
            "--socket-dir" => socket_dir = Some(PathBuf::from(value()?)),
            "--spare-wait" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|e| bad(&v, &e))?;
                let wait = Duration::try_from_secs_f64(secs).map_err(|e| bad(&v, &e))?;
                spare_wait = Some(wait);
            }
            other => return Err(Usage(format!("unknown argument {other:?}"))),
        }
    }
    let port = port.ok_or_else(|| Usage("--port is required".to_owned()))?;
    Ok(Some(Args {
        port,
        host,
        role,
        socket_dir,
        spare_wait,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(Usage(why)) => {
            eprintln!("counter: {why} (try --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(why) = init_logging() {
        eprintln!("counter: {why}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at the level `COUNTER_LOG` names, if it is set.
fn init_logging() -> Result<(), String> {
    let Some(level) = std::env::var("COUNTER_LOG").ok().filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    let level: tracing::Level = level
        .parse()
        .map_err(|_| format!("COUNTER_LOG={level:?}: use error, warn, info, debug or trace"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    Ok(())
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let addr = SocketAddr::new(args.host, args.port);
    let mut hs = HotSpare::new(NAME)
        .region(REGION, 4096)
        .init(move |ctx| init(ctx, addr))
        .worker(serve)
        .mode(Mode::Sync)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: unix::default_dir(),
            name: NAME.to_owned(),
        })
        .from_env()?;
    if let Some(role) = args.role {
        hs = hs.role(role);
    }
    if let Some(dir) = args.socket_dir {
        hs = hs.link(LinkConfig::Unix {
            dir,
            name: NAME.to_owned(),
        });
    }
    if let Some(wait) = args.spare_wait {
        hs = hs.spare_wait(wait);
    }
    match hs.run()? {
        Outcome::Finished {
            value: count,
            restored,
            stats,
        } => {
            tracing::info!(count, ?restored, ?stats, "the service stopped");
        }
        Outcome::PrimaryFinished { checkpoint } => {
            tracing::info!(
                ?checkpoint,
                "the primary stopped on purpose; so does its spare"
            );
        }
        Outcome::Dropped { checkpoint } => {
            tracing::warn!(
                ?checkpoint,
                "the primary dropped this spare (it missed the ack deadline); start another"
            );
            return Err("dropped by the primary: it missed the ack deadline".into());
        }
        Outcome::Dismissed { checkpoint } => {
            tracing::info!(
                ?checkpoint,
                "the supervisor let this spare go without an order"
            );
        }
    }
    Ok(())
}

/// A fresh start: the count at zero and a new listening socket, handed to hslib so that a
/// promoted spare re-creates it, bound to the same address.
fn init(ctx: &mut Context, addr: SocketAddr) -> WorkerResult {
    ctx.fds()
        .register_listener_owned(LISTENER, listen(addr)?, BACKLOG)?;
    ctx.place(REGION, State { counter: 0 })?;
    Ok(())
}

/// A blocking TCP listener on `addr` with [`BACKLOG`].
fn listen(addr: SocketAddr) -> Result<OwnedFd, Box<dyn Error + Send + Sync>> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let sock = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&sock, sockopt::ReuseAddr, &true)?;
    socket::bind(sock.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&sock, Backlog::new(i32::try_from(BACKLOG)?)?)?;
    Ok(sock)
}

/// What to do after a client's connection ends.
enum Next {
    Accept,
    Shutdown,
}

/// The worker: accepts one client at a time, on a fresh start and after a promotion alike;
/// returns the count it stopped at.
fn serve(ctx: &mut Context) -> WorkerResult<u64> {
    // `init` handed the listener to hslib in this process, or the restore re-created it in a
    // promoted spare; either way the registry gives it back. It stays registered and open.
    let listener = TcpListener::from(ctx.fds().take(LISTENER)?);
    let local = listener.local_addr()?;
    tracing::info!(%local, restored = ?ctx.restored(), count = count(ctx)?, "serving");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local}")?;
    stdout.flush()?;
    drop(stdout);
    // Whether a spare acknowledged the last INCR's checkpoint (none yet in this process).
    let mut synced = false;
    loop {
        let stream = match listener.accept() {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "client connected");
                stream
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        if let Next::Shutdown = serve_client(ctx, &mut synced, stream)? {
            return Ok(count(ctx)?);
        }
    }
}

/// Answers one client's lines until it hangs up. A client's I/O errors end its connection
/// only; the errors returned (checkpoint, region) end the service.
fn serve_client(
    ctx: &mut Context,
    synced: &mut bool,
    stream: TcpStream,
) -> Result<Next, hslib::WorkerError> {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cloning a client's socket failed");
            return Ok(Next::Accept);
        }
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return Ok(Next::Accept),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading from a client failed");
                return Ok(Next::Accept);
            }
        }
        let too_long = !line.ends_with('\n') && line.len() as u64 == MAX_LINE;
        if too_long && let Err(e) = reader.skip_until(b'\n') {
            tracing::debug!(error = %e, "reading from a client failed");
            return Ok(Next::Accept);
        }
        let (reply, next) = match line.trim() {
            _ if too_long => ("ERR line too long\n".to_owned(), None),
            "INCR" => (incr(ctx, synced)?, None),
            "GET" => (format!("{}\n", count(ctx)?), None),
            "STATUS" => (status(ctx, *synced)?, None),
            "SHUTDOWN" => ("BYE\n".to_owned(), Some(Next::Shutdown)),
            _ => (
                "ERR unknown command; use INCR, GET, STATUS or SHUTDOWN\n".to_owned(),
                None,
            ),
        };
        if let Err(e) = writer.write_all(reply.as_bytes()) {
            tracing::debug!(error = %e, "writing to a client failed");
            return Ok(next.unwrap_or(Next::Accept));
        }
        if let Some(next) = next {
            return Ok(next);
        }
    }
}

/// Adds one and returns the reply, after a checkpoint: in sync mode the spare has the new
/// count before the client hears of it, so an acknowledged count is never lost. (A count
/// checkpointed whose reply was lost with the primary does survive: the client cannot tell
/// it from one that was not taken, as with any request whose answer did not arrive.)
fn incr(ctx: &mut Context, synced: &mut bool) -> Result<String, hslib::WorkerError> {
    let slot = ctx.root::<State>(REGION)?;
    let state = ctx.get_mut(REGION, slot)?;
    let Some(count) = state.counter.checked_add(1) else {
        return Ok("ERR the count is at its maximum\n".to_owned());
    };
    state.counter = count;
    let cp = ctx.checkpoint()?;
    tracing::trace!(count, ?cp, "checkpointed");
    *synced = cp.acked;
    Ok(format!("{count}\n"))
}

/// The STATUS reply. A spare that connects gets its first (full) checkpoint with the next
/// INCR, so `synced=yes` after `spare=yes` is when a failover would keep the count.
fn status(ctx: &Context, synced: bool) -> Result<String, hslib::WorkerError> {
    let count = count(ctx)?;
    let yes = |b: bool| if b { "yes" } else { "no" };
    Ok(format!(
        "count={count} epoch={} spare={} synced={}\n",
        ctx.epoch(),
        yes(ctx.link_stats().live),
        yes(synced)
    ))
}
