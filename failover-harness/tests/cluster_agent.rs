//! `failover-harness agent` on hosts in network namespaces (root and etcd; skipped with the
//! reason otherwise, unless `HOTSPARE_REQUIRE_NETNS=1` / `HOTSPARE_REQUIRE_ETCD=1`): etcd on a
//! host of its own, two agent hosts, and a test client in a client host speaking `proto`
//! directly (a headless client: the key log is the script's inputs, one byte given only
//! while the leader's spare is synced).
//!
//! - a new session: one agent's game leads, the other's is a synced spare, `status --json`
//!   says so; SIGKILLs of the primary's game (`Axe`): the spare's agent leads a higher
//!   epoch, the old primary's agent becomes the spare, and the game's end is exactly the
//!   uninterrupted `tetris --headless`'s;
//! - the primary's host axed: the spare leads after the lease expires, and via the fast path
//!   when the client writes the suspect key;
//! - the primary cut off from etcd only: its game is stopped (`fenced`) before the other node
//!   leads.
//!
//! Failover times are printed (`--nocapture`), never asserted.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Guard, cluster_prerequisites as prerequisites, harness, ok, reference, script};
use hotspare_cluster::coordinator::{Coordinator, EtcdSession};
use hotspare_cluster::netns::Rig;
use hotspare_cluster::proto::{self, ToAgent, ToClient};
use hotspare_cluster::server::{EtcdProcess, READY_WAIT};
use hslib::transport::tcp::{AuthKey, TcpConfig};

/// The port agents serve clients on (their games' streams: the next one).
const AGENT_PORT: u16 = 7000;

/// A rig with etcd on host "etcd", agents started on demand, a key file.
struct Cluster {
    agents: BTreeMap<String, Guard>,
    rig: Rig,
    dir: tempfile::TempDir,
    _etcd: EtcdProcess,
    url: String,
    key_file: PathBuf,
    session: String,
}

impl Cluster {
    fn new(names: &[&str], session: &str) -> Self {
        let rig = ok(Rig::new(names));
        let dir = ok(tempfile::tempdir());
        let ip = ok(rig.host("etcd")).ip.clone();
        let ns = ok(rig.host("etcd")).ns.clone();
        let mut etcd = ok(EtcdProcess::start(dir.path(), &ip, 2379, 2380, Some(&ns)));
        ok(ok(rig.in_host("etcd", || etcd.wait_ready(READY_WAIT))));
        let url = etcd.url().to_owned();
        let key_file = dir.path().join("hs.key");
        let mut key = [0u8; 32];
        ok(getrandom::fill(&mut key));
        ok(std::fs::write(&key_file, key));
        ok(std::fs::set_permissions(
            &key_file,
            std::fs::Permissions::from_mode(0o600),
        ));
        Self {
            agents: BTreeMap::new(),
            rig,
            dir,
            _etcd: etcd,
            url,
            key_file,
            session: session.to_owned(),
        }
    }

