//! `failover-harness`: see `failover-harness --help` and the crate documentation.

mod cli;
mod hosts_cli;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use failover_harness::bench::{self, BenchOptions};
use failover_harness::control;
use failover_harness::play::{self, PlayOptions};
use failover_harness::run::{self, RunOptions};

use crate::cli::{
    AgentArgs, BenchArgs, Cli, ClientArgs, Command, PlayArgs, RunArgs, SessionArgs, StatusArgs,
};

/// Environment variable: a file for the harness's log (never the terminal).
const LOG_ENV: &str = "FAILOVER_HARNESS_LOG";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Game { args } = cli.command {
        return tetris::cli::main_with_args(std::iter::once("tetris".into()).chain(args));
    }
    if let Err(e) = tetris::cli::log_to_file(LOG_ENV) {
        eprintln!("failover-harness: {e:#}");
        return ExitCode::FAILURE;
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // The chain once: a cause its context already quotes is not said twice.
            eprintln!("failover-harness: {}", tetris::cli::user_message(&e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_command(&args),
        Command::Play(args) => play_command(&args),
        Command::Axe(args) => axe_command(&args),
        Command::Status(args) => status_command(&args),
        Command::BenchFailover(args) => bench_command(&args),
        Command::Agent(args) => agent_command(&args),
        Command::Client(args) => client_command(&args),
        Command::Game { .. } => Ok(ExitCode::FAILURE),
        Command::FloorPeer { mode } => {
            hs_bench::floors::run_peer(&mode)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks the game's options with tetris's own parser before any game starts; on an error,
/// prints tetris's message once and gives the exit code.
fn check_game_options(tetris_args: &[OsString]) -> Option<ExitCode> {
    let argv = std::iter::once(OsString::from("tetris")).chain(tetris_args.iter().cloned());
    match tetris::options::parse_from(argv, None) {
        Ok(_) => None,
        Err(e) => {
            eprintln!("{}", e.stderr_line());
            Some(ExitCode::FAILURE)
        }
    }
}

fn run_command(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut game_args: Vec<OsString> = vec!["--headless".into()];
    if let Some(l) = &args.level {
        game_args.extend(["-l".into(), l.clone()]);
    }
    if let Some(k) = &args.keys {
        game_args.extend(["-k".into(), k.clone()]);
    }
    if let Some(code) = check_game_options(&game_args) {
        return Ok(code);
    }
    let opts = RunOptions {
        seed: args.seed,
        level: args.level.clone(),
        keys: args.keys.clone(),
        script: args.script.clone(),
        kill_after: args.kill_after.clone(),
        kill_random: args.kill_random.zip(args.kill_seed),
        transport: args.transport,
        mode: args.mode.mode(),
        hang: cli::hang_deadline(args.hang_ms),
    };
    let outcome = run::run(&opts)?;
    if let Some(path) = &args.stats {
        std::fs::write(path, outcome.stats_line())
            .with_context(|| format!("cannot write the stats to {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&outcome.output)
        .and_then(|()| out.flush())
        .context("cannot write the result to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn play_command(args: &PlayArgs) -> anyhow::Result<ExitCode> {
    let tetris_args = args.tetris_args();
    if let Some(code) = check_game_options(&tetris_args) {
        return Ok(code);
    }
    if args.hosts {
        return hosts_cli::play(tetris_args);
    }
    let chaos = match args.chaos {
        Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--chaos wants a positive number of seconds, not {s}"),
        None => None,
    };
    play::play(&PlayOptions {
        tetris_args,
        mode: args.mode.mode(),
        transport: args.transport,
        chaos,
        events_file: args.events.clone(),
        hang: cli::hang_deadline(args.hang_ms),
    })
}

/// A session's answer line, or its error as ours.
fn answer(request: &str, session: &SessionArgs) -> anyhow::Result<serde_json::Value> {
    let line = control::ask(request, session.session)?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the session answered something else than JSON: {line}"))?;
    if let Some(why) = v.get("error").and_then(serde_json::Value::as_str) {
        anyhow::bail!("the session could not {request}: {why}");
    }
    Ok(v)
}

fn axe_command(args: &SessionArgs) -> anyhow::Result<ExitCode> {
    let v = answer("axe", args)?;
    let pid = v["axed"].as_u64().unwrap_or(0);
    println!("axed the primary (pid {pid}); its spare takes over");
    Ok(ExitCode::SUCCESS)
}

fn agent_command(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    use failover_harness::cluster::agent::{self, AgentOptions};
    agent::run(&AgentOptions {
        etcd: args.etcd.clone(),
        session: args.session.clone(),
        name: args.name.clone(),
        listen: args.listen,
        key_file: args.key_file.clone(),
        suspect: std::time::Duration::from_millis(args.suspect_ms),
        ttl_s: args.ttl_s,
        events: args.events.clone(),
        tetris: args.tetris.clone(),
    })?;
    Ok(ExitCode::SUCCESS)
}

fn cluster_status_command(etcd: &str, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    use failover_harness::cluster::status;
    let session = args.session.as_deref().unwrap_or_default();
    let s = status::read(etcd, session)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", s.to_json())?;
    } else {
        writeln!(out, "{}", status::human(session, &s))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status_command(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    if let Some(etcd) = &args.etcd {
        return cluster_status_command(etcd, args);
    }
    let session = SessionArgs {
        session: args
            .session
            .as_deref()
            .map(|s| {
                s.parse::<u32>().with_context(|| {
                    format!("--session {s:?}: a play session's pid (or use --etcd for a cluster)")
                })
            })
            .transpose()?,
    };
    if args.events {
        let v = answer("events", &session)?;
        let mut out = std::io::stdout().lock();
        for line in v["events"].as_array().into_iter().flatten() {
            writeln!(out, "{}", line.as_str().unwrap_or_default())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let v = answer("status", &session)?;
    let s: control::Status =
        serde_json::from_value(v).context("the session's status has another shape")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", s.to_json())?;
    } else {
        let spare = if s.spare_pid == 0 {
            "none".to_owned()
        } else {
            s.spare_pid.to_string()
        };
        let rto = s
            .last_rto_ms
            .map_or_else(String::new, |ms| format!(" (last {ms:.1}ms)"));
        writeln!(
            out,
            "primary {} | spare {spare} | epoch {} | failovers {}{rto} | spare deaths {} | \
             checkpoints {} | stall {:.1}us p99 {:.1}us | lag {} | {} over {}",
            s.primary_pid,
            s.epoch,
            s.failovers,
            s.spare_deaths,
            s.checkpoints,
            s.stall_last_us,
            s.stall_p99_us,
            s.lag,
            s.mode,
            s.transport
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_command(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.hosts {
        return hosts_cli::bench(args);
    }
    let result = bench::bench(&BenchOptions {
        trials: args.trials,
        mode: args.mode.mode(),
        transport: args.transport,
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", result.to_json())?;
    } else {
        write!(out, "{}", result.report())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn client_command(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    use failover_harness::cluster::client::{self, ClientOptions, HeadlessOptions};
    let tetris_args = args.tetris_args();
    let mut check = tetris_args.clone();
    if args.headless {
        check.push("--headless".into());
    }
    if let Some(code) = check_game_options(&check) {
        return Ok(code);
    }
    let tetris_args = tetris_args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| anyhow::anyhow!("the game's argument {a:?} is not UTF-8"))
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    client::client(&ClientOptions {
        etcd: args.etcd.clone(),
        session: args.session.clone(),
        key_file: args.key_file.clone(),
        suspect: std::time::Duration::from_millis(args.suspect_ms),
        events: args.events.clone(),
        tetris_args,
        headless: args.script.clone().map(|script| HeadlessOptions {
            script,
            pace: std::time::Duration::from_micros(args.pace_us),
        }),
        axe_host_fd: args.axe_host_fd,
        axe_after: args.axe_after.clone(),
    })
}
