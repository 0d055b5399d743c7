//! End-to-end test support shared across the workspace: run a real binary on a
//! pseudo-terminal and read its screen with `vt100`.
