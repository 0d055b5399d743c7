//! The headless contract of DESIGN.md: golden JSON lines worked out by hand, input consumption
//! rules, `-k` with 6 and 7 keys, and the real binary reading a file or stdin.
//!
//! How the goldens were derived: the piece sequences come from the RNG (xoshiro256++ seeded by
//! SplitMix64), computed with an independent Python transcription of the algorithm that
//! reproduces the documented seed-42 vector; shape k is `output_k % 7`, the first output is
//! `nextshape` and the second `curshape`. Boards, points and positions were then worked out by
//! hand from the shape table (see the comment on each test).

use std::io::Write;
use std::process::{Command, Stdio};

use tetris::headless::{feed, run_script, to_json};
use tetris::options::Options;

fn opts(level: u32, keys: &[u8; 7]) -> Options {
    Options {
        level,
        keys: *keys,
        headless: true,
        ..Options::default()
    }
}

/// The contract's JSON line for the given fields.
#[allow(clippy::too_many_arguments)]
fn line(
    seed: u64,
    level: u32,
    points: u32,
    cur: u8,
    next: u8,
    pos: i32,
    inputs: u64,
    over: bool,
    quit: bool,
    board: &[&str; 20],
) -> String {
    let rows: Vec<String> = board.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "{{\"seed\":{seed},\"level\":{level},\"points\":{points},\"score\":{},\
         \"curshape\":{cur},\"nextshape\":{next},\"pos\":{pos},\"inputs\":{inputs},\
         \"game_over\":{over},\"quit\":{quit},\"board\":[{}]}}",
        u64::from(points) * u64::from(level),
        rows.join(",")
    )
}

const E: &str = "..........";

fn board_with(bottom: &[&'static str]) -> [&'static str; 20] {
    let mut b = [E; 20];
    let start = 20 - bottom.len();
    b[start..].copy_from_slice(bottom);
    b
}

/// Seed 42 at level 3: pieces 0 (TL TC MR), 3 (O), then 5; the fourth output % 7 is 3.
/// `k` turns 0 into 7 (TC ML BL); `jj` moves its centre from column 5 to 3; space drops it:
/// its lowest cell (BL) is one row below the centre, so the centre goes from row 1 to 19,
/// 18 points; `.` locks it (+1): (18,3), (19,2), (19,3), (20,2). Then the O spawns, `lllll`
/// takes its centre (bottom-right cell) to column 10, space drops it from row 1 to 20, 19
/// points, `.` locks it (+1): rows 19 and 20, columns 9-10. Points 18+1+19+1 = 39; the piece
/// now falling is 5 with 3 next; 12 inputs (the trailing newline does not count).
#[test]
fn golden_seed_42_rotate_move_drop_lock_twice() {
    let state = run_script(&opts(3, b"jkl pqn"), 42, b"kjj .lllll .\n");
    let want = line(
        42,
        3,
        39,
        5,
        3,
        17,
        12,
        false,
        false,
        &board_with(&["..#.......", ".##.....##", ".#......##"]),
    );
    assert_eq!(to_json(&state), want);
}

/// Seed 83730: the first six pieces are O, O, O, O, I, I, then 1 with 6 next. The O's centre is
/// its bottom-right cell; `jjj`, `j`, `l`, `lll` put the four O's in columns 1-2, 3-4, 5-6,
/// 7-8, each dropped 19 rows (row 1 to 20) and locked: 4 x 20 points. Each I is turned
/// vertical (`k`: TC BC +24, rows r-1..r+2), moved to column 9 (`llll`) or 10 (`lllll`) and
/// dropped from row 1 until its bottom is row 20 (centre row 18): 17 rows + 1 for the lock,
/// twice: 36. The second I's lock fills rows 19 and 20: row 19 is elided first (rows above
/// move down one: the I's rows 17-18 become 18-19), then row 20 (again): the two remaining
/// cells of each I end up in rows 19 and 20, columns 9 and 10. Points 80 + 36 = 116; inputs
/// 5 + 3 + 3 + 5 + 7 + 8 = 31.
#[test]
fn golden_two_rows_cleared() {
    let script = b"jjj .j .l .lll .kllll .klllll .";
    let state = run_script(&opts(2, b"jkl pqn"), 83730, script);
    let want = line(
        83730,
        2,
        116,
        1,
        6,
        17,
        31,
        false,
        false,
        &board_with(&["........##", "........##"]),
    );
    assert_eq!(to_json(&state), want);
}

/// Seed 442: the first five pieces are all I (6), then 2 with 6 next. Each is turned vertical
/// at the spawn point (column 5, rows 0-3 free), dropped and locked, stacking in column 5:
/// bottoms at rows 20, 16, 12, 8, 4, so drops of 17, 13, 9, 5 and 1 rows, + 5 locks = 50
/// points. Column 5 is then full from row 1 to 20, the next piece's centre (row 1, column 5)
/// does not fit: game over after 15 inputs; the trailing `q. j` is not consumed, and the
/// game is over, not quit.
#[test]
fn golden_game_over_stops_consuming_input() {
    let script = b"k .k .k .k .k .q. j";
    let state = run_script(&opts(2, b"jkl pqn"), 442, script);
    let want = line(442, 2, 50, 2, 6, 17, 15, true, false, &["....#....."; 20]);
    assert_eq!(to_json(&state), want);
}

/// Quit at once: nothing moved, nothing locked, one input; what follows is not consumed.
#[test]
fn quit_stops_consuming_input() {
    let state = run_script(&opts(2, b"jkl pqn"), 42, b"q.... jjj");
    let want = line(42, 2, 0, 0, 3, 17, 1, false, true, &[E; 20]);
    assert_eq!(to_json(&state), want);
    let mut again = state;
    assert_eq!(feed(&mut again, b"..."), 0);
    assert_eq!(again, state);
}

/// `\n` and `\r` are skipped: one timer expiry moves the piece from row 1 to row 2 (pos 29),
/// and only that counts as an input.
#[test]
fn newlines_are_not_inputs() {
    let state = run_script(&opts(2, b"jkl pqn"), 42, b"\n\r.\r\n\n");
    let want = line(42, 2, 0, 0, 3, 29, 1, false, false, &[E; 20]);
    assert_eq!(to_json(&state), want);
}

/// Pause and Ctrl-L change nothing headless (but are inputs); `p` then `q` quits.
#[test]
fn pause_and_ctrl_l_are_inert_headless() {
    let state = run_script(&opts(2, b"jkl pqn"), 42, b"p\x0cpq");
    let want = line(42, 2, 0, 0, 3, 17, 4, false, true, &[E; 20]);
    assert_eq!(to_json(&state), want);
}

/// Six keys `asdfgh`: no down key, as in bsdgames. Neither `n` nor a typed NUL (the
/// no-key marker) nor the down arrow's final byte moves seed 42's shape 0 (pos 17 stays);
/// `h` quits. Four inputs.
#[test]
fn six_keys_leave_no_down_key() {
    let o = tetris::options::parse_from(["tetris", "-k", "asdfgh"], None);
    let Ok(tetris::options::Parsed::Run(o)) = o else {
        panic!("-k asdfgh parses")
    };
    let state = run_script(&o, 42, b"n\0Bh");
    assert_eq!(
        to_json(&state),
        line(42, 2, 0, 0, 3, 17, 4, false, true, &[E; 20])
    );
}

/// Seven keys `asdfghz`: `z` is down, `n` is nothing, `j` (the default left) is nothing, `f`
/// drops shape 0 from row 2 to 20 (18 points), `h` quits: 1 + 18 = 19 points, 5 inputs.
#[test]
fn seven_keys_set_the_down_key() {
    let o = tetris::options::parse_from(["tetris", "-k", "asdfghz"], None);
    let Ok(tetris::options::Parsed::Run(o)) = o else {
        panic!("-k asdfghz parses")
    };
    let state = run_script(&o, 42, b"nzjfh");
    assert_eq!(
        to_json(&state),
        line(42, 2, 19, 0, 3, 245, 5, false, true, &[E; 20])
    );
}

fn tetris() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tetris"))
}

