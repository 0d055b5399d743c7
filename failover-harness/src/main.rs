//! `failover-harness`: see `failover-harness --help` and the crate documentation.

mod cli;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use failover_harness::run::{self, RunOptions};

use crate::cli::{Cli, Command, RunArgs};

/// Environment variable: a file for the harness's log (never the terminal).
const LOG_ENV: &str = "FAILOVER_HARNESS_LOG";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Game { args } = cli.command {
        return tetris::cli::main_with_args(std::iter::once("tetris".into()).chain(args));
    }
    if let Err(e) = log_to_file() {
        eprintln!("failover-harness: {e:#}");
        return ExitCode::FAILURE;
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("failover-harness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log_to_file() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(LOG_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.to_string_lossy()))?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_thread_names(true)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_command(&args),
        Command::Game { .. } => Ok(ExitCode::FAILURE),
    }
}

fn run_command(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let opts = RunOptions {
        seed: args.seed,
        level: args.level,
        keys: args.keys.clone(),
        script: args.script.clone(),
        kill_after: args.kill_after.clone(),
        kill_random: args.kill_random.zip(args.kill_seed),
        transport: args.transport,
        mode: args.mode.mode(),
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
