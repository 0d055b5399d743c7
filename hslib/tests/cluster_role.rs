//! The game side of cluster mode with real processes over TCP on 127.0.0.1: a spare given an
//! order descriptor (`HS_PROMOTE_FD`) never takes over on its own (its primary SIGKILLed, it
//! waits; the end of the descriptor ends it with status 0, silently); `promote E` makes it the
//! primary of exactly epoch E, listening at its own `HS_LISTEN_ADDR`, where a new spare
//! connects and syncs; the order works while the old primary still streams, and a spare of the
//! new epoch refuses the old primary; a bad order (an epoch not above the one seen, junk,
//! nothing held) ends it with status 3. The spare's `holding` line is read on its silence
//! descriptor throughout.
//!
//! Every role is this test binary re-executed (`child_role`), configured by `HS_*` as a
//! supervisor would.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hslib::replica::{Replica, ReplicaError};
use hslib::session::SessionError;
use hslib::transport::{self, AuthKey, Endpoint, TcpConfig};
use hslib::wire;
use hslib::{Backend, HotSpare, HsError, Outcome, RegionId};
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const APP: &str = "cluster-role";
const REGION: RegionId = RegionId(970);
const KEY: &str = "cluster-role-test-key-0123456789";
/// Far longer than anything here takes on a loaded machine; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a spare is watched to not take over on its own.
const NO_TAKEOVER: Duration = Duration::from_millis(500);
/// What the worker prints on stdout starts with this (the test harness prints too).
const MARK: &str = "CR ";
/// The exit status of a refused order (as tetris's).
const REFUSED: i32 = 3;

