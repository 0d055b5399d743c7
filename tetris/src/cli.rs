//! The `tetris` command as a library function, so a supervisor can run the game as itself
//! (the failover harness re-executes its own binary as the game process) and the `tetris`
//! binary stays a thin wrapper: [`main_with_args`] parses the arguments, then shows scores,
//! or plays (on the terminal or headless) through hslib's worker in whatever role the
//! command line and `HS_*` ask for.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::options::{self, Parsed};
use crate::worker::{self, Ran};
use crate::{headless, play, scores};

/// Environment variable: a file to append hslib's log to (it never goes to the terminal).
pub const LOG_ENV: &str = "TETRIS_LOG";

/// Runs `tetris` with `args` (the program name first); errors are reported on stderr as
/// `tetris: ...` and give a failure exit code.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tetris: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `tracing` events to the file the environment variable `var` names, if any; without
/// it they go nowhere (the terminal belongs to the game). `tetris` uses [`LOG_ENV`]; a
/// supervisor running the game as itself passes its own variable.
pub fn log_to_file(var: &str) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) else {
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

fn run<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    log_to_file(LOG_ENV)?;
    let options = match options::parse_from(args, std::env::var_os(options::SCORES_ENV)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help(text)) => {
            let mut out = std::io::stdout().lock();
            write!(out, "{text}").context("cannot write the help")?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("{}", e.stderr_line());
            return Ok(ExitCode::FAILURE);
        }
    };
    if options.show_scores {
        let mut out = std::io::stdout().lock();
        scores::show_scores(&options, &mut out)?;
        out.flush().context("cannot write the high scores")?;
        return Ok(ExitCode::SUCCESS);
    }
    match worker::run(&options)? {
        // A spare whose primary finished: the primary showed everything.
        Ran::SpareDone => Ok(ExitCode::SUCCESS),
        Ran::Played {
            state,
            ending: None,
            ..
        } => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", headless::to_json(&state))
                .and_then(|()| out.flush())
                .context("cannot write the result to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Ran::Played {
            state,
            ending: Some(ending),
            ..
        } => play::finish(&options, &state, ending),
    }
}
