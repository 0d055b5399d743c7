//! The cluster mode's hosts on one machine (root): [`HostsRig`] builds, on
//! [`hotspare_cluster::netns::Rig`], an etcd host (or three etcd members), two or three agent
//! hosts each running `failover-harness agent`, and a client host; it starts clients there,
//! and it applies the faults the cluster mode must survive (DESIGN.md, "Cluster mode"):
//!
//! - `kill`: SIGKILL of the primary's game (the primary agent's child);
//! - `axe`: the primary's host cut off from every peer, then everything in it killed;
//! - `stop`: SIGSTOP of the primary's game (SIGCONT later, [`HostsRig::cont`]);
//! - partitions (two-way and one-way) between any two hosts, and heal;
//! - the loss of the etcd leader (three members): its host axed.
//!
//! After a heal, [`HostsRig::restart_dead`] starts the agents and etcd members of axed hosts
//! again. Everything (processes, namespaces, the temporary directory with the key file, logs
//! and events) goes when the rig is dropped, whatever happens; names are unique per rig.
//!
//! The rig never connects from the root namespace to a host's address: etcd is read from a
//! thread inside the client host ([`Rig::in_host`]), processes are started with
//! `ip netns exec`. The events of every agent incarnation and client are files in the rig's
//! directory (see [`crate::cluster::hosts_events`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use hotspare_cluster::coordinator::NodeState;
use hotspare_cluster::netns::Rig;
use hotspare_cluster::server::EtcdProcess;
use hotspare_cluster::status::ClusterStatus;
use hotspare_cluster::{Coordinator, EtcdSession, Leader};

/// The port each agent serves clients on (its game's stream is on the next one).
pub const AGENT_PORT: u16 = 7000;
/// etcd's client port on an etcd host.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port on an etcd host.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The client host's name.
pub const CLIENT_HOST: &str = "client";
/// The agent hosts' names (and their nodes' names), in order.
pub const AGENT_HOSTS: [&str; 3] = ["a", "b", "c"];
/// Set to `1` to keep the rig's directory (logs, events, scripts) after the rig ends.
pub const KEEP_ENV: &str = "HOTSPARE_RIG_KEEP";
/// How long one etcd call from the rig may take.
const ETCD_CALL: Duration = Duration::from_millis(500);
/// How long etcd gets to answer after it is started.
const ETCD_READY: Duration = Duration::from_secs(20);

/// `CLOCK_MONOTONIC` in microseconds: the clock of every event file (one clock for every
/// namespace on the machine).
pub fn mono_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000
        }
        // CLOCK_MONOTONIC always exists on Linux; 0 would only make a fault look early.
        Err(_) => 0,
    }
}