#[test]
fn binary_reads_a_script_file_and_prints_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("s.txt");
    std::fs::write(&script, "kjj .\nlllll .\n").expect("write script");
    let out = tetris()
        .args(["--headless", "--seed", "42", "-l", "3", "--script"])
        .arg(&script)
        .output()
        .expect("run tetris");
    assert!(out.status.success(), "{out:?}");
    let want = line(
        42,
        3,
        39,
        5,
        3,
        17,
        12,
        false,
        false,
        &board_with(&["..#.......", ".##.....##", ".#......##"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}\n"));
    assert!(out.stderr.is_empty());
}

fn run_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = tetris()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tetris");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait tetris")
}

#[test]
fn binary_reads_stdin_without_script_or_with_dash() {
    let want = format!("{}\n", line(42, 2, 0, 0, 3, 17, 1, false, true, &[E; 20]));
    for args in [
        &["--headless", "--seed", "42"][..],
        &["--headless", "--seed", "42", "--script", "-"],
    ] {
        let out = run_stdin(args, b"q");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{args:?}");
    }
}

#[test]
fn binary_with_six_and_seven_keys() {
    // Six keys: no down key, so `n` is nothing.
    let six = run_stdin(&["--headless", "--seed", "42", "-k", "asdfgh"], b"nzh");
    assert_eq!(
        String::from_utf8_lossy(&six.stdout),
        format!("{}\n", line(42, 2, 0, 0, 3, 17, 3, false, true, &[E; 20]))
    );
    let seven = run_stdin(&["--headless", "--seed", "42", "-k", "asdfghz"], b"nzjfh");
    assert_eq!(
        String::from_utf8_lossy(&seven.stdout),
        format!("{}\n", line(42, 2, 19, 0, 3, 245, 5, false, true, &[E; 20]))
    );
}

/// Without `--seed` the seed comes from the OS and is reported, so the run can be repeated.
#[test]
fn binary_without_seed_reports_a_seed_that_reproduces_the_run() {
    let script = b"kjj .lllll . j.";
    let first = run_stdin(&["--headless"], script);
    assert!(first.status.success(), "{first:?}");
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    let seed = text
        .strip_prefix("{\"seed\":")
        .and_then(|rest| rest.split(',').next())
        .expect("a seed field first");
    let again = run_stdin(&["--headless", "--seed", seed], script);
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
}

#[test]
fn binary_reports_a_missing_script_file() {
    let out = tetris()
        .args([
            "--headless",
            "--seed",
            "1",
            "--script",
            "/nonexistent/script",
        ])
        .output()
        .expect("run tetris");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/script"), "{err}");
    assert!(out.stdout.is_empty());
}
