//! What the checkpoint tests share: a long deterministic script, the running game's state read
//! from its process's memory, and the tetris binary with a status descriptor.

#![allow(dead_code)]

pub mod screen;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use tetris::headless::{input_of, run_script};
use tetris::options::Options;
use tetris::state::GameState;
use zerocopy::FromBytes as _;

/// The seed of [`script`]'s game.
pub const SEED: u64 = 1234;
/// Its level.
pub const LEVEL: u32 = 4;

/// A script of 520 inputs that plays a real game without ending it: moves (spread wide, so
/// the pieces do not pile up in the middle), rotations, downs and many timer expiries (so
/// pieces lock and rows fill), newlines every 37 bytes, from a fixed linear congruential
/// generator so the tests are the same every time.
pub fn script() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    let mut out = Vec::new();
    for i in 0..520 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let pick = (x >> 16) % 16;
        out.push(match pick {
            0..=5 => b'.',
            6..=9 => b'j',
            10..=13 => b'l',
            14 => b'k',
            _ => b'n',
        });
        if i % 37 == 36 {
            out.push(b'\n');
        }
    }
    out
}

/// The headless options of [`script`]'s game.
pub fn options() -> Options {
    Options {
        level: LEVEL,
        headless: true,
        ..Options::default()
    }
}

/// Inputs the uninterrupted game consumes from `script` (by the rules, no binary involved).
pub fn consumed(script: &[u8]) -> u64 {
    run_script(&options(), SEED, script).inputs
}

/// The part of `script` after its first `n` inputs (newlines do not count): what a
/// supervisor replays to a game that reports `n` inputs consumed.
pub fn after_inputs(script: &[u8], n: u64) -> &[u8] {
    let mut seen = 0;
    for (i, &b) in script.iter().enumerate() {
        if seen == n {
            return &script[i..];
        }
        seen += u64::from(input_of(b).is_some());
    }
    &[]
}

/// An argument list of strings and paths.
pub fn args(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// `tetris ARGS` through `/bin/sh`, which opens fd 3 on `status` (replaced) and execs the
/// game with `TETRIS_STATUS_FD=3`; no `HS_*` variable is inherited.
pub fn tetris_with_status(args: &[OsString], status: &Path) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec \"$0\" \"$@\" 3>\"$TETRIS_TEST_STATUS\"")
        .arg(env!("CARGO_BIN_EXE_tetris"))
        .args(args)
        .env("TETRIS_STATUS_FD", "3")
        .env("TETRIS_TEST_STATUS", status);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A socket directory of mode 0700 inside `dir`, as hslib demands.
pub fn socket_dir(dir: &Path) -> PathBuf {
    let socks = dir.join("sock");
    std::fs::create_dir(&socks).expect("create the socket directory");
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o700))
        .expect("chmod 0700 the socket directory");
    socks
}

/// The game state in the memory of process `pid` (the region is at the same address in
/// every process of the binary); `None` while it is not mapped yet.
pub fn game_in(pid: u32) -> Option<GameState> {
    let addr = tetris::worker::state_address().ok()?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; size_of::<GameState>()];
    mem.read_exact_at(&mut buf, addr as u64).ok()?;
    GameState::read_from_bytes(&buf).ok()
}

/// The resumed line's (checkpoint, inputs, epoch) in `status`, once it is complete.
pub fn resumed(status: &Path) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(status).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    assert_eq!(text.lines().count(), 1, "one resumed line: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON line");
    let r = &v["resumed"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {text}"));
    Some((n("checkpoint"), n("inputs"), n("epoch")))
}
