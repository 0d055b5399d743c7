//! A rig of test hosts on one machine: network namespaces joined by a bridge, with the faults
//! the cluster mode must survive (DESIGN.md, "Cluster mode").
//!
//! Each rig has a hub namespace holding the bridge, and one namespace per host with an `eth0`
//! on the bridge at `10.199.0.N/24`. Nothing is attached to the root namespace: no address of
//! the rig is reachable from it, and a test talks to the hosts only from processes or threads
//! inside them ([`Rig::exec`], [`Rig::in_host`]). Every namespace is deleted (and every
//! process in it killed) when the rig is dropped, whatever the test's ending.
//!
//! Faults:
//! - **partition** `a -> b` (packets from `a` dropped on arrival at `b`): a blackhole policy
//!   rule on the receiving side (`ip rule add from A blackhole`); not `link down`, which leaves
//!   stale ARP entries, and not on the sender, where `connect` would fail at once, unlike a
//!   real partition;
//! - **axe** a host: cut it off from every peer first (a blackhole rule for all traffic, in and
//!   out, so no FIN or RST escapes), then SIGKILL every process in its namespace;
//! - **heal**: remove the rules.
//!
//! This kernel has no netem: delays would need a userspace proxy.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Why a rig step failed.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// Not root: namespaces cannot be made.
    #[error("network namespaces need root (running as uid {0})")]
    NotRoot(u32),
    /// `ip` is missing.
    #[error("`ip` (iproute2) could not be run: {0}")]
    NoIp(std::io::Error),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("entering namespace {ns}: {source}")]
    Enter {
        /// The namespace.
        ns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No such host in the rig.
    #[error("no host {0:?} in this rig")]
    NoHost(String),
}

/// Set to `1` to make a missing prerequisite (root, iproute2) a failure, not a skip.
pub const REQUIRE_ENV: &str = "HOTSPARE_REQUIRE_NETNS";

/// Whether rig tests can run here: `Ok(())`, or why they skip. Panics (a test failure) when
/// [`REQUIRE_ENV`] is `1` and they cannot.
pub fn available_for_tests() -> Result<(), String> {
    let why = if !nix::unistd::geteuid().is_root() {
        Some(RigError::NotRoot(nix::unistd::geteuid().as_raw()).to_string())
    } else {
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`ip -V` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Some(RigError::NoIp(e).to_string()),
        }
    };
    match why {
        None => Ok(()),
        Some(why) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_ENV}=1 but {why}")
        }
        Some(why) => Err(why),
    }
}

/// One host of the rig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its name in the rig (`etcd`, `a`, `client`...).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
}

/// Hosts on a bridge, torn down on drop.
#[derive(Debug)]
pub struct Rig {
    hub: String,
    hosts: Vec<Host>,
    /// Policy-rule priorities in use per host, for heal.
    next_pref: u32,
    /// (host ns, pref) of every fault rule in place.
    rules: Vec<(String, u32)>,
}

static RIGS: AtomicU32 = AtomicU32::new(0);

/// Where each host's local-table rule is moved to; fault rules take the priorities before it.
const LOCAL_PREF: &str = "1000";

