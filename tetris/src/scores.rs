//! The high-score file (skeleton: the real implementation follows in the next commit).

use std::io::Write;

use crate::options::Options;

/// Everything after an interactive game, with the terminal already restored.
pub fn finish_game(options: &Options, points: u32, out: &mut dyn Write) -> anyhow::Result<()> {
    let score = u64::from(points) * u64::from(options.level);
    writeln!(
        out,
        "Your score:  {points} point{}  x  level {}  =  {score}",
        if points == 1 { "" } else { "s" },
        options.level
    )?;
    anyhow::bail!("saving high scores is not implemented yet")
}

/// `tetris -s`: prints the high-score table.
pub fn show_scores(_options: &Options, _out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::bail!("showing high scores is not implemented yet")
}
