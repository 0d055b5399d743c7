//! The `tetris` command as a library function, so a supervisor can run the game as itself
//! (the failover harness re-executes its own binary as the game process) and the `tetris`
//! binary stays a thin wrapper: [`main_with_args`] parses the arguments, then shows scores,
//! or plays (on the terminal or headless) through hslib's worker in whatever role the
//! command line and `HS_*` ask for.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use hslib::HsError;

use crate::options::{self, Parsed};
use crate::state::GameState;
use crate::worker::{self, Ran};
use crate::{play, scores, store};

/// Environment variable: a file to append hslib's log to (it never goes to the terminal).
pub const LOG_ENV: &str = "TETRIS_LOG";

/// The exit status of a cluster spare that refused its promote order (hslib's
/// [`HsError::PromoteRefused`]): its agent tells it from the game's own failures.
pub const EXIT_PROMOTE_REFUSED: u8 = 3;

/// The exit status of a spare that its live primary dropped (it missed the ack deadline):
/// not a finished game, so a supervisor starts another spare instead of ending the session.
pub const EXIT_SPARE_DROPPED: u8 = 4;

/// Runs `tetris` with `args` (the program name first); errors are reported on stderr as
/// `tetris: ...` and give a failure exit code ([`EXIT_PROMOTE_REFUSED`] for a refused
/// promote order, 1 otherwise).
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tetris: {}", user_message(&e));
            let refused = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(HsError::PromoteRefused { .. })));
            if refused {
                ExitCode::from(EXIT_PROMOTE_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What a user reads for `e`: its causes joined by `: `, each said once (an error whose
/// message already ends with its source's is not followed by it again), without the
/// library's wrapping words or Rust's `(os error N)`.
pub fn user_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<HsError>() {
            // The worker's own error is what went wrong; hslib only carried it.
            Some(HsError::Worker(inner)) => inner.to_string(),
            Some(HsError::Config { what, .. }) if *what == "spare link" => {
                "a spare needs HS_TRANSPORT=unix or tcp to reach its primary".to_owned()
            }
            _ => cause.to_string(),
        };
        let text = without_os_error_codes(&text);
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// `text` without the ` (os error N)` Rust appends to every OS error's description.
fn without_os_error_codes(text: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..at]);
        if digits > 0 && after.as_bytes().get(digits) == Some(&b')') {
            rest = &after[digits + 1..];
        } else {
            out.push_str(MARK);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What must hold before the game is started for a terminal: BSD's `scr_init` and
/// `scr_set` checks (a terminal that can clear its screen, standard input a terminal),
/// done before anything is drawn or changed.
///
/// A primary or spare draws on the pseudo-terminal of the supervisor that set `HS_ROLE`,
/// whose emulator is the judge of what it can show, not the `TERM` it passed on from its
/// own environment: the `TERM` check is the standalone game's.
fn check_terminal() -> anyhow::Result<()> {
    let supervised =
        std::env::var_os(hslib::api::ENV_ROLE).is_some_and(|r| r == "primary" || r == "spare");
    if !supervised && std::env::var_os("TERM").is_some_and(|t| t == "dumb") {
        anyhow::bail!(
            "cannot clear screen: TERM=dumb cannot move the cursor (--headless plays without a \
             screen)"
        );
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "tcgetattr() fails: standard input is not a terminal (--headless plays a script \
             without one)"
        );
    }
    Ok(())
}

/// Refuses a `--resume` path that cannot be a checkpoint log, before hslib opens it: a
/// missing file, a directory, and anything not a regular file (a FIFO without a writer
/// would block the open for ever; a device need never end).
fn check_log_to_resume(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("cannot resume from {shown}: there is no such file")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot resume from {shown}")),
    };
    if meta.is_dir() {
        anyhow::bail!("cannot resume from {shown}: it is a directory, not a checkpoint log");
    }
    if !meta.is_file() {
        anyhow::bail!(
            "cannot resume from {shown}: it is not a regular file, so not a checkpoint log"
        );
    }
    Ok(())
}

/// Refuses a `--checkpoint-file` path whose log cannot be created, naming the reason once.
fn check_log_to_write(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    if path.is_dir() {
        anyhow::bail!("cannot write the checkpoint log {shown}: it is a directory");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        anyhow::bail!(
            "cannot write the checkpoint log {shown}: there is no directory {}",
            dir.display()
        );
    }
    Ok(())
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
    if let Some(path) = &options.checkpoint_file {
        check_log_to_write(path)?;
    }
    if let Some(path) = &options.resume {
        check_log_to_resume(path)?;
        // A finished game has nothing left to play: resuming it would show the score screen
        // and save the score again, and append to the log, every time.
        if !options.headless
            && let Some(state) = store::logged_state(path)?.filter(GameState::is_finished)
        {
            anyhow::bail!(
                "this game has ended: score {} ({}); the log {} is left as it is",
                u64::from(state.points) * u64::from(state.level),
                scores::points_and_level(state.points, state.level),
                path.display()
            );
        }
    }
    if !options.headless {
        check_terminal()?;
    }
    match worker::run(&options)? {
        // A spare whose primary finished: the primary showed everything.
        Ran::SpareDone => Ok(ExitCode::SUCCESS),
        Ran::SpareDropped { checkpoint } => {
            eprintln!(
                "tetris: the primary dropped this spare (it missed the ack deadline) and plays on; \
                 this spare held checkpoint {}: start another spare to protect the game again",
                checkpoint.map_or_else(|| "none".to_owned(), |c| c.to_string())
            );
            Ok(ExitCode::from(EXIT_SPARE_DROPPED))
        }
        // A headless game printed its result line itself, before its spare was let go.
        Ran::Played { ending: None, .. } => Ok(ExitCode::SUCCESS),
        Ran::Played {
            state,
            ending: Some(ending),
            ..
        } => {
            // The score counts at the game's level: a resumed or promoted game's comes from
            // its checkpoint, not from this command line.
            let options = options::Options {
                level: state.level,
                ..options
            };
            play::finish(&options, &state, ending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_ends_with_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(scores::ScoresError::Read {
            path: "/x/scores".into(),
            source: io,
        });
        assert_eq!(
            user_message(&e),
            "cannot read /x/scores: No such file or directory"
        );
    }

    #[test]
    fn distinct_causes_are_joined_and_the_worker_wrapper_dropped() {
        let inner: hslib::WorkerError = "end of file on the terminal".into();
        let e = anyhow::Error::new(HsError::Worker(inner)).context("playing failed");
        assert_eq!(
            user_message(&e),
            "playing failed: end of file on the terminal"
        );
    }

    #[test]
    fn only_well_formed_os_error_codes_are_dropped() {
        assert_eq!(
            without_os_error_codes("a (os error 2): b (os error 13)"),
            "a: b"
        );
        assert_eq!(without_os_error_codes("a (os error x)"), "a (os error x)");
    }
}
