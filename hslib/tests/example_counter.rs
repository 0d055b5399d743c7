//! The `counter` example as a black box: real processes, a real TCP port, a Unix link in a
//! private directory, SIGKILL. A failover must lose no acknowledged count and repeat none.
//!
//! The example binary is built (once, a no-op when it is fresh) with the cargo that runs the
//! tests, so `cargo test -p hslib --test example_counter` tests the current source; set
//! `COUNTER_BIN` to test another build.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The bound on every wait: generous, since it only decides how long a broken run hangs.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a spare looks for its primary and a fresh primary waits for its first spare
/// (the tests always start both).
const SPARE_WAIT_SECS: &str = "30";

/// Variables of hslib's `from_env` that would change the role, link or mode under test.
const HS_VARS: [&str; 9] = [
    "HS_ROLE",
    "HS_TRANSPORT",
    "HS_SOCKET_DIR",
    "HS_SOCKET_NAME",
    "HS_TCP_ADDR",
    "HS_KEY",
    "HS_LOG_FILE",
    "HS_EPOCH",
    "HS_MODE",
];

/// The example binary, built by this test's cargo with the same profile.
fn counter_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("COUNTER_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/example_counter-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let bin = profile_dir.join("examples").join("counter");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "hslib", "--example", "counter"]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
            None => {}
        }
        let status = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo to build the counter example");
        assert!(
            status.success(),
            "building the counter example failed ({status}); \
             try `cargo build -p hslib --example counter`"
        );
        assert!(
            bin.is_file(),
            "the counter example is not at {} after building it; \
             run `cargo build -p hslib --example counter` or set COUNTER_BIN",
            bin.display()
        );
        bin
    })
}

/// A port nobody listens on now (the kernel's pick, released again).
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// One daemon process and the lines of its stdout.
struct Daemon {
    name: String,
    child: Child,
    stdout: Receiver<String>,
}

/// The daemons of one test, killed when it ends however it ends.
struct Daemons {
    port: u16,
    socket_dir: PathBuf,
    procs: Vec<Daemon>,
}

/// Index of a daemon in [`Daemons`].
#[derive(Clone, Copy)]
struct Id(usize);

impl Daemons {
    fn new(port: u16, socket_dir: &Path) -> Self {
        Self {
            port,
            socket_dir: socket_dir.to_owned(),
            procs: Vec::new(),
        }
    }

    /// Starts a daemon in `role`; its stdout lines arrive on a channel.
    fn start(&mut self, name: &str, role: &str) -> Id {
        let mut cmd = Command::new(counter_bin());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .args(["--spare-wait", SPARE_WAIT_SECS])
            .args(["--role", role])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for v in HS_VARS {
            cmd.env_remove(v);
        }
        let mut child = cmd.spawn().expect("spawning the counter example");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.procs.push(Daemon {
            name: name.to_owned(),
            child,
            stdout: rx,
        });
        Id(self.procs.len() - 1)
    }

    /// Waits for the daemon's stdout line, which must say it listens on the port.
    fn wait_listening(&mut self, id: Id) {
        let want = format!(
            "listening on {}",
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
        );
        let d = &mut self.procs[id.0];
        match d.stdout.recv_timeout(PATIENCE) {
            Ok(line) => assert_eq!(line, want, "{}'s stdout", d.name),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} did not print {want:?} within {PATIENCE:?}", d.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = d.child.wait().expect("wait");
                panic!("{} exited ({status}) before printing {want:?}", d.name)
            }
        }
    }

    /// SIGKILLs a daemon (its spare takes over) and reaps it.
    fn kill_and_reap(&mut self, id: Id) {
        let d = &mut self.procs[id.0];
        d.child.kill().expect("SIGKILL the primary");
        let status = d.child.wait().expect("reaping the primary");
        assert!(!status.success(), "{} exited on its own ({status})", d.name);
    }

    /// Waits for a daemon to exit on its own.
    fn wait_exit(&mut self, id: Id) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let d = &mut self.procs[id.0];
        loop {
            if let Some(status) = d.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {PATIENCE:?}",
                d.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.procs {
            if let Ok(None) = d.child.try_wait() {
                let _ = d.child.kill();
                let _ = d.child.wait();
            }
        }
    }
}

/// A client connection speaking the counter's line protocol.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects, retrying while nobody listens (the port is between owners).
    fn connect(port: u16) -> Self {
        let deadline = Instant::now() + PATIENCE;
        let stream = loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "nobody listens on port {port} after {PATIENCE:?}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("set_read_timeout");
        let writer = stream.try_clone().expect("try_clone");
        Self {
            reader: BufReader::new(stream),
            writer,
        }
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("sending a request");
    }

    fn request(&mut self, line: &str) -> String {
        self.send(line);
        let mut reply = String::new();
        let n = self.reader.read_line(&mut reply).expect("reading a reply");
        assert!(n > 0, "the connection closed instead of answering {line:?}");
        assert!(reply.ends_with('\n'), "unterminated reply {reply:?}");
        reply.trim_end().to_owned()
    }

    fn count(&mut self, line: &str) -> u64 {
        let reply = self.request(line);
        reply
            .parse()
            .unwrap_or_else(|e| panic!("{line} got {reply:?}, not a count: {e}"))
    }

    /// Waits until a spare is connected, then INCRs once (its checkpoint is the spare's
    /// first, full one) and checks that the spare acknowledged it; returns the new count.
    fn sync_spare(&mut self, last: u64) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.request("STATUS");
            assert!(
                status.starts_with(&format!("count={last} ")),
                "STATUS {status:?} after {last}"
            );
            if status.contains(" spare=yes ") {
                break;
            }
            assert!(Instant::now() < deadline, "no spare connected: {status}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let last = self.incr_from(last, 1);
        let status = self.request("STATUS");
        assert!(status.ends_with(" synced=yes"), "STATUS {status:?}");
        last
    }

    /// `n` INCRs, each of which must answer one more than the one before; returns the last.
    fn incr_from(&mut self, mut last: u64, n: usize) -> u64 {
        for _ in 0..n {
            let got = self.count("INCR");
            assert_eq!(got, last + 1, "INCR after {last}");
            last = got;
        }
        last
    }
}

