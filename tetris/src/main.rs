//! `tetris`: BSD Tetris. Everything happens in [`tetris::cli::main_with_args`].

use std::process::ExitCode;

fn main() -> ExitCode {
    tetris::cli::main_with_args(std::env::args_os())
}
