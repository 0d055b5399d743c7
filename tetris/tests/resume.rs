//! A headless game checkpointed to a file and continued with `--resume` ends exactly as the
//! uninterrupted game: whether the log is cut at any byte (the machine died mid-write) and the
//! whole script file is given again (the game passes over what it had consumed), or the
//! script is cut and the rest comes on stdin. The `TETRIS_STATUS_FD` line of each resumed
//! game says how many inputs it had consumed.

mod common;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{LEVEL, SEED, args, consumed, script, tetris_with_status};
use tempfile::TempDir;
use tetris::headless::input_of;

/// `tetris ARGS` with fd 3 open on `status` and `TETRIS_STATUS_FD=3`, `stdin` fed and closed.
fn tetris(args: &[OsString], status: &Path, stdin: &[u8]) -> Output {
    let mut child = tetris_with_status(args, status)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tetris");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for tetris")
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {out:?}");
    assert!(out.stderr.is_empty(), "{what}: {out:?}");
    String::from_utf8(out.stdout.clone()).expect("utf-8 JSON")
}

/// The resumed line's (checkpoint, inputs, epoch).
fn resumed(status: &Path) -> (u64, u64, u64) {
    common::resumed(status).expect("a complete resumed line")
}

struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: TempDir::new().expect("tempdir"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn a_log_cut_at_any_byte_resumes_with_the_whole_script_file_to_the_same_end() {
    let f = Files::new();
    let script = script();
    let total = consumed(&script);
    assert!(
        total > 400,
        "the script must play a long game, not {total} inputs"
    );
    let script_file = f.path("script");
    std::fs::write(&script_file, &script).unwrap();
    let seed = SEED.to_string();
    let level = LEVEL.to_string();
    let status = f.path("status");
    let game = |extra: &[&dyn AsRef<OsStr>]| {
        let mut a = args(&[&"--headless", &"--seed", &seed, &"-l", &level]);
        a.extend(args(extra));
        a
    };

    let plain = stdout_of(
        &tetris(&game(&[&"--script", &script_file]), &status, b""),
        "uninterrupted",
    );
    let log = f.path("log");
    let logged = stdout_of(
        &tetris(
            &game(&[&"--script", &script_file, &"--checkpoint-file", &log]),
            &status,
            b"",
        ),
        "checkpointed",
    );
    assert_eq!(logged, plain, "checkpointing changed the game");
    assert_eq!(
        std::fs::read_to_string(&status).unwrap(),
        "",
        "a fresh game is not resumed"
    );
    let bytes = std::fs::read(&log).unwrap();

    // Cuts spread over the log, its whole length, one byte short of it, and cuts so early
    // that no checkpoint is complete.
    let mut cuts: Vec<usize> = (1..=13).map(|i| bytes.len() * i / 13).collect();
    cuts.extend([bytes.len() - 1, bytes.len() / 2 + 1, 1, 64]);
    cuts.sort_unstable();
    // Where the log first holds a whole checkpoint (the new game: a page, its metadata and
    // its commit): shorter cuts cannot be resumed.
    let first_whole = {
        let probe = f.path("probe");
        let whole = |n: usize| {
            std::fs::write(&probe, &bytes[..n]).unwrap();
            tetris::store::logged_state(&probe).unwrap().is_some()
        };
        let (mut lo, mut hi) = (0, bytes.len());
        assert!(whole(hi), "the whole log holds no whole checkpoint");
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if whole(mid) { hi = mid } else { lo = mid }
        }
        hi
    };
    assert!(first_whole > 4096, "a checkpoint holds at least its page");
    cuts.extend([first_whole - 1, first_whole]);
    cuts.sort_unstable();
    cuts.dedup();
    let mut last_inputs = 0;
    for cut in cuts {
        let cut_log = f.path(&format!("cut-{cut}"));
        std::fs::write(&cut_log, &bytes[..cut]).unwrap();
        let resume = args(&[
            &"--headless",
            &"--resume",
            &cut_log,
            &"--script",
            &script_file,
        ]);
        let out = tetris(&resume, &status, b"");
        if cut < first_whole {
            // Not even the first checkpoint is whole in the log.
            assert_eq!(out.status.code(), Some(1), "cut {cut}: {out:?}");
            assert!(out.stdout.is_empty(), "cut {cut}: {out:?}");
            continue;
        }
        assert_eq!(stdout_of(&out, &format!("cut {cut}")), plain, "cut {cut}");
        let (checkpoint, inputs, epoch) = resumed(&status);
        assert_eq!(epoch, 2, "cut {cut}: the log's writer was epoch 1");
        // Checkpoint 1 is the new game; every input consumed adds one.
        assert_eq!(checkpoint, inputs + 1, "cut {cut}");
        assert!(
            inputs >= last_inputs,
            "cut {cut}: a longer log, fewer inputs"
        );
        assert!(inputs <= total, "cut {cut}");
        if cut == bytes.len() {
            assert_eq!(inputs, total, "the whole log holds the whole game");
        }
        last_inputs = inputs;

        // The resumed game appended its own session: that log resumes at the end.
        let again = tetris(&resume, &status, b"");
        assert_eq!(stdout_of(&again, &format!("cut {cut} again")), plain);
        let (_, inputs, epoch) = resumed(&status);
        assert_eq!((inputs, epoch), (total, 3), "cut {cut} again");
    }
    assert!(last_inputs > 0);
}