    fn events_path(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("{host}.events"))
    }

    fn start_agent(&mut self, host: &str) {
        let ip = ok(self.rig.host(host)).ip.clone();
        let mut cmd = ok(self.rig.exec(host, env!("CARGO_BIN_EXE_failover-harness")));
        let clean = harness();
        for (k, v) in clean.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let stderr = ok(std::fs::File::create(
            self.dir.path().join(format!("{host}.stderr")),
        ));
        cmd.args(["agent", "--etcd", &self.url, "--session", &self.session])
            .args(["--name", host, "--listen", &format!("{ip}:{AGENT_PORT}")])
            .arg("--key-file")
            .arg(&self.key_file)
            .arg("--events")
            .arg(self.events_path(host))
            .env(
                "FAILOVER_HARNESS_LOG",
                self.dir.path().join(format!("{host}.log")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        self.agents.insert(host.to_owned(), Guard(ok(cmd.spawn())));
    }

    /// `failover-harness status --etcd URL --session S --json`, run in host "client".
    fn status(&self) -> serde_json::Value {
        let mut cmd = ok(self
            .rig
            .exec("client", env!("CARGO_BIN_EXE_failover-harness")));
        cmd.args([
            "status",
            "--etcd",
            &self.url,
            "--session",
            &self.session,
            "--json",
        ]);
        let out = ok(cmd.output());
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ok(serde_json::from_slice(&out.stdout))
    }

    /// Polls `status --json` until `pred` holds (or fails the test after `within`).
    fn wait_status(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; status {s}; {}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn diagnostics(&self) -> String {
        let mut s = String::new();
        for host in self.agents.keys() {
            for ext in ["events", "stderr", "log"] {
                let p = self.dir.path().join(format!("{host}.{ext}"));
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s.push_str(&format!("\n--- {host}.{ext}:\n"));
                for l in tail.iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// The events an agent wrote.
    fn events(&self, host: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.events_path(host))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn client_params(&self) -> ClientParams {
        ClientParams {
            url: self.url.clone(),
            session: self.session.clone(),
            key: ok(std::fs::read(&self.key_file)),
        }
    }
}

/// The test client's settings.
#[derive(Clone)]
struct ClientParams {
    url: String,
    session: String,
    key: Vec<u8>,
}

/// A fault the test client causes or asks for, once it has given a number of inputs.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// It sends `Axe` to the leader's agent (SIGKILL of the primary's game).
    Axe,
    /// It asks the test's main thread (which holds the rig) and waits for the fault's instant;
    /// with `suspect`, it writes `suspect/<epoch>` after [`SUSPECT`] without a frame.
    Main {
        /// Take part in the fast path.
        suspect: bool,
    },
}

/// A headless game played through the agents.
struct Played {
    output: Vec<u8>,
    /// Per failover: the epoch before and after, ms from the fault to the first frame of the
    /// new epoch.
    recoveries: Vec<(u64, u64, f64)>,
}

/// One connection to a leader's agent.
struct Conn {
    stream: TcpStream,
    epoch: u64,
    frames: mpsc::Receiver<Result<ToClient, String>>,
}

const SUSPECT: Duration = Duration::from_millis(150);

/// Connects to whoever leads an epoch >= `highest`, until `deadline`; the connection and its
/// `Leading` position.
fn connect_leader(
    p: &ClientParams,
    coord: &EtcdSession,
    highest: u64,
    deadline: Instant,
) -> (Conn, u64) {
    connect_leader_echoing(
        p,
        coord,
        highest,
        deadline,
        &Arc::new(AtomicBool::new(true)),
    )
}

/// [`connect_leader`], the connection echoing the agent's heartbeats (as the client does)
/// only while `echo` is set.
fn connect_leader_echoing(
    p: &ClientParams,
    coord: &EtcdSession,
    highest: u64,
    deadline: Instant,
    echo_on: &Arc<AtomicBool>,
) -> (Conn, u64) {
    let config = TcpConfig::new(Some(ok(AuthKey::new(p.key.clone()))));
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader of epoch >= {highest} in time"
        );
        let leader = coord.leader().ok().flatten();
        if let Some(l) = leader.filter(|l| l.epoch >= highest) {
            let addr: SocketAddr = ok(l.node.client_addr.parse());
            if let Ok(ep) = hslib::transport::tcp::connect(addr, &config) {
                let mut stream = ok(ep.stream().try_clone());
                let reader = ok(ep.stream().try_clone());
                let mut echo = ok(ep.stream().try_clone());
                drop(ep);
                let (tx, rx) = mpsc::channel();
                let echo_on = echo_on.clone();
                std::thread::spawn(move || {
                    let mut reader = reader;
                    loop {
                        let r =
                            proto::read_frame::<ToClient>(&mut reader).map_err(|e| e.to_string());
                        // Echoed at once, as the client does: the agent relays only while
                        // its heartbeats come back.
                        if let Ok(ToClient::Heartbeat { stamp, .. }) = &r
                            && echo_on.load(Ordering::SeqCst)
                        {
                            let _ = proto::write_frame(&mut echo, &ToAgent::Echo { stamp: *stamp });
                        }
                        let end = r.is_err();
                        if tx.send(r).is_err() || end {
                            return;
                        }
                    }
                });
                let hello = ToAgent::Hello {
                    session: p.session.clone(),
                    epoch: highest,
                    suspect_ms: 150,
                };
                if proto::write_frame(&mut stream, &hello).is_ok() {
                    match rx.recv_timeout(Duration::from_secs(3)) {
                        Ok(Ok(ToClient::Leading {
                            epoch, position, ..
                        })) if epoch >= highest => {
                            return (
                                Conn {
                                    stream,
                                    epoch,
                                    frames: rx,
                                },
                                position,
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Plays `script` headless through the session's leaders: one input at a time while the
/// leader's spare is synced (without faults: at once); at each input of `faults` asks the main thread for a fault and
/// records the recovery. Returns the game's result line.
fn play(
    p: &ClientParams,
    script: &[u8],
    faults: &[(usize, Fault)],
    asks: &mpsc::Sender<usize>,
    answers: &mpsc::Receiver<Instant>,
) -> Played {
    let coord = ok(EtcdSession::new(
        &p.url,
        &p.session,
        Duration::from_millis(500),
    ));
    let config = serde_json::json!({"args": ["--seed", "7", "-l", "2"], "headless": true});
    ok(coord.config_or_init(config.to_string().as_bytes()));
    let lease = ok(coord.grant(5));
    let log: Vec<u8> = script
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\n' | b'\r'))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut conn, position) = connect_leader(p, &coord, 0, deadline);
    let mut next = usize::try_from(position)
        .unwrap_or(usize::MAX)
        .min(log.len());
    let mut synced = false;
    let mut fault_at: Option<Instant> = None;
    let mut faults_left: Vec<(usize, Fault)> = faults.iter().rev().copied().collect();
    let mut recoveries = Vec::new();
    let mut last_frame = Instant::now();
    let mut suspected = false;
    let mut suspect = false;
    let mut end_sent = false;
    loop {
        assert!(Instant::now() < deadline, "the game did not end in time");
        let mut lost = false;
        match conn.frames.recv_timeout(Duration::from_millis(1)) {
            Ok(Ok(frame)) => {
                last_frame = Instant::now();
                match frame {
                    ToClient::Heartbeat {
                        epoch,
                        spare_synced,
                        ..
                    } if epoch == conn.epoch => synced = spare_synced,
                    ToClient::Ended {
                        epoch,
                        finished: true,
                        output,
                    } if epoch == conn.epoch => {
                        let _ = coord.revoke(lease);
                        return Played { output, recoveries };
                    }
                    ToClient::Ended { .. } => lost = true,
                    _ => {}
                }
            }
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => lost = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let silent = last_frame.elapsed();
        if suspect && !suspected && silent >= SUSPECT {
            suspected = true;
            ok(coord.suspect(conn.epoch, Some(lease)));
        }
        // Silence: a higher epoch may lead already (a host gone without a FIN).
        let moved = silent >= Duration::from_millis(5)
            && coord
                .leader()
                .ok()
                .flatten()
                .is_some_and(|l| l.epoch > conn.epoch);
        if lost || moved {
            let (c, position) = connect_leader(p, &coord, conn.epoch + 1, deadline);
            if let Some(at) = fault_at.take() {
                recoveries.push((conn.epoch, c.epoch, at.elapsed().as_secs_f64() * 1000.0));
            }
            conn = c;
            next = usize::try_from(position)
                .unwrap_or(usize::MAX)
                .min(log.len());
            synced = false;
            suspected = false;
            suspect = false;
            end_sent = false;
            last_frame = Instant::now();
            continue;
        }
        if fault_at.is_some() || (!synced && !faults.is_empty()) {
            continue;
        }
        if let Some(&(at, fault)) = faults_left.last()
            && next >= at
        {
            faults_left.pop();
            match fault {
                Fault::Axe => {
                    fault_at = Some(Instant::now());
                    ok(proto::write_frame(&mut conn.stream, &ToAgent::Axe));
                }
                Fault::Main { suspect: s } => {
                    ok(asks.send(next));
                    fault_at = Some(ok(answers.recv()));
                    suspect = s;
                }
            }
            continue;
        }
        if next < log.len() {
            let keys = ToAgent::Keys {
                offset: next as u64,
                bytes: vec![log[next]],
            };
            if proto::write_frame(&mut conn.stream, &keys).is_ok() {
                next += 1;
            }
        } else if !end_sent {
            let end = ToAgent::EndInput {
                offset: log.len() as u64,
            };
            end_sent = proto::write_frame(&mut conn.stream, &end).is_ok();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(what: &str, recoveries: &[(u64, u64, f64)]) {
    let mut ms: Vec<f64> = recoveries.iter().map(|r| r.2).collect();
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "{what}: {} failovers, fault to the new epoch's first frame at the client: p50 {:.1} ms, \
         p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.first().copied().unwrap_or(f64::NAN),
        ms.last().copied().unwrap_or(f64::NAN),
    );
}

/// From the agents' events: per promotion, the dying game's end seen by its agent -> that
/// agent's revoke -> the heir's promote order (medians, ms).
fn print_breakdown(c: &Cluster) {
    let all: Vec<serde_json::Value> = c.agents.keys().flat_map(|h| c.events(h)).collect();
    let t = |e: &serde_json::Value| e["t_us"].as_u64().unwrap_or(0);
    let (mut revoke, mut lead) = (Vec::new(), Vec::new());
    for l in all
        .iter()
        .filter(|e| e["event"] == "leading" && e["promoted"] == true)
    {
        let old = l["after"].as_u64();
        let Some(death) = all.iter().find(|e| {
            e["event"] == "game_ended" && e["epoch"].as_u64() == old && e["node"] != l["node"]
        }) else {
            continue;
        };
        if let Some(r) = all
            .iter()
            .filter(|e| e["event"] == "revoked" && e["node"] == death["node"] && t(e) >= t(death))
            .min_by_key(|e| t(e))
        {
            revoke.push((t(r) - t(death)) as f64 / 1000.0);
        }
        lead.push(t(l).saturating_sub(t(death)) as f64 / 1000.0);
    }
    revoke.sort_by(f64::total_cmp);
    lead.sort_by(f64::total_cmp);
    eprintln!(
        "  agents' view ({} promotions): game death seen -> lease revoked p50 {:.2} ms; \
         -> heir's promote order p50 {:.2} ms (max {:.2})",
        lead.len(),
        percentile(&revoke, 0.5),
        percentile(&lead, 0.5),
        lead.last().copied().unwrap_or(f64::NAN)
    );
}

/// The inputs a headless result line says the game consumed.
fn consumed_inputs(result: &[u8]) -> usize {
    let v: serde_json::Value = ok(serde_json::from_slice(result));
    v["inputs"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| panic!("no inputs in {v}"))
}

/// The uninterrupted game's output for `script`.
fn uninterrupted(dir: &Path, script_bytes: &[u8]) -> Vec<u8> {
    let path = dir.join("script");
    ok(std::fs::write(&path, script_bytes));
    reference(&[&"--seed", &"7", &"-l", &"2", &"--script", &path])
}

/// Starts agent `first`, writes the config, waits until it leads; then `second`, until its
/// game is the synced spare. The first leader's epoch.
fn new_session(c: &mut Cluster, first: &str, second: &str) -> u64 {
    let config = serde_json::json!({"args": ["--seed", "7", "-l", "2"], "headless": true});
    new_session_with(c, first, second, config)
}

/// [`new_session`] with the config `config`.
fn new_session_with(c: &mut Cluster, first: &str, second: &str, config: serde_json::Value) -> u64 {
    c.start_agent(first);
    let p = c.client_params();
    ok(ok(c.rig.in_host("client", move || {
        let coord = ok(EtcdSession::new(
            &p.url,
            &p.session,
            Duration::from_millis(500),
        ));
        coord.config_or_init(config.to_string().as_bytes())
    })));
    let s = c.wait_status("the first agent leads", Duration::from_secs(20), |s| {
        s["primary"] == first
    });
    c.start_agent(second);
    let s2 = c.wait_status(
        "the second agent's spare syncs",
        Duration::from_secs(20),
        |s| s["spare"] == second,
    );
    assert_eq!(s2["primary"], first, "{s2}");
    assert_eq!(s2["failovers"], 0, "{s2}");
    s["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch in {s}"))
}

/// Plays `script_bytes` from host "client" with `faults`; `on_fault` runs on this thread (the
/// rig's) for each `Fault::Main`, with the input count, and sends the fault's instant on the
/// sender it is given as soon as it has it (it may go on working after).
fn play_with(
    c: &mut Cluster,
    script_bytes: &[u8],
    faults: &[(usize, Fault)],
    mut on_fault: impl FnMut(&mut Cluster, usize, &mpsc::Sender<Instant>),
) -> Played {
    let p = c.client_params();
    let (ask_tx, ask_rx) = mpsc::channel();
    let (ans_tx, ans_rx) = mpsc::channel();
    let sb = script_bytes.to_vec();
    let fs = faults.to_vec();
    let client = ok(c
        .rig
        .spawn_in_host("client", move || play(&p, &sb, &fs, &ask_tx, &ans_rx)));
    for n in ask_rx.iter() {
        on_fault(c, n, &ans_tx);
    }
    match client.join() {
        Ok(Ok(played)) => played,
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the client failed; {}", c.diagnostics()),
    }
}

#[test]
fn a_lone_primary_plays_a_headless_game_through_its_agent_to_the_exact_end() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "client"], "lone");
    c.start_agent("a");
    let script_bytes = script(13, 300);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    // Before the game: a hello from the future is not led; a key below what was given is
    // skipped, a key past it (a gap) closes the connection.
    let p = c.client_params();
    let prefix: Vec<u8> = script_bytes
        .iter()
        .copied()
        .filter(|b| *b != b'\n')
        .take(3)
        .collect();
    let config = serde_json::json!({"args": ["--seed", "7", "-l", "2"], "headless": true});
    ok(c.rig.in_host("client", move || {
        let coord = ok(EtcdSession::new(
            &p.url,
            &p.session,
            Duration::from_millis(500),
        ));
        ok(coord.config_or_init(config.to_string().as_bytes()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, position) = connect_leader(&p, &coord, 0, deadline);
        assert_eq!(position, 0);
        let mut future = ok(hslib::transport::tcp::connect(
            ok(ok(coord.leader())
                .map(|l| l.node.client_addr)
                .unwrap_or_default()
                .parse()),
            &TcpConfig::new(Some(ok(AuthKey::new(p.key.clone())))),
        ));
        let hello = ToAgent::Hello {
            session: p.session.clone(),
            epoch: conn.epoch + 1000,
            suspect_ms: 150,
        };
        ok(proto::write_frame(&mut future, &hello));
        let answer: ToClient = ok(proto::read_frame(&mut future));
        assert!(matches!(answer, ToClient::NotLeading { .. }), "{answer:?}");
        // The first three inputs, the second one twice over.
        for (offset, bytes) in [(0, &prefix[..2]), (1, &prefix[1..3])] {
            let keys = ToAgent::Keys {
                offset,
                bytes: bytes.to_vec(),
            };
            ok(proto::write_frame(&mut conn.stream, &keys));
        }
        let gap = ToAgent::Keys {
            offset: 10,
            bytes: b"j".to_vec(),
        };
        ok(proto::write_frame(&mut conn.stream, &gap));
        loop {
            match conn.frames.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("a gap left the connection open"),
            }
        }
    }));
    // The game goes on from the position its agent gives: 3 inputs in.
    let played = play_with(&mut c, &script_bytes, &[], |_, _, _| {});
    assert_eq!(
        String::from_utf8_lossy(&played.output),
        String::from_utf8_lossy(&want),
        "the game's end differs from the uninterrupted game's; {}",
        c.diagnostics()
    );
    let s = c.status();
    assert_eq!(s["primary"], "a", "{s}");
    assert_eq!(s["failovers"], 0, "{s}");
    // Without --json, a line for people.
    let mut cmd = ok(c.rig.exec("client", env!("CARGO_BIN_EXE_failover-harness")));
    cmd.args(["status", "--etcd", &c.url, "--session", &c.session]);
    let out = ok(cmd.output());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("session lone: primary a (epoch "),
        "{text}"
    );
}

/// The key log of a headless script: its inputs without the line breaks.
fn key_log(script_bytes: &[u8]) -> Vec<u8> {
    script_bytes
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\n' | b'\r'))
        .collect()
}

/// Reads `conn` until its game's result (`Ended`, finished); `what` names the wait in a
/// failure.
fn game_result(conn: &Conn, what: &str) -> Vec<u8> {
    loop {
        match conn.frames.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(ToClient::Ended {
                finished: true,
                output,
                ..
            })) => return output,
            Ok(Ok(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// The game's result equals the uninterrupted one's, and host `host`'s agent said every one
/// of `events`.
fn assert_exact_with_events(c: &Cluster, end: &[u8], want: &[u8], host: &str, events: &[&str]) {
    assert_eq!(
        String::from_utf8_lossy(end),
        String::from_utf8_lossy(want),
        "the game's end differs from the uninterrupted game's; {}",
        c.diagnostics()
    );
    let said = c.events(host);
    for e in events {
        assert!(
            said.iter().any(|s| s["event"] == *e),
            "{host} never said {e}: {said:#?}"
        );
    }
}

/// The relay's hold: an agent gives its game no key, and so a headless game no end of input,
/// while its client's echoes are missing (a client cut off one way, or gone quiet); once the
/// echoes come back the game gets everything and ends exactly as uninterrupted.
#[test]
fn an_agent_gives_its_game_no_key_while_its_clients_echoes_are_missing() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "client"], "held");
    c.start_agent("a");
    let script_bytes = script(21, 200);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    let log = key_log(&script_bytes);
    let p = c.client_params();
    let config = serde_json::json!({"args": ["--seed", "7", "-l", "2"], "headless": true});
    let end = ok(c.rig.in_host("client", move || {
        let coord = ok(EtcdSession::new(
            &p.url,
            &p.session,
            Duration::from_millis(500),
        ));
        ok(coord.config_or_init(config.to_string().as_bytes()));
        let echo = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, position) = connect_leader_echoing(&p, &coord, 0, deadline, &echo);
        assert_eq!(position, 0);
        let keys = ToAgent::Keys {
            offset: 0,
            bytes: log.clone(),
        };
        ok(proto::write_frame(&mut conn.stream, &keys));
        let end = ToAgent::EndInput {
            offset: log.len() as u64,
        };
        ok(proto::write_frame(&mut conn.stream, &end));
        // Without echoes: heartbeats, and nothing of the game's (its result would be a few
        // milliseconds away if the keys reached it).
        let quiet_until = Instant::now() + Duration::from_millis(600);
        let mut beats = 0;
        while Instant::now() < quiet_until {
            match conn.frames.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(ToClient::Heartbeat { position, .. })) => {
                    beats += 1;
                    assert_eq!(position, 0, "the game took keys while held");
                }
                Ok(Ok(other)) => panic!("while held: {other:?}"),
                Ok(Err(e)) => panic!("the connection failed while held: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the connection ended"),
            }
        }
        assert!(
            beats >= 10,
            "{beats} heartbeats in 600 ms (one every 25 ms)"
        );
        echo.store(true, Ordering::SeqCst);
        game_result(&conn, "no end after the echoes came back")
    }));
    assert_exact_with_events(&c, &end, &want, "a", &["held", "released"]);
}

/// A lone primary (no spare holds its game) cut off from etcd past its lease: its agent is
/// fenced, but instead of killing the game's only copy it stops it (SIGSTOP) and keeps it;
/// once etcd answers again, nobody having led since, it leads again with a new epoch, its
/// game continued, and the game ends exactly as uninterrupted.
#[test]
fn a_fenced_primary_no_spare_holds_is_kept_and_leads_again_when_etcd_returns() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "client"], "kept");
    c.start_agent("a");
    let script_bytes = script(31, 240);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    let log = key_log(&script_bytes);
    let half = log.len() / 2;
    let p = c.client_params();
    let config = serde_json::json!({"args": ["--seed", "7", "-l", "2"], "headless": true});
    let first_half = log[..half].to_vec();
    let e1 = ok(c.rig.in_host("client", {
        let p = p.clone();
        move || {
            let coord = ok(EtcdSession::new(
                &p.url,
                &p.session,
                Duration::from_millis(500),
            ));
            ok(coord.config_or_init(config.to_string().as_bytes()));
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut conn, position) = connect_leader(&p, &coord, 0, deadline);
            assert_eq!(position, 0);
            let keys = ToAgent::Keys {
                offset: 0,
                bytes: first_half,
            };
            ok(proto::write_frame(&mut conn.stream, &keys));
            std::thread::sleep(Duration::from_millis(300));
            conn.epoch
        }
    }));
    ok(c.rig.partition("a", "etcd"));
    // Past the lease's TTL (1 s): the agent is fenced, etcd lets the lease expire.
    std::thread::sleep(Duration::from_millis(2500));
    ok(c.rig.heal());
    let end = ok(c.rig.in_host("client", move || {
        let coord = ok(EtcdSession::new(
            &p.url,
            &p.session,
            Duration::from_millis(500),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, position) = connect_leader(&p, &coord, e1 + 1, deadline);
        let from = usize::try_from(position)
            .unwrap_or(usize::MAX)
            .min(log.len());
        let keys = ToAgent::Keys {
            offset: position,
            bytes: log[from..].to_vec(),
        };
        ok(proto::write_frame(&mut conn.stream, &keys));
        let end = ToAgent::EndInput {
            offset: log.len() as u64,
        };
        ok(proto::write_frame(&mut conn.stream, &end));
        game_result(&conn, "no end of the continued game")
    }));
    assert_exact_with_events(&c, &end, &want, "a", &["fenced", "suspended", "continued"]);
    let events = c.events("a");
    assert!(
        !events.iter().any(|e| e["event"] == "game_ended"
            && e["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("killed"))),
        "the kept game was killed: {events:#?}"
    );
}

#[test]
fn sigkills_of_the_primarys_game_fail_over_between_agents_and_the_game_ends_exactly() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "client"], "kills");
    let e1 = new_session(&mut c, "a", "b");
    let script_bytes = script(11, 420);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    let kills = 20;
    // Spread over the inputs the game consumes (it ends at game over).
    let consumed = consumed_inputs(&want);
    let every = consumed / (kills + 1);
    assert!(every >= 2, "the game consumes only {consumed} inputs");
    let faults: Vec<(usize, Fault)> = (1..=kills).map(|i| (i * every, Fault::Axe)).collect();
    let played = play_with(&mut c, &script_bytes, &faults, |_, _, _| {});
    report("SIGKILL of the primary's game", &played.recoveries);
    assert_eq!(
        String::from_utf8_lossy(&played.output),
        String::from_utf8_lossy(&want),
        "the game's end differs from the uninterrupted game's; {}",
        c.diagnostics()
    );
    assert_eq!(played.recoveries.len(), kills, "{:?}", played.recoveries);
    let mut epoch = e1;
    for &(from, to, _) in &played.recoveries {
        assert!(
            from >= epoch && to > from,
            "epochs {from} -> {to} after {epoch}"
        );
        epoch = to;
    }
    print_breakdown(&c);
    let s = c.status();
    assert_eq!(s["failovers"], kills as u64, "{s}");
    assert_eq!(s["epoch"], epoch, "{s}");
    // After each death of its primary game, an agent revoked its lease and started a spare
    // of the next leader.
    for host in ["a", "b"] {
        let ev = c.events(host);
        let t = |e: &serde_json::Value| e["t_us"].as_u64().unwrap_or(0);
        let deaths: Vec<&serde_json::Value> = ev
            .iter()
            .filter(|e| e["event"] == "game_ended" && e["role"] == "primary")
            .filter(|e| e["success"] == false)
            .collect();
        assert_eq!(deaths.len(), kills / 2, "{host}: {ev:?}");
        for d in deaths {
            let e = d["epoch"].as_u64().unwrap_or(0);
            let revoked = ev
                .iter()
                .any(|x| x["event"] == "revoked" && x["epoch"].as_u64() == Some(e) && t(x) >= t(d));
            let spare = ev.iter().any(|x| {
                x["event"] == "game_started"
                    && x["role"] == "spare"
                    && t(x) > t(d)
                    && x["epoch"].as_u64().is_some_and(|n| n > e)
            });
            assert!(
                revoked && spare,
                "{host} after its game of epoch {e} died: {ev:?}"
            );
        }
    }
    assert_eq!(max_concurrent_spares(&c), 1);
}

/// The most spare games that ran at once, from every agent's events.
fn max_concurrent_spares(c: &Cluster) -> usize {
    let mut all: Vec<serde_json::Value> = c.agents.keys().flat_map(|h| c.events(h)).collect();
    all.sort_by_key(|e| e["t_us"].as_u64().unwrap_or(0));
    let mut spares = std::collections::BTreeSet::new();
    let mut max = 0;
    for e in &all {
        let node = e["node"].as_str().unwrap_or_default().to_owned();
        match e["event"].as_str() {
            Some("game_started") if e["role"] == "spare" => {
                spares.insert(node);
            }
            Some("game_ended") if e["role"] == "spare" => {
                spares.remove(&node);
            }
            Some("leading") => {
                spares.remove(&node);
            }
            _ => {}
        }
        max = max.max(spares.len());
    }
    max
}

#[test]
fn a_terminal_game_on_a_pty_draws_for_its_client_and_goes_on_drawing_after_an_axe() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "client"], "pty");
    let config = serde_json::json!({"args": ["--seed", "7"], "headless": false});
    let e1 = new_session_with(&mut c, "a", "b", config);
    let p = c.client_params();
    let got = ok(c.rig.in_host("client", move || {
        let coord = ok(EtcdSession::new(
            &p.url,
            &p.session,
            Duration::from_millis(500),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, position) = connect_leader(&p, &coord, e1, deadline);
        ok(proto::write_frame(
            &mut conn.stream,
            &ToAgent::Resize { rows: 24, cols: 80 },
        ));
        // Output of the first game, and the spare synced.
        let (mut drawn, mut synced) = (0, false);
        while drawn == 0 || !synced {
            assert!(Instant::now() < deadline, "no drawing, or no synced spare");
            match conn.frames.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(ToClient::Output { bytes, .. })) => drawn += bytes.len(),
                Ok(Ok(ToClient::Heartbeat { spare_synced, .. })) => synced = spare_synced,
                Ok(Ok(_)) => {}
                other => panic!("the first game's agent: {:?}", other.err()),
            }
        }
        let axed = Instant::now();
        ok(proto::write_frame(&mut conn.stream, &ToAgent::Axe));
        let (mut next, position2) = connect_leader(&p, &coord, conn.epoch + 1, deadline);
        let leading_ms = axed.elapsed().as_secs_f64() * 1000.0;
        ok(proto::write_frame(
            &mut next.stream,
            &ToAgent::Keys {
                offset: position2,
                bytes: vec![0x0c],
            },
        ));
        loop {
            assert!(Instant::now() < deadline, "the promoted game draws nothing");
            if let Ok(Ok(ToClient::Output { epoch, bytes })) =
                next.frames.recv_timeout(Duration::from_secs(5))
                && !bytes.is_empty()
            {
                return (position, drawn, next.epoch, epoch, leading_ms);
            }
        }
    }));
    let (position, drawn, epoch2, out_epoch, ms) = got;
    assert_eq!(position, 0, "a fresh terminal game accounts for no byte");
    assert!(drawn > 0);
    assert!(
        epoch2 > e1 && out_epoch == epoch2,
        "{e1} -> {epoch2}, output of {out_epoch}"
    );
    eprintln!("terminal game: axe to Leading of the promoted game {ms:.1} ms");
}

