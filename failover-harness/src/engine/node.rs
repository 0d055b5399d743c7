//! What the engine needs of a game and of whatever starts games: a small interface that a
//! local process on a pseudo-terminal or on pipes implements ([`super::local`]), and that a
//! game on another host, reached through an agent, can implement as well. Nothing here names
//! a pidfd or a terminal: a game is an opaque name, with a pid for display where there is one.

use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;

use crate::report::{Line, Resumed, Stats};

/// What a write of input did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// This many bytes were taken (0: none now, try again when writable).
    Took(usize),
    /// The game no longer reads its input: it is dying or has ended.
    Closed,
}

/// How a game ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// It ended on purpose (exit status 0).
    pub success: bool,
    /// Its status as people read it ("exit status: 1", "signal: 9 (SIGKILL)").
    pub text: String,
}

/// One running game (or one that has ended and not been dropped yet). Every call is
/// non-blocking. Dropping a node stops its game.
pub trait Node {
    /// The name the engine gave it (unique in the session).
    fn name(&self) -> &str;
    /// Its process id, for display; `None` where it has none here (a remote game).
    fn pid(&self) -> Option<u32>;
    /// Gives it input bytes, as many as it takes now.
    fn write_input(&mut self, bytes: &[u8]) -> anyhow::Result<Written>;
    /// Ends its input (a headless game then finishes and prints its result).
    fn close_input(&mut self);
    /// Asks it to stop as the user's interrupt key would (^C on a terminal).
    fn interrupt(&mut self) -> anyhow::Result<()>;
    /// What it wrote since the last call: `Some` (empty when nothing), `None` once its output
    /// is closed for good.
    fn read_output(&mut self) -> anyhow::Result<Option<Vec<u8>>>;
    /// The status lines it wrote since the last call.
    fn read_status(&mut self) -> anyhow::Result<Vec<Line>>;
    /// How it ended, once it has.
    fn exited(&mut self) -> anyhow::Result<Option<Exit>>;
    /// Stops it at once (SIGKILL for a local process); nothing if it has ended.
    fn kill(&mut self) -> anyhow::Result<()>;
    /// Tells it its screen's new size (nothing for a game without one).
    fn resize(&mut self, rows: u16, cols: u16);
    /// Its last words (an error message), for the session's own.
    fn last_words(&self) -> String;
    /// The game's own `--stats` line once it has ended, if it wrote one.
    fn final_stats(&self) -> Option<String>;
    /// Descriptors that become ready when it has something for the engine (`writing`: also
    /// when it can take input).
    fn wait_on(&self, writing: bool) -> Vec<(BorrowedFd<'_>, PollFlags)>;
}

/// Starts games.
pub trait Launcher {
    /// The games it starts.
    type Node: Node;
    /// Starts a game as `role` (primary or spare) with epoch `epoch`, named `name`.
    fn launch(&mut self, role: &hslib::Role, epoch: u64, name: &str) -> anyhow::Result<Self::Node>;
    /// Where in the input log a restored game continues (its resumed line's count of the
    /// input it accounts for: terminal bytes, or script inputs).
    fn resumed_at(&self, resumed: &Resumed) -> u64;
    /// The input the game's last checkpoint accounts for, from its stats line.
    fn accounted(&self, stats: &Stats) -> u64;
    /// The screen size for the games started from now on.
    fn resize(&mut self, rows: u16, cols: u16);
}