impl Rig {
    /// Makes a rig with hosts named `names` (at most 250), at 10.199.0.1, .2, ...
    pub fn new(names: &[&str]) -> Result<Self, RigError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(RigError::NotRoot(uid.as_raw()));
        }
        // Unique per process and per rig, short enough for every name derived from it.
        let tag = format!(
            "hs{}x{}",
            std::process::id(),
            RIGS.fetch_add(1, Ordering::Relaxed)
        );
        let mut rig = Self {
            hub: format!("{tag}-hub"),
            hosts: Vec::new(),
            next_pref: 100,
            rules: Vec::new(),
        };
        ip(["netns", "add", &rig.hub])?;
        ip_n(&rig.hub, ["link", "add", "br0", "type", "bridge"])?;
        ip_n(&rig.hub, ["link", "set", "br0", "up"])?;
        ip_n(&rig.hub, ["link", "set", "lo", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let n = i + 1;
            let host = Host {
                name: (*name).to_owned(),
                ns: format!("{tag}-{n}"),
                ip: format!("10.199.0.{n}"),
            };
            // Registered before it is made, so a failure half-way is torn down too.
            rig.hosts.push(host.clone());
            ip(["netns", "add", &host.ns])?;
            let port = format!("p{n}");
            ip_n(
                &host.ns,
                [
                    "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &rig.hub,
                ],
            )?;
            ip_n(&rig.hub, ["link", "set", &port, "master", "br0"])?;
            ip_n(&rig.hub, ["link", "set", &port, "up"])?;
            ip_n(
                &host.ns,
                ["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"],
            )?;
            ip_n(&host.ns, ["link", "set", "eth0", "up"])?;
            ip_n(&host.ns, ["link", "set", "lo", "up"])?;
            // The local table's rule comes first (pref 0) and would accept every packet for
            // this host before a fault rule could drop it: move it behind them.
            ip_n(
                &host.ns,
                ["rule", "add", "pref", LOCAL_PREF, "lookup", "local"],
            )?;
            ip_n(&host.ns, ["rule", "del", "pref", "0", "lookup", "local"])?;
        }
        Ok(rig)
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host, RigError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| RigError::NoHost(name.to_owned()))
    }

    /// A command to run inside host `name` (`ip netns exec NS program`).
    pub fn exec(&self, name: &str, program: impl AsRef<OsStr>) -> Result<Command, RigError> {
        let host = self.host(name)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        Ok(c)
    }

    /// Runs `f` on a thread inside host `name`'s network namespace (sockets it opens belong
    /// to that host) and returns its result.
    pub fn in_host<T: Send>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, RigError> {
        let ns = self.host(name)?.ns.clone();
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).map_err(|source| RigError::Enter {
            ns: ns.clone(),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // setns with CLONE_NEWNET moves only this thread, which ends with the scope.
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| RigError::Enter {
                    ns,
                    source: e.into(),
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `f` on a new thread inside host `name`'s network namespace, without waiting for
    /// it (the caller keeps the rig, to inflict faults meanwhile); threads `f` starts are in
    /// the namespace too.
    pub fn spawn_in_host<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T, RigError>>, RigError> {
        let ns = self.host(name)?.ns.clone();
        let path = format!("/run/netns/{ns}");
        let file = File::open(&path).map_err(|source| RigError::Enter {
            ns: ns.clone(),
            source,
        })?;
        std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                // setns with CLONE_NEWNET moves only this thread.
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| RigError::Enter {
                    ns,
                    source: e.into(),
                })?;
                Ok(f())
            })
            .map_err(|source| RigError::Enter {
                ns: name.to_owned(),
                source,
            })
    }

    /// Drops every packet from `from` on its arrival at `to` (a one-way partition).
    pub fn partition_one_way(&mut self, from: &str, to: &str) -> Result<(), RigError> {
        let src = self.host(from)?.ip.clone();
        let dst_ns = self.host(to)?.ns.clone();
        self.add_rule(&dst_ns, &["from", &src, "blackhole"])
    }

    /// Cuts `a` and `b` apart both ways.
    pub fn partition(&mut self, a: &str, b: &str) -> Result<(), RigError> {
        self.partition_one_way(a, b)?;
        self.partition_one_way(b, a)
    }

    /// Cuts `name` off from every peer (in and out) and SIGKILLs every process in it.
    pub fn axe(&mut self, name: &str) -> Result<(), RigError> {
        let ns = self.host(name)?.ns.clone();
        self.add_rule(&ns, &["blackhole"])?;
        kill_all(&ns)
    }

    /// Removes every fault rule: the network is whole again (axed hosts' processes stay dead).
    pub fn heal(&mut self) -> Result<(), RigError> {
        for (ns, pref) in std::mem::take(&mut self.rules) {
            ip_n(&ns, ["rule", "del", "pref", &pref.to_string()])?;
        }
        Ok(())
    }

    fn add_rule(&mut self, ns: &str, spec: &[&str]) -> Result<(), RigError> {
        let pref = self.next_pref;
        self.next_pref += 1;
        let pref_s = pref.to_string();
        let mut args = vec!["rule", "add"];
        args.extend_from_slice(spec);
        args.extend_from_slice(&["pref", &pref_s]);
        ip_n(ns, args)?;
        self.rules.push((ns.to_owned(), pref));
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Err(e) = kill_all(&host.ns) {
                tracing::warn!(ns = host.ns, error = %e, "killing a test host's processes");
            }
            if let Err(e) = ip(["netns", "del", &host.ns]) {
                tracing::warn!(ns = host.ns, error = %e, "deleting a test host");
            }
        }
        if let Err(e) = ip(["netns", "del", &self.hub]) {
            tracing::warn!(ns = self.hub, error = %e, "deleting a test rig's bridge");
        }
    }
}

/// SIGKILLs every process in namespace `ns` (and waits until none is left, briefly).
fn kill_all(ns: &str) -> Result<(), RigError> {
    for _ in 0..50 {
        let out = run(Command::new("ip").args(["netns", "pids", ns]))?;
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // Gone already: nothing to do.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

fn ip<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Output, RigError> {
    run(Command::new("ip").args(args))
}

fn ip_n<'a>(ns: &str, args: impl IntoIterator<Item = &'a str>) -> Result<Output, RigError> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

fn run(cmd: &mut Command) -> Result<Output, RigError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(RigError::NoIp)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(RigError::Command {
        command: format!("{cmd:?}"),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}