#[test]
fn of_three_agents_one_game_is_the_spare_at_a_time_through_failovers() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "c", "client"], "three");
    new_session(&mut c, "a", "b");
    c.start_agent("c");
    let script_bytes = script(14, 300);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    let kills = 4;
    let every = consumed_inputs(&want) / (kills + 1);
    assert!(every >= 2, "the game consumes too few inputs: {want:?}");
    let faults: Vec<(usize, Fault)> = (1..=kills).map(|i| (i * every, Fault::Axe)).collect();
    let played = play_with(&mut c, &script_bytes, &faults, |_, _, _| {});
    assert_eq!(
        String::from_utf8_lossy(&played.output),
        String::from_utf8_lossy(&want),
        "the game's end differs from the uninterrupted game's; {}",
        c.diagnostics()
    );
    assert_eq!(played.recoveries.len(), kills, "{:?}", played.recoveries);
    let s = c.status();
    assert_eq!(s["failovers"], kills as u64, "{s}");
    // The third agent stood by: never two spare games at once.
    assert_eq!(max_concurrent_spares(&c), 1, "{}", c.diagnostics());
    let spares_started: usize = ["a", "b", "c"]
        .iter()
        .map(|h| {
            c.events(h)
                .iter()
                .filter(|e| e["event"] == "game_started" && e["role"] == "spare")
                .count()
        })
        .sum();
    assert!(
        spares_started > kills,
        "{spares_started} spares for {kills} kills"
    );
}

