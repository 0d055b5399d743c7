//! The hot-spare supervisor for the Tetris demo (DESIGN.md, "Failover, end to end").
//!
//! Every game process is this executable re-run as `failover-harness game -- ARGS`, which is
//! `tetris ARGS` ([`game`]), in the role (primary, spare), epoch and mode the harness sets in
//! its environment, with a status pipe on which it reports a restore and its stats
//! ([`report`]). [`link`] is how primary and spare reach each other. [`engine`] owns the
//! pair's lifecycle (starting games, sync, detection of the primary's death, promotion,
//! replay of the input log, replacing spares, the session's end) for every command, on games
//! behind a small trait ([`engine::node`]; [`engine::local`]: local processes on
//! pseudo-terminals or pipes). The commands are adapters over it: [`run`] is the scripted
//! kill-and-resume of a headless game ([`killplan`] picks where to kill); [`play`] puts an
//! interactive game on the user's terminal ([`term`], [`vt`], [`statusrow`]) and [`control`]
//! lets `axe` and `status` reach it from another terminal; [`mod@bench`] times failovers
//! without a user terminal. [`sys`] holds the only `unsafe`.

pub mod bench;
pub mod cluster;
pub mod control;
pub mod engine;
pub mod game;
pub mod killplan;
pub mod link;
pub mod play;
pub mod report;
pub mod run;
pub mod statusrow;
pub mod sys;
pub mod term;
pub mod vt;
