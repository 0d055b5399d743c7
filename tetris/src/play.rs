//! The interactive game (placeholder until the terminal half lands; its owner replaces this).

use std::process::ExitCode;

use crate::options::Options;

/// Plays one interactive game.
pub fn run(_options: &Options) -> anyhow::Result<ExitCode> {
    anyhow::bail!("interactive play is not built yet: use --headless")
}