#[test]
fn a_partition_between_primary_and_spare_alone_fails_nothing_over_and_the_spare_comes_back() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "client"], "split");
    let e1 = new_session(&mut c, "a", "b");
    ok(c.rig.partition("a", "b"));
    // Past the lease's TTL three times over: the spare's agent starts its game again.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3600) {
        let s = c.status();
        assert_eq!(
            (s["primary"].as_str(), s["epoch"].as_u64()),
            (Some("a"), Some(e1)),
            "{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(c.rig.heal());
    let s = c.wait_status("the spare synced again", Duration::from_secs(15), |s| {
        s["spare"] == "b"
    });
    assert_eq!(
        (
            s["primary"].as_str(),
            s["epoch"].as_u64(),
            s["failovers"].as_u64()
        ),
        (Some("a"), Some(e1), Some(0)),
        "{s}"
    );
    let restarted = c
        .events("b")
        .iter()
        .filter(|e| e["event"] == "game_started" && e["role"] == "spare")
        .count();
    assert!(restarted >= 2, "b's spare was never started again");
}

/// Waits until `host`'s agent has written a `leading` event of an epoch above `epoch`.
fn wait_leading(c: &Cluster, host: &str, epoch: u64) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(e) = c
            .events(host)
            .into_iter()
            .find(|e| e["event"] == "leading" && e["epoch"].as_u64().is_some_and(|x| x > epoch))
        {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{host} did not lead above epoch {epoch}; {}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_axed_primary_host_is_replaced_after_its_lease_expires_or_sooner_by_the_fast_path() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "client"], "hosts");
    let e1 = new_session(&mut c, "a", "b");
    let script_bytes = script(12, 200);
    let want = uninterrupted(c.dir.path(), &script_bytes);
    // First host a, the client never suspecting it (the lease expires); a comes back as b's
    // spare; then host b, the client writing the suspect key (the fast path).
    let third = consumed_inputs(&want) / 3;
    assert!(third >= 2, "the game consumes too few inputs: {want:?}");
    let faults = [
        (third, Fault::Main { suspect: false }),
        (2 * third, Fault::Main { suspect: true }),
    ];
    let mut round = 0;
    let played = play_with(&mut c, &script_bytes, &faults, |c, _, reply| {
        let (victim, heir) = if round == 0 { ("a", "b") } else { ("b", "a") };
        round += 1;
        let epoch = c.status()["epoch"].as_u64().unwrap_or(0);
        let at = Instant::now();
        ok(c.rig.axe(victim));
        let _ = reply.send(at);
        wait_leading(c, heir, epoch);
        ok(c.rig.heal());
        c.start_agent(victim);
    });
    assert_eq!(
        String::from_utf8_lossy(&played.output),
        String::from_utf8_lossy(&want),
        "the game's end differs from the uninterrupted game's; {}",
        c.diagnostics()
    );
    assert_eq!(played.recoveries.len(), 2, "{:?}", played.recoveries);
    report("host axe, lease expiry", &played.recoveries[..1]);
    report("host axe, fast path", &played.recoveries[1..]);
    assert!(played.recoveries[0].0 >= e1);
    // The fast path deposed b's leadership: a's agent says so.
    let deposed = c.events("a").iter().any(|e| e["event"] == "deposed");
    assert!(
        deposed,
        "no deposition on the fast path; {}",
        c.diagnostics()
    );
}

