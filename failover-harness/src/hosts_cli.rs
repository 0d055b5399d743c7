//! `play --hosts` and `bench-failover --hosts`: the command line's side of the namespace rig
//! (`failover_harness::cluster::{play_hosts, bench_hosts}`).

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use failover_harness::cluster::bench_hosts::{self, HostsBenchOptions};
use failover_harness::cluster::hosts::HostsOptions;
use failover_harness::cluster::play_hosts::{self, PlayHostsOptions};

use crate::cli::BenchArgs;

/// The rig needs root (namespaces) and etcd: without them, the reason and exit status 2.
fn prerequisites() -> Option<ExitCode> {
    let uid = nix::unistd::geteuid();
    let why = if !uid.is_root() {
        Some(format!(
            "--hosts builds network namespaces and needs root (running as uid {uid})"
        ))
    } else if hotspare_cluster::server::etcd_binary().is_none() {
        Some("--hosts needs etcd on the PATH (apt-get install etcd-server)".to_owned())
    } else {
        None
    };
    why.map(|why| {
        eprintln!("failover-harness: {why}");
        ExitCode::from(2)
    })
}

fn hosts_options(agents: usize, suspect_ms: u64) -> anyhow::Result<HostsOptions> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding this executable for the rig's hosts: {e}"))?;
    let mut o = HostsOptions::new(exe);
    o.agents = agents;
    o.suspect_ms = suspect_ms;
    Ok(o)
}

/// `play --hosts`.
pub fn play(tetris_args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    if let Some(code) = prerequisites() {
        return Ok(code);
    }
    play_hosts::play_hosts(&PlayHostsOptions {
        hosts: hosts_options(2, 150)?,
        tetris_args,
        down_for: Duration::from_secs(2),
    })
}

/// `bench-failover --hosts`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(code) = prerequisites() {
        return Ok(code);
    }
    let seed = u64::from(std::process::id());
    let result = bench_hosts::bench_hosts(&HostsBenchOptions {
        hosts: hosts_options(usize::from(args.hosts_n), args.suspect_ms)?,
        trials: args.trials,
        fault: args.fault,
        pace_us: 1000,
        inputs_per_game: 20_000,
        seed,
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", result.to_json())?;
    } else {
        write!(out, "{}", result.report())?;
    }
    Ok(ExitCode::SUCCESS)
}