/// The application: a counter in one page, incremented and checkpointed every 2 ms until the
/// file `CR_STOP` exists. It says on stdout when it starts (its epoch, where it was restored
/// from, the count) and when a spare is synced.
fn app() -> HotSpare<u64> {
    HotSpare::new(APP)
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .init(|ctx| {
            ctx.place(REGION, 0u64)?;
            Ok(())
        })
        .worker(|ctx| {
            let slot = ctx.root::<u64>(REGION)?;
            let restored = ctx.restored().map(|r| (r.checkpoint, r.from_epoch));
            let start = *ctx.get(REGION, slot)?;
            println!(
                "{MARK}started epoch={} restored={restored:?} count={start}",
                ctx.epoch()
            );
            let stop = PathBuf::from(std::env::var("CR_STOP")?);
            let mut synced = false;
            loop {
                *ctx.get_mut(REGION, slot)? += 1;
                ctx.checkpoint()?;
                if !synced && ctx.link_stats().synced {
                    synced = true;
                    println!("{MARK}synced");
                }
                if stop.exists() {
                    return Ok(*ctx.get(REGION, slot)?);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
}

/// Runs one role from the environment (the test binary re-executed by the tests below).
#[test]
#[ignore = "runs only as a child of the cluster role tests"]
fn child_role() {
    if !common::in_child() {
        return;
    }
    let hs = app()
        .from_env()
        .unwrap_or_else(|e| panic!("environment: {e}"));
    match hs.run() {
        Ok(Outcome::Finished { value, .. }) => println!("{MARK}finished count={value}"),
        Ok(Outcome::PrimaryFinished { checkpoint }) => {
            println!("{MARK}primary finished at {checkpoint:?}");
        }
        Ok(Outcome::Dropped { checkpoint }) => {
            println!("{MARK}dropped by the primary at {checkpoint:?}");
        }
        // Let go without an order: nothing to say.
        Ok(Outcome::Dismissed { .. }) => {}
        Err(e @ HsError::PromoteRefused { .. }) => {
            eprintln!("refused: {e}");
            std::process::exit(REFUSED);
        }
        Err(e) => panic!("run: {e}"),
    }
}

/// A port nobody listens on now (the kernel's pick, released again).
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("binding an ephemeral port: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// A pipe whose `keep` end is close-on-exec and whose other end a child inherits.
fn pipe_for_child(child_reads: bool) -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap_or_else(|e| panic!("pipe: {e}"));
    let (keep, give) = if child_reads { (w, r) } else { (r, w) };
    nix::fcntl::fcntl(
        &give,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap_or_else(|e| panic!("clearing close-on-exec: {e}"));
    (keep, give)
}

/// Lines read from `fd` by a thread, on a channel.
fn lines_of(fd: OwnedFd) -> Receiver<String> {
    lines(std::fs::File::from(fd))
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line on `rx` that holds `prefix`, from there on; panics past `PATIENCE`.
fn expect_line(rx: &Receiver<String>, prefix: &str, what: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // The test harness's "test child_role ... " precedes the first line.
            Ok(line) => {
                if let Some(at) = line.find(prefix) {
                    return line[at..].to_owned();
                }
            }
            Err(e) => panic!("no line starting {prefix:?} ({what}): {e}"),
        }
    }
}

/// One child process of the test binary in a role.
struct Role {
    child: Child,
    stdout: Receiver<String>,
    /// The silence descriptor's lines (spares).
    silence: Option<Receiver<String>>,
    /// The order descriptor's write end (cluster spares).
    orders: Option<OwnedFd>,
}

impl Role {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn order(&self, line: &str) {
        let fd = self
            .orders
            .as_ref()
            .unwrap_or_else(|| panic!("no order pipe"));
        nix::unistd::write(fd, line.as_bytes()).unwrap_or_else(|e| panic!("ordering: {e}"));
    }

    /// The first `{"holding":C,"epoch":E}` line: (C, E).
    fn holding(&self) -> (u64, u64) {
        let rx = self
            .silence
            .as_ref()
            .unwrap_or_else(|| panic!("no silence pipe"));
        let line = expect_line(rx, "{\"holding\":", "the spare's holding line");
        let num = |key: &str| -> u64 {
            let at = line
                .find(key)
                .unwrap_or_else(|| panic!("{key} in {line:?}"));
            line[at + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
        };
        assert!(line.ends_with('}'), "one JSON object: {line:?}");
        (num("\"holding\":"), num("\"epoch\":"))
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("try_wait: {e}"))
            {
                return s;
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn running_after(&mut self, pause: Duration) -> bool {
        std::thread::sleep(pause);
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("try_wait: {e}"))
            .is_none()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the roles of one test meet.
struct Test {
    dir: tempfile::TempDir,
}

impl Test {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    fn stop_file(&self) -> PathBuf {
        self.dir.path().join("stop")
    }

    fn stop(&self) {
        std::fs::write(self.stop_file(), "stop").unwrap_or_else(|e| panic!("stop file: {e}"));
    }

    fn spawn(&self, envs: &[(&str, String)], keep: Vec<OwnedFd>) -> Child {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let mut cmd = Command::new(exe);
        cmd.args([
            "child_role",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(common::CHILD_ENV, "1")
        .env_remove("HS_TRACKER")
        .env("HS_TRANSPORT", "tcp")
        .env("HS_KEY", KEY)
        .env("CR_STOP", self.stop_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning a role: {e}"));
        // The child's ends are the child's now.
        drop(keep);
        child
    }

    fn role(&self, envs: &[(&str, String)], keep: Vec<OwnedFd>) -> Role {
        let mut child = self.spawn(envs, keep);
        let stdout = lines(child.stdout.take().unwrap_or_else(|| panic!("stdout")));
        Role {
            child,
            stdout,
            silence: None,
            orders: None,
        }
    }

    /// A fresh primary of `epoch` listening at `addr`.
    fn primary(&self, addr: SocketAddr, epoch: u64) -> Role {
        let p = self.role(
            &[
                ("HS_ROLE", "primary".to_owned()),
                ("HS_TCP_ADDR", addr.to_string()),
                ("HS_EPOCH", epoch.to_string()),
            ],
            Vec::new(),
        );
        expect_line(&p.stdout, MARK, "the primary started");
        p
    }

    /// A spare of the primary at `primary`, listening at `listen` once promoted, with a
    /// silence descriptor and (when `cluster`) an order descriptor.
    fn spare(&self, primary: SocketAddr, listen: SocketAddr, cluster: bool) -> Role {
        let (silence_keep, silence_give) = pipe_for_child(false);
        let mut envs = vec![
            ("HS_ROLE", "spare".to_owned()),
            ("HS_TCP_ADDR", primary.to_string()),
            ("HS_LISTEN_ADDR", listen.to_string()),
            ("HS_SILENCE_FD", silence_give.as_raw_fd().to_string()),
        ];
        let mut give = vec![silence_give];
        let mut orders = None;
        if cluster {
            let (keep, g) = pipe_for_child(true);
            envs.push(("HS_PROMOTE_FD", g.as_raw_fd().to_string()));
            give.push(g);
            orders = Some(keep);
        }
        let mut r = self.role(&envs, give);
        r.silence = Some(lines_of(silence_keep));
        r.orders = orders;
        r
    }
}

/// The worker's `started` line: (epoch, restored from (checkpoint, epoch)).
fn started(line: &str) -> (u64, String) {
    let epoch = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("epoch="))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {line:?}"));
    let restored = line
        .split_once("restored=")
        .map(|(_, r)| r.split(" count=").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    (epoch, restored)
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn a_cluster_spare_whose_primary_is_killed_waits_and_the_end_of_its_orders_ends_it_with_0() {
    let t = Test::new();
    let (a, b) = (free_addr(), free_addr());
    let mut p = t.primary(a, 5);
    let mut s = t.spare(a, b, true);
    let (checkpoint, epoch) = s.holding();
    assert!(checkpoint >= 1, "a whole checkpoint: {checkpoint}");
    assert_eq!(epoch, 5, "the primary's epoch");
    kill(p.pid(), Signal::SIGKILL).unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    p.wait();
    assert!(
        s.running_after(NO_TAKEOVER),
        "the spare ended after its primary died, without an order"
    );
    assert!(
        refuses_connections(b),
        "the spare listens at {b} without an order: it took over on its own"
    );
    // The agent lets it go.
    drop(s.orders.take());
    let status = s.wait();
    assert_eq!(status.code(), Some(0), "dismissed: {status}");
    let said: Vec<String> = s.stdout.try_iter().filter(|l| l.contains(MARK)).collect();
    assert!(said.is_empty(), "a dismissed spare played: {said:?}");
}

#[test]
fn a_promote_order_makes_the_spare_primary_of_that_epoch_at_its_listen_addr() {
    let t = Test::new();
    let (a, b, c) = (free_addr(), free_addr(), free_addr());
    let mut p = t.primary(a, 5);
    let mut s = t.spare(a, b, true);
    let (held, _) = s.holding();
    kill(p.pid(), Signal::SIGKILL).unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    p.wait();
    s.order("promote 9\n");
    let line = expect_line(&s.stdout, MARK, "the promoted spare started");
    let (epoch, restored) = started(&line);
    assert_eq!(epoch, 9, "exactly the ordered epoch: {line}");
    assert!(
        restored.starts_with("Some((") && restored.ends_with(", 5))"),
        "restored from an epoch-5 checkpoint: {line}"
    );
    let from: u64 = restored["Some((".len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("checkpoint in {line}"));
    assert!(from >= held, "restored from {from}, but held {held} before");
    // A new spare (a cluster one, as an agent starts it) connects at the listen address.
    let s2 = t.spare(b, c, true);
    let (_, epoch2) = s2.holding();
    assert_eq!(
        epoch2, 9,
        "the new spare holds a checkpoint of the promoted primary"
    );
    expect_line(
        &s.stdout,
        &format!("{MARK}synced"),
        "the promoted primary synced",
    );
    t.stop();
    expect_line(
        &s.stdout,
        &format!("{MARK}finished"),
        "the promoted game ended",
    );
    assert_eq!(s.wait().code(), Some(0));
}

#[test]
fn a_promote_order_while_the_primary_streams_cuts_it_and_the_old_primary_is_refused() {
    let t = Test::new();
    let (a, b) = (free_addr(), free_addr());
    let mut p = t.primary(a, 5);
    let mut s = t.spare(a, b, true);
    s.holding();
    // The primary checkpoints every 2 ms: the spare's stream is open and busy.
    s.order("promote 6\n");
    let line = expect_line(&s.stdout, MARK, "the promoted spare started");
    assert_eq!(started(&line).0, 6, "exactly the ordered epoch: {line}");
    assert!(
        p.running_after(Duration::ZERO),
        "the old primary is alive and still checkpointing"
    );
    // A spare of the new epoch: this process, with a replica of its own.
    let config = TcpConfig::new(Some(
        AuthKey::new(KEY).unwrap_or_else(|e| panic!("key: {e}")),
    ));
    let mut replica = Replica::default();
    // It listens once its standby thread has bound the address: after its first checkpoint,
    // or 2 ms after it started, whichever comes first.
    let until = Instant::now() + PATIENCE;
    let mut new = loop {
        match transport::tcp::connect(b, &config) {
            Ok(c) => break c,
            Err(e) if Instant::now() < until => {
                eprintln!("not yet listening at {b}: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("connecting to the promoted primary at {b}: {e}"),
        }
    };
    new.set_read_timeout(Some(PATIENCE))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    while replica.checkpoint().is_none() {
        let frame = wire::read_frame(&mut new)
            .unwrap_or_else(|e| panic!("reading the promoted primary: {e}"))
            .unwrap_or_else(|| panic!("the promoted primary closed the stream"));
        if let Some(ack) = replica
            .accept(frame)
            .unwrap_or_else(|e| panic!("the promoted primary's frame refused: {e}"))
            && let Some((epoch, seq)) = replica.take_ack_slot()
        {
            wire::write_ack(&mut new, epoch, seq, &ack).unwrap_or_else(|e| panic!("ack: {e}"));
        }
    }
    assert_eq!(replica.committed().map(|c| c.epoch), Some(6));
    let _ = new.shutdown();
    replica.end_session();
    // The old primary still serves spares at its own address: its hello (epoch 5) is
    // refused by a replica that saw epoch 6, and its checkpoints never reach the image.
    let digest = replica.digest();
    let mut old = transport::tcp::connect(a, &config)
        .unwrap_or_else(|e| panic!("connecting to the old primary at {a}: {e}"));
    let refused = hslib::session::serve_spare(&mut replica, &mut old, PATIENCE);
    assert!(
        matches!(
            refused,
            Err(SessionError::Replica {
                source: ReplicaError::StaleEpoch {
                    found: 5,
                    highest: 6
                },
                ..
            })
        ),
        "the old primary's session was not refused as stale: {refused:?}"
    );
    assert_eq!(replica.digest(), digest, "the image changed");
    assert_eq!(replica.committed().map(|c| c.epoch), Some(6));
    t.stop();
    expect_line(
        &s.stdout,
        &format!("{MARK}finished"),
        "the promoted game ended",
    );
    assert_eq!(s.wait().code(), Some(0));
}

/// Waits for `role` to exit with [`REFUSED`], having said `why` on stderr and played nothing.
fn refused(role: &mut Role, why: &str) {
    let status = role.wait();
    let mut stderr = String::new();
    if let Some(mut e) = role.child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)
            .unwrap_or_else(|e| panic!("stderr: {e}"));
    }
    assert_eq!(status.code(), Some(REFUSED), "{why}: {status}; {stderr}");
    assert!(stderr.contains(why), "the message says {why:?}: {stderr}");
    let said: Vec<String> = role
        .stdout
        .try_iter()
        .filter(|l| l.contains(MARK))
        .collect();
    assert!(said.is_empty(), "a refused spare played: {said:?}");
}

#[test]
fn bad_orders_are_refused_with_status_3() {
    let t = Test::new();
    let (a, nobody) = (free_addr(), free_addr());
    let mut p = t.primary(a, 5);
    // An epoch not above the one seen, and junk, from spares that hold a checkpoint (one
    // after the other: a primary serves one spare, a newcomer replaces the one before).
    for (order, why) in [
        ("promote 5\n", "is not above epoch 5"),
        ("please take over\n", "not an order"),
    ] {
        let mut spare = t.spare(a, free_addr(), true);
        spare.holding();
        spare.order(order);
        refused(&mut spare, why);
    }
    // Nothing held: a spare whose primary never answered.
    let mut empty = t.spare(nobody, free_addr(), true);
    empty.order("promote 9\n");
    refused(&mut empty, "holds no whole checkpoint");
    assert!(
        p.running_after(Duration::ZERO),
        "the primary went on meanwhile"
    );
    t.stop();
    assert_eq!(p.wait().code(), Some(0));
}

/// Without an order descriptor nothing changes: a spare whose primary is SIGKILLed takes over
/// on its own (with an epoch above the primary's), listening at its `HS_LISTEN_ADDR`.
#[test]
fn a_local_spare_still_takes_over_on_its_own_at_its_listen_addr() {
    let t = Test::new();
    let (a, b, c) = (free_addr(), free_addr(), free_addr());
    let mut p = t.primary(a, 5);
    let mut s = t.spare(a, b, false);
    s.holding();
    kill(p.pid(), Signal::SIGKILL).unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    p.wait();
    let line = expect_line(&s.stdout, MARK, "the spare took over");
    assert_eq!(started(&line).0, 6, "one above the primary's epoch: {line}");
    let s2 = t.spare(b, c, false);
    assert_eq!(s2.holding().1, 6);
    t.stop();
    expect_line(
        &s.stdout,
        &format!("{MARK}finished"),
        "the promoted game ended",
    );
    assert_eq!(s.wait().code(), Some(0));
}

#[test]
fn listen_settings_are_validated() {
    let bad = |vars: &[(&str, &str)]| {
        let got = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        };
        app().from_vars(got).and_then(|hs| hs.run().map(|_| ()))
    };
    let err = bad(&[("HS_LISTEN_ADDR", "localhost:80")]).expect_err("a host name");
    assert!(err.to_string().contains("HS_LISTEN_ADDR"), "{err}");
    let err = bad(&[("HS_LISTEN_NAME", "a/b")]).expect_err("a path");
    assert!(err.to_string().contains("HS_LISTEN_NAME"), "{err}");
    let err = bad(&[("HS_PROMOTE_FD", "x")]).expect_err("not a number");
    assert!(err.to_string().contains("HS_PROMOTE_FD"), "{err}");
    let err = bad(&[("HS_PROMOTE_FD", "987")]).expect_err("not open");
    assert!(err.to_string().contains("not open"), "{err}");
    // A listen address for another transport than the link's.
    let err = bad(&[("HS_TRANSPORT", "null"), ("HS_LISTEN_ADDR", "127.0.0.1:1")])
        .expect_err("tcp listen address on a null link");
    assert!(err.to_string().contains("tcp transport"), "{err}");
}
