//! `hs-bench` as a library: the floors every benchmark result is compared with ([`floors`]),
//! for other tools that print their own ratios (`failover-harness bench-failover` measures the
//! kill-to-EOF floor in its own run with [`floors::kill_to_eof`]), and what a short path
//! pays for running cold ([`cold`]).

pub mod cold;
pub mod floors;
pub mod pages;