#[test]
fn help_and_bad_arguments() {
    let out = Command::new(counter_bin())
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(out.status.success(), "--help: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usage: counter --port N"), "{text}");

    for bad in [
        &[][..],
        &["--port"],
        &["--port", "70000"],
        &["--port", "1", "--role", "boss"],
        &["--port", "1", "--frobnicate"],
    ] {
        let out = Command::new(counter_bin())
            .args(bad)
            .output()
            .expect("running with bad arguments");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", out.status);
        assert!(out.stdout.is_empty(), "{bad:?} printed to stdout");
    }
}

/// Without a spare: the protocol, several requests per connection, reconnecting, refusals,
/// and a shutdown on request.
#[test]
fn standalone_counts_across_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut d = Daemons::new(port, &dir.path().join("hs"));
    let solo = d.start("standalone", "standalone");
    d.wait_listening(solo);

    let mut c = Client::connect(port);
    assert_eq!(c.count("GET"), 0);
    assert_eq!(c.incr_from(0, 5), 5);
    assert_eq!(c.count("GET"), 5);
    assert!(c.request("DECR").starts_with("ERR "));
    assert_eq!(c.request("STATUS"), "count=5 epoch=1 spare=no synced=no");
    assert_eq!(c.count(" INCR \r"), 6, "surrounding blanks are ignored");
    drop(c);

    let mut c = Client::connect(port);
    assert_eq!(c.count("GET"), 6);
    assert_eq!(c.request(&"X".repeat(100)), "ERR line too long");
    assert_eq!(c.count("GET"), 6, "the rest of a long line is skipped");
    drop(c);

    let mut c = Client::connect(port);
    assert_eq!(c.incr_from(6, 1), 7);
    assert_eq!(c.request("SHUTDOWN"), "BYE");
    let status = d.wait_exit(solo);
    assert!(status.success(), "standalone exited with {status}");
}

/// The primary is SIGKILLed while idle, then the promoted spare is SIGKILLed with an INCR in
/// flight; each time a new spare is started for the next round. The count goes on from
/// exactly the last acknowledged value (or one more, for the request whose answer was lost
/// with its primary), and a SHUTDOWN at the end stops the last primary and its spare.
#[test]
fn the_count_survives_killing_the_primary_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut d = Daemons::new(port, &dir.path().join("hs"));
    let primary = d.start("primary", "primary");
    let spare1 = d.start("spare 1", "spare");
    d.wait_listening(primary);

    let mut c = Client::connect(port);
    assert_eq!(c.count("GET"), 0);
    let last = c.incr_from(0, 20);
    let last = c.sync_spare(last);

    // Round 1: no request in flight; the first INCR on the new primary answers last + 1.
    d.kill_and_reap(primary);
    let spare2 = d.start("spare 2", "spare");
    d.wait_listening(spare1);
    let mut c = Client::connect(port);
    let last = c.incr_from(last, 20);
    assert_eq!(c.count("GET"), last);
    let last = c.sync_spare(last);

    // Round 2: an INCR is sent and its answer never read. Whether the dying primary
    // checkpointed it or not, the count is exactly one of the two, and goes on by one.
    c.send("INCR");
    d.kill_and_reap(spare1);
    let spare3 = d.start("spare 3", "spare");
    d.wait_listening(spare2);
    let mut c = Client::connect(port);
    let now = c.count("GET");
    assert!(
        now == last || now == last + 1,
        "after {last} and an unanswered INCR the count is {now}"
    );
    let last = c.incr_from(now, 20);
    let last = c.sync_spare(last);

    // A shutdown on purpose: the primary says goodbye and its spare stops too.
    assert_eq!(c.request("SHUTDOWN"), "BYE");
    let status = d.wait_exit(spare2);
    assert!(status.success(), "the last primary exited with {status}");
    let status = d.wait_exit(spare3);
    assert!(status.success(), "the last spare exited with {status}");
    assert!(last >= 60, "{last}");
}

/// A chain of failovers: each promoted spare gets a new spare, catches it up, and is killed
/// in turn, every other time with an INCR in flight.
#[test]
fn a_chain_of_failovers_keeps_counting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut d = Daemons::new(port, &dir.path().join("hs"));
    let mut primary = d.start("primary", "primary");
    let mut spare = d.start("spare 1", "spare");
    d.wait_listening(primary);
    let mut c = Client::connect(port);
    let mut last = c.incr_from(0, 3);
    last = c.sync_spare(last);
    for round in 1..=8 {
        let in_flight = round % 2 == 0;
        if in_flight {
            c.send("INCR");
        }
        d.kill_and_reap(primary);
        let next = d.start(&format!("spare {}", round + 1), "spare");
        d.wait_listening(spare);
        c = Client::connect(port);
        let now = c.count("GET");
        let ok = now == last || (in_flight && now == last + 1);
        assert!(
            ok,
            "round {round}: {now} after {last} (in flight: {in_flight})"
        );
        last = c.incr_from(now, 3);
        last = c.sync_spare(last);
        (primary, spare) = (spare, next);
    }
    assert_eq!(c.request("SHUTDOWN"), "BYE");
    assert!(d.wait_exit(primary).success(), "the last primary failed");
    assert!(d.wait_exit(spare).success(), "the last spare failed");
}
