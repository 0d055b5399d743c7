//! BSD Tetris, ported faithfully to Rust, with its state in one checkpointable struct.
//!
//! Layout: [`state`] is the game as plain old data; [`rng`] and [`rules`] are pure functions on
//! it (no I/O, no clock); [`headless`] drives the rules from a script; [`options`] parses the
//! command line; [`scores`] keeps the high-score file; the terminal side (screen, input, clock)
//! lives next to [`play`], the interactive main loop that ties them together. [`worker`] runs
//! either loop as hslib's worker on the state in checkpoint memory, committing every change
//! through a [`store::Store`]; [`stats`] and [`status`] are what it reports. [`cli`] is the
//! whole `tetris` command as a function, for the binary and for supervisors that run the game
//! as their own executable.

pub mod cli;
pub mod clock;
pub mod headless;
pub mod input;
pub mod options;
pub mod play;
pub mod rng;
pub mod rules;
pub mod scores;
pub mod screen;
pub mod signals;
pub mod state;
pub mod stats;
pub mod status;
pub mod store;
pub mod terminal;
pub mod worker;
