//! `tetris`: BSD Tetris. Parses the command line, then shows scores, runs headless or plays.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use tetris::options::{self, Parsed};
use tetris::{headless, play, scores};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tetris: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let options = match options::parse_env() {
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
    if options.headless {
        return headless::run(&options);
    }
    play::run(&options)
}