#[test]
fn a_script_cut_anywhere_resumes_with_the_rest_on_stdin_to_the_same_end() {
    let f = Files::new();
    let script = script();
    let seed = SEED.to_string();
    let level = LEVEL.to_string();
    let status = f.path("status");
    let plain = stdout_of(
        &tetris(
            &args(&[&"--headless", &"--seed", &seed, &"-l", &level]),
            &status,
            &script,
        ),
        "uninterrupted",
    );
    for cut in [
        0,
        1,
        36,
        37,
        38,
        150,
        301,
        449,
        script.len() - 1,
        script.len(),
    ] {
        let log = f.path(&format!("log-{cut}"));
        let first = tetris(
            &args(&[
                &"--headless",
                &"--seed",
                &seed,
                &"-l",
                &level,
                &"--checkpoint-file",
                &log,
            ]),
            &status,
            &script[..cut],
        );
        stdout_of(&first, &format!("first part to {cut}"));
        let rest = tetris(
            &args(&[&"--headless", &"--resume", &log]),
            &status,
            &script[cut..],
        );
        assert_eq!(
            stdout_of(&rest, &format!("rest from {cut}")),
            plain,
            "cut {cut}"
        );
        let (checkpoint, inputs, _) = resumed(&status);
        let want = consumed(&script[..cut]);
        assert_eq!(
            inputs, want,
            "cut {cut}: the inputs the first part consumed"
        );
        assert_eq!(checkpoint, want + 1, "cut {cut}");
        assert_eq!(
            script[..cut]
                .iter()
                .filter(|&&b| input_of(b).is_some())
                .count() as u64,
            want,
            "cut {cut}: the game must not end inside the first part"
        );
    }
}

/// Where each frame of a checkpoint log starts, with its kind (the 40-byte header of
/// `hslib/PROTOCOL.md`: kind at offset 6, body length at 24).
fn frames(log: &[u8]) -> Vec<(usize, u16, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 40 <= log.len() {
        let kind = u16::from_le_bytes([log[at + 6], log[at + 7]]);
        let len = u32::from_le_bytes([log[at + 24], log[at + 25], log[at + 26], log[at + 27]]);
        let len = len as usize;
        out.push((at, kind, len));
        at += 40 + len;
    }
    out
}

#[test]
fn a_damaged_page_or_metadata_body_resumes_from_the_checkpoint_before_it_with_one_warning() {
    const PAGES: u16 = 2;
    const METADATA: u16 = 3;
    let f = Files::new();
    let script = script();
    let script_file = f.path("script");
    std::fs::write(&script_file, &script).unwrap();
    let seed = SEED.to_string();
    let level = LEVEL.to_string();
    let status = f.path("status");
    let game = |extra: &[&dyn AsRef<OsStr>]| {
        let mut a = args(&[&"--headless", &"--seed", &seed, &"-l", &level]);
        a.extend(args(extra));
        a
    };
    let plain = stdout_of(
        &tetris(&game(&[&"--script", &script_file]), &status, b""),
        "uninterrupted",
    );
    // Sync mode: every checkpoint is in the log (async ones may be merged while the writer
    // is behind).
    let log = f.path("log");
    let out = tetris_with_status(
        &game(&[&"--script", &script_file, &"--checkpoint-file", &log]),
        &status,
    )
    .env("HS_MODE", "sync")
    .stdin(Stdio::null())
    .output()
    .expect("tetris");
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&log).unwrap();
    let all = frames(&bytes);
    let mut resumed_at = Vec::new();
    for (kind, name) in [(PAGES, "Pages"), (METADATA, "Metadata")] {
        // The tenth checkpoint's frame of this kind: a body byte flipped.
        let &(at, _, len) = all
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .nth(9)
            .expect("ten checkpoints in the log");
        assert!(len > 8);
        let mut damaged = bytes.clone();
        damaged[at + 40 + len / 2] ^= 0x40;
        let path = f.path(&format!("damaged-{name}"));
        std::fs::write(&path, &damaged).unwrap();
        let out = tetris(
            &args(&[&"--headless", &"--resume", &path, &"--script", &script_file]),
            &status,
            b"",
        );
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), plain, "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one warning: {stderr}");
        assert!(
            lines[0].starts_with("tetris: warning: checkpoint log ")
                && lines[0].contains(&format!("{name} frame body checksum"))
                && lines[0].matches("checksum").count() == 1,
            "{name}: {stderr}"
        );
        let (checkpoint, _, _) = resumed(&status);
        resumed_at.push(checkpoint);
    }
    // Both damages cost the same checkpoint: the game resumes from the one before it.
    assert_eq!(resumed_at[0], resumed_at[1], "{resumed_at:?}");
    assert_eq!(
        resumed_at[0], 9,
        "the tenth checkpoint is damaged: {resumed_at:?}"
    );
}