/// Polls `f` every 10 ms until it gives a value, for at most `wait`; the error names `what`.
pub fn wait_for<T>(
    what: &str,
    wait: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() >= wait {
            bail!("{what}: not within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the rig is made of.
#[derive(Clone, Debug)]
pub struct HostsOptions {
    /// The `failover-harness` executable the agents and clients run.
    pub harness: PathBuf,
    /// Agent hosts: 2 or 3.
    pub agents: usize,
    /// etcd members: 1 or 3.
    pub etcd_members: usize,
    /// The agents' and clients' `--suspect-ms`.
    pub suspect_ms: u64,
    /// The agents' lease `--ttl-s`.
    pub ttl_s: u64,
}

impl HostsOptions {
    /// Two agents, one etcd, the default suspicion (150 ms) and lease (1 s).
    pub fn new(harness: PathBuf) -> Self {
        Self {
            harness,
            agents: 2,
            etcd_members: 1,
            suspect_ms: 150,
            ttl_s: 1,
        }
    }
}

/// An etcd member of a three-member cluster (a one-member etcd is a
/// [`EtcdProcess`]).
#[derive(Debug)]
struct Member {
    host: String,
    name: String,
    ip: String,
    child: Option<Child>,
}

/// etcd: one member, or three.
#[derive(Debug)]
enum Etcd {
    /// Kept for its Drop, which stops it.
    One { _server: EtcdProcess },
    /// The members and their `--initial-cluster`.
    Three {
        members: Vec<Member>,
        cluster: String,
    },
}

/// An agent host and its agent process.
#[derive(Debug)]
pub struct AgentHost {
    /// The host's (and node's) name.
    pub name: String,
    /// Its address.
    pub ip: String,
    /// The agent, while it runs.
    child: Option<Child>,
    /// The events file of each agent started on it in the current session, oldest first.
    pub events: Vec<PathBuf>,
    /// When it was axed (CLOCK_MONOTONIC us), each time.
    pub axed_at: Vec<u64>,
}

/// The rig: etcd, agents, a client host; torn down on drop.
#[derive(Debug)]
pub struct HostsRig {
    agents: Vec<AgentHost>,
    etcd: Etcd,
    /// Games stopped by [`HostsRig::stop_game`] and not continued yet.
    stopped: Vec<u32>,
    opts: HostsOptions,
    session: String,
    sessions: u32,
    key_file: PathBuf,
    urls: String,
    rig: Rig,
    dir: tempfile::TempDir,
}

impl HostsRig {
    /// Builds the hosts and starts etcd; no agent runs before [`HostsRig::start_session`].
    pub fn new(opts: HostsOptions) -> anyhow::Result<Self> {
        if !(2..=3).contains(&opts.agents) {
            bail!("the rig has 2 or 3 agent hosts, not {}", opts.agents);
        }
        if opts.etcd_members != 1 && opts.etcd_members != 3 {
            bail!("etcd has 1 or 3 members, not {}", opts.etcd_members);
        }
        let etcd_hosts: Vec<String> = if opts.etcd_members == 1 {
            vec!["etcd".to_owned()]
        } else {
            (1..=3).map(|i| format!("e{i}")).collect()
        };
        let mut names: Vec<&str> = etcd_hosts.iter().map(String::as_str).collect();
        names.extend_from_slice(&AGENT_HOSTS[..opts.agents]);
        names.push(CLIENT_HOST);
        let rig = Rig::new(&names).context("building the rig's hosts")?;
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix("hotspare-hosts-")
            .disable_cleanup(keep)
            .tempdir()
            .context("making the rig's directory")?;
        if keep {
            eprintln!("the rig's files are kept in {}", dir.path().display());
        }
        let key_file = dir.path().join("key");
        write_key(&key_file)?;
        let host_ip = |name: &str| -> anyhow::Result<String> { Ok(rig.host(name)?.ip.clone()) };
        let agents = AGENT_HOSTS[..opts.agents]
            .iter()
            .map(|&name| {
                Ok(AgentHost {
                    name: name.to_owned(),
                    ip: host_ip(name)?,
                    child: None,
                    events: Vec::new(),
                    axed_at: Vec::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let urls = etcd_hosts
            .iter()
            .map(|h| Ok(format!("http://{}:{ETCD_CLIENT_PORT}", host_ip(h)?)))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(",");
        let etcd = if opts.etcd_members == 1 {
            let host = rig.host("etcd")?;
            let mut p = EtcdProcess::start(
                dir.path(),
                &host.ip,
                ETCD_CLIENT_PORT,
                ETCD_PEER_PORT,
                Some(&host.ns),
            )
            .context("starting etcd in the etcd host")?;
            rig.in_host("etcd", || p.wait_ready(ETCD_READY))?
                .context("waiting for etcd")?;
            Etcd::One { _server: p }
        } else {
            let cluster = etcd_hosts
                .iter()
                .map(|h| Ok(format!("{h}=http://{}:{ETCD_PEER_PORT}", host_ip(h)?)))
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(",");
            let members = etcd_hosts
                .iter()
                .map(|h| {
                    Ok(Member {
                        host: h.clone(),
                        name: h.clone(),
                        ip: host_ip(h)?,
                        child: None,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Etcd::Three { members, cluster }
        };
        let mut hosts = Self {
            agents,
            etcd,
            stopped: Vec::new(),
            opts,
            session: "g0".to_owned(),
            sessions: 0,
            key_file,
            urls,
            rig,
            dir,
        };
        hosts.start_members()?;
        Ok(hosts)
    }

    /// The rig's directory (key file, logs, events).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The etcd endpoints (`http://IP:PORT,...`).
    pub fn etcd_urls(&self) -> &str {
        &self.urls
    }

    /// The session the agents serve now.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The agent hosts.
    pub fn agents(&self) -> &[AgentHost] {
        &self.agents
    }

    /// The host rig underneath.
    pub fn rig(&self) -> &Rig {
        &self.rig
    }

    /// The shared key file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Starts a new session: every agent host's processes are killed and a fresh agent is
    /// started on each, for a new session name; returns it.
    pub fn start_session(&mut self) -> anyhow::Result<String> {
        self.cont_all();
        for i in 0..self.agents.len() {
            self.stop_agent(i)?;
        }
        self.sessions += 1;
        self.session = format!("g{}", self.sessions);
        // Each session's events are checked on their own (the files stay in the directory).
        for a in &mut self.agents {
            a.events.clear();
            a.axed_at.clear();
        }
        for i in 0..self.agents.len() {
            self.start_agent(i)?;
        }
        Ok(self.session.clone())
    }

    fn stop_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let host = self.rig.host(&self.agents[i].name)?.clone();
        kill_namespace(&host.ns)?;
        if let Some(mut child) = self.agents[i].child.take() {
            // Killed above with everything in the host; reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let a = &self.agents[i];
        let n = a.events.len() + 1;
        let events = self
            .dir
            .path()
            .join(format!("{}.{}.{n}.events", self.session, a.name));
        let out = self
            .dir
            .path()
            .join(format!("{}.{}.{n}.out", self.session, a.name));
        let log = self
            .dir
            .path()
            .join(format!("{}.{}.{n}.log", self.session, a.name));
        let out_file =
            std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let err_file = out_file
            .try_clone()
            .with_context(|| format!("opening {}", out.display()))?;
        let mut cmd = self.rig.exec(&a.name, &self.opts.harness)?;
        clean_env(&mut cmd);
        cmd.env("FAILOVER_HARNESS_LOG", &log)
            .arg("agent")
            .args(["--etcd", &self.urls, "--session", &self.session])
            .args(["--name", &a.name])
            .args(["--listen", &format!("{}:{AGENT_PORT}", a.ip)])
            .arg("--key-file")
            .arg(&self.key_file)
            .args(["--suspect-ms", &self.opts.suspect_ms.to_string()])
            .args(["--ttl-s", &self.opts.ttl_s.to_string()])
            .arg("--events")
            .arg(&events)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the agent on host {}", a.name))?;
        let a = &mut self.agents[i];
        a.child = Some(child);
        a.events.push(events);
        Ok(())
    }

    /// A client in the client host for the current session: `failover-harness client` with
    /// the rig's etcd, session, key file, `--suspect-ms` and `--events EVENTS`, then `args`
    /// (tetris options, `--headless --script F --pace-us U`...). Returns the command (stdio
    /// is the caller's to choose) and the events file.
    pub fn client_command(&self, args: &[OsString]) -> anyhow::Result<(Command, PathBuf)> {
        let events = self
            .dir
            .path()
            .join(format!("{}.client.events", self.session));
        let mut cmd = self.rig.exec(CLIENT_HOST, &self.opts.harness)?;
        clean_env(&mut cmd);
        cmd.env(
            "FAILOVER_HARNESS_LOG",
            self.dir.path().join(format!("{}.client.log", self.session)),
        )
        .arg("client")
        .args(["--etcd", &self.urls, "--session", &self.session])
        .arg("--key-file")
        .arg(&self.key_file)
        .args(["--suspect-ms", &self.opts.suspect_ms.to_string()])
        .arg("--events")
        .arg(&events)
        .args(args);
        Ok((cmd, events))
    }

    /// Runs `f` on the session's etcd from inside the client host.
    pub fn with_etcd<T: Send>(
        &self,
        f: impl FnOnce(&EtcdSession) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let urls = self.urls.clone();
        let session = self.session.clone();
        self.rig.in_host(CLIENT_HOST, move || {
            let s = EtcdSession::new(&urls, &session, ETCD_CALL)
                .with_context(|| format!("etcd at {urls}, session {session}"))?;
            f(&s)
        })?
    }

    /// The session's status as etcd holds it.
    pub fn status(&self) -> anyhow::Result<ClusterStatus> {
        self.with_etcd(|s| Ok(ClusterStatus::read(s)?))
    }

    /// The leader, and the node (another one) whose spare holds a checkpoint, if any (none
    /// while the client suspects the leader).
    pub fn leader_and_synced_spare(&self) -> anyhow::Result<(Option<Leader>, Option<String>)> {
        self.with_etcd(|s| {
            let leader = s.leader()?;
            let nodes = s.nodes()?;
            // A primary the client still suspects is not whole: the client has not heard it
            // since a fault (a cut's retransmissions may take a while after the heal).
            if let Some(l) = &leader
                && s.suspected(l.epoch)?
            {
                return Ok((leader, None));
            }
            let spare = leader.as_ref().and_then(|l| {
                nodes
                    .iter()
                    .find(|n| n.name != l.node.name && n.state == NodeState::Spare { synced: true })
                    .map(|n| n.name.clone())
            });
            Ok((leader, spare))
        })
    }

    /// The etcd hosts' names (`etcd`, or `e1`, `e2`, `e3`).
    pub fn etcd_hosts(&self) -> Vec<String> {
        match &self.etcd {
            Etcd::One { .. } => vec!["etcd".to_owned()],
            Etcd::Three { members, .. } => members.iter().map(|m| m.host.clone()).collect(),
        }
    }

    /// The agent of node `name`'s pid, while it runs.
    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.child.as_ref())
            .map(Child::id)
    }

    /// Node `name`'s game: its agent's live child.
    pub fn game_pid(&self, name: &str) -> Option<u32> {
        self.agent_pid(name)
            .and_then(|agent| live_children(agent).into_iter().next())
    }

    /// SIGKILLs node `name`'s game; the time just before (CLOCK_MONOTONIC us) and its pid.
    pub fn kill_game(&mut self, name: &str) -> anyhow::Result<(u64, u32)> {
        let pid = self
            .game_pid(name)
            .with_context(|| format!("node {name} runs no game"))?;
        let t = mono_us();
        signal(pid, Signal::SIGKILL)?;
        Ok((t, pid))
    }

    /// SIGSTOPs node `name`'s game (continued by [`HostsRig::cont`], or at the rig's end).
    pub fn stop_game(&mut self, name: &str) -> anyhow::Result<(u64, u32)> {
        let pid = self
            .game_pid(name)
            .with_context(|| format!("node {name} runs no game"))?;
        let t = mono_us();
        signal(pid, Signal::SIGSTOP)?;
        self.stopped.push(pid);
        Ok((t, pid))
    }

    /// SIGCONTs a game stopped by [`HostsRig::stop_game`] (gone already is fine); the time.
    pub fn cont(&mut self, pid: u32) -> u64 {
        self.stopped.retain(|&p| p != pid);
        let t = mono_us();
        // A game its agent killed meanwhile is gone or a zombie: nothing to continue.
        let _ = signal(pid, Signal::SIGCONT);
        t
    }

    fn cont_all(&mut self) {
        for pid in std::mem::take(&mut self.stopped) {
            let _ = signal(pid, Signal::SIGCONT);
        }
    }

    /// Axes host `name` (cut off, then everything in it killed); the time just before.
    pub fn axe(&mut self, name: &str) -> anyhow::Result<u64> {
        let t = mono_us();
        self.rig.axe(name)?;
        if let Some(a) = self.agents.iter_mut().find(|a| a.name == name) {
            a.axed_at.push(t);
            if let Some(mut child) = a.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Etcd::Three { members, .. } = &mut self.etcd
            && let Some(m) = members.iter_mut().find(|m| m.host == name)
            && let Some(mut child) = m.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(t)
    }

    /// Cuts hosts `a` and `b` apart both ways.
    pub fn partition(&mut self, a: &str, b: &str) -> anyhow::Result<u64> {
        let t = mono_us();
        self.rig.partition(a, b)?;
        Ok(t)
    }

    /// Drops everything `from` sends to `to`.
    pub fn partition_one_way(&mut self, from: &str, to: &str) -> anyhow::Result<u64> {
        let t = mono_us();
        self.rig.partition_one_way(from, to)?;
        Ok(t)
    }

    /// Removes every partition and axe cut (axed hosts' processes stay dead until
    /// [`HostsRig::restart_dead`]).
    pub fn heal(&mut self) -> anyhow::Result<u64> {
        self.rig.heal()?;
        Ok(mono_us())
    }

    /// Starts again the agents and etcd members that are not running (axed hosts, after a
    /// heal).
    pub fn restart_dead(&mut self) -> anyhow::Result<()> {
        for i in 0..self.agents.len() {
            let dead = match &mut self.agents[i].child {
                None => true,
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            };
            if dead && self.sessions > 0 {
                self.stop_agent(i)?;
                self.start_agent(i)?;
            }
        }
        self.start_members()
    }

    /// The etcd member that leads the etcd cluster now (three members), by its host name.
    pub fn etcd_leader(&self) -> anyhow::Result<String> {
        let Etcd::Three { members, .. } = &self.etcd else {
            bail!("one etcd member: no etcd leader to lose");
        };
        for m in members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://{}:{ETCD_CLIENT_PORT}", m.ip);
            let status = self.rig.in_host(&m.host, || member_status(&url))?;
            match status {
                Ok((id, leader)) if id == leader && !id.is_empty() => return Ok(m.host.clone()),
                Ok(_) => {}
                Err(e) => tracing::debug!(member = m.name, error = %e, "etcd member status"),
            }
        }
        bail!("no etcd member says it leads")
    }

    /// Starts the etcd members that are not running (three members) and waits until they
    /// answer.
    fn start_members(&mut self) -> anyhow::Result<()> {
        let Etcd::Three { members, cluster } = &mut self.etcd else {
            return Ok(());
        };
        let mut started = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(c) = &mut m.child
                && matches!(c.try_wait(), Ok(None))
            {
                continue;
            }
            let data = self.dir.path().join(format!("{}-data", m.name));
            let log = self.dir.path().join(format!("{}.log", m.name));
            let log_file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            let err_file = log_file
                .try_clone()
                .with_context(|| format!("opening {}", log.display()))?;
            let etcd = hotspare_cluster::server::etcd_binary()
                .context("etcd is not installed (apt-get install etcd-server)")?;
            let url = format!("http://{}:{ETCD_CLIENT_PORT}", m.ip);
            let peer = format!("http://{}:{ETCD_PEER_PORT}", m.ip);
            let mut cmd = self.rig.exec(&m.host, &etcd)?;
            cmd.args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", cluster])
                .args(["--initial-cluster-state", "new"])
                // etcd raises a lease TTL below ceil(1.5 x election timeout): these keep 1 s.
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file);
            m.child = Some(
                cmd.spawn()
                    .with_context(|| format!("starting etcd member {}", m.name))?,
            );
            started.push(i);
        }
        for i in started {
            let m = &members[i];
            let url = format!("http://{}:{ETCD_CLIENT_PORT}", m.ip);
            self.rig
                .in_host(&m.host, || {
                    wait_for(&format!("etcd member {url}"), ETCD_READY, || {
                        Ok(member_status(&url).ok())
                    })
                })?
                .with_context(|| format!("its log: {}", self.dir.path().display()))?;
        }
        Ok(())
    }

    /// The floor of any failover across hosts, measured now: the median round trip of one
    /// byte over TCP from host `from` to host `to` and back (`samples` of them), in ms.
    pub fn rtt_floor_ms(&self, from: &str, to: &str, samples: usize) -> anyhow::Result<f64> {
        use std::io::{Read as _, Write as _};
        let to_ip = self.rig.host(to)?.ip.clone();
        let listener = self
            .rig
            .in_host(to, || std::net::TcpListener::bind(format!("{to_ip}:0")))?
            .context("binding the floor's echo socket")?;
        let addr = listener.local_addr().context("the echo socket's address")?;
        // The socket belongs to host `to`; a plain thread may serve it.
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            while s.read(&mut b)? == 1 {
                s.write_all(&b)?;
            }
            Ok(())
        });
        let rtts = self.rig.in_host(from, || -> anyhow::Result<Vec<f64>> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connecting to the echo at {addr}"))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = [0u8; 1];
            let mut v = Vec::with_capacity(samples);
            for _ in 0..samples {
                let t = Instant::now();
                s.write_all(b"x")?;
                s.read_exact(&mut b)?;
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(v)
        })??;
        // The echo ends when the connection closes (dropped above).
        let _ = echo.join();
        Ok(crate::bench::percentile(&rtts, 50.0))
    }

    /// `tetris --headless ARGS --script SCRIPT` run to its end (the uninterrupted game): its
    /// output line.
    pub fn reference(&self, args: &[OsString], script: &Path) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.opts.harness);
        clean_env(&mut cmd);
        let out = cmd
            .args(["game", "--", "--headless"])
            .args(args)
            .arg("--script")
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .context("running the reference game")?;
        if !out.status.success() {
            bail!(
                "the reference game failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The last lines of every agent's output in the current session, for error reports.
    pub fn agent_logs(&self) -> String {
        let mut s = String::new();
        for a in &self.agents {
            for (n, events) in a.events.iter().enumerate() {
                let out = events.with_extension("out");
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!(
                    "--- agent {} #{}: {}\n",
                    a.name,
                    n + 1,
                    lines[lines.len().saturating_sub(8)..].join("\n")
                ));
            }
        }
        s
    }
}

impl Drop for HostsRig {
    fn drop(&mut self) {
        self.cont_all();
        for a in &mut self.agents {
            if let Some(mut child) = a.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Etcd::Three { members, .. } = &mut self.etcd {
            for m in members {
                if let Some(mut child) = m.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // The rig (dropped next) kills whatever is left in every host and deletes them.
    }
}

/// `POST /v3/maintenance/status` on one member: its member id and the leader's.
fn member_status(url: &str) -> anyhow::Result<(String, String)> {
    use hotspare_cluster::http::{Conn, Endpoint};
    let endpoint = Endpoint::parse(url)?;
    let deadline = Instant::now() + ETCD_CALL;
    let mut conn = Conn::connect(&endpoint, deadline)?;
    let (code, body) = conn.post("/v3/maintenance/status", b"{}", deadline)?;
    if code != 200 {
        bail!(
            "{url}: status {code}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).with_context(|| format!("{url}: a status not JSON"))?;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    Ok((s(&v["header"]["member_id"]), s(&v["leader"])))
}

/// 32 random bytes as 64 hex characters, readable by its owner only.
fn write_key(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("getrandom for the key file: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the key file {}", path.display()))?;
    f.write_all(hex.as_bytes())
        .with_context(|| format!("writing the key file {}", path.display()))
}

/// No `HS_*`, `TETRIS_*` or harness log variable of ours reaches the rig's processes.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HS_") || k.starts_with("TETRIS_") || k == "FAILOVER_HARNESS_LOG" {
            cmd.env_remove(k);
        }
    }
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).with_context(|| format!("pid {pid}"))?;
    kill(Pid::from_raw(raw), sig).with_context(|| format!("{sig} to pid {pid}"))
}

/// `pid`'s children that are alive (not zombies), oldest first.
pub fn live_children(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return all;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all.retain(|&p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z")))
    });
    all.sort_unstable();
    all
}

/// SIGKILLs every process in namespace `ns` and waits (briefly) until none is left.
fn kill_namespace(ns: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .stdin(Stdio::null())
            .output()
            .context("running `ip netns pids`")?;
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // Gone already: nothing to do.
            let _ = signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("processes in namespace {ns} survive SIGKILL")
}