#[test]
fn a_primary_cut_off_from_etcd_stops_its_game_before_the_spare_leads() {
    if !prerequisites() {
        return;
    }
    let mut c = Cluster::new(&["etcd", "a", "b", "client"], "cut");
    let e1 = new_session(&mut c, "a", "b");
    ok(c.rig.partition("a", "etcd"));
    let cut = Instant::now();
    let leading = wait_leading(&c, "b", e1);
    eprintln!(
        "primary cut off from etcd: the spare led {:.0} ms after the cut",
        cut.elapsed().as_secs_f64() * 1000.0
    );
    let fenced = c
        .events("a")
        .into_iter()
        .find(|e| e["event"] == "fenced")
        .unwrap_or_else(|| panic!("a was never fenced; {}", c.diagnostics()));
    let (t_fenced, t_leading) = (
        fenced["t_us"].as_u64().unwrap_or(u64::MAX),
        leading["t_us"].as_u64().unwrap_or(0),
    );
    assert!(
        t_fenced < t_leading,
        "b led at {t_leading} us, a was fenced only at {t_fenced} us"
    );
    let stopped = c
        .events("a")
        .into_iter()
        .find(|e| e["event"] == "game_ended")
        .and_then(|e| e["t_us"].as_u64())
        .unwrap_or(u64::MAX);
    assert!(
        stopped < t_leading,
        "a's game ended at {stopped} us, after b led at {t_leading} us"
    );
    eprintln!(
        "fenced {:.0} ms before the spare led",
        (t_leading - t_fenced) as f64 / 1000.0
    );
}
