//! Properties of headless runs over random scripts: the rules' invariants hold after every
//! input, a game resumed from a byte copy of its state ends exactly as an uninterrupted one,
//! and the JSON line always has the contract's shape.

use proptest::prelude::{Just, Strategy, prop_assert, prop_assert_eq, prop_oneof, proptest};
use tetris::headless::{feed, feed_byte, start, to_json};
use tetris::options::Options;
use tetris::rules::{WALL, fits};
use tetris::state::{B_COLS, B_ROWS, DEFAULT_KEYS, GameState};
use zerocopy::{FromBytes, IntoBytes};

/// Script bytes weighted like play: mostly moves and timer expiries, quits rare.
fn script() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => Just(b'.'),
        3 => Just(b'j'),
        3 => Just(b'l'),
        3 => Just(b'k'),
        2 => Just(b' '),
        2 => Just(b'n'),
        1 => Just(b'p'),
        1 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(0x0c),
        1 => Just(b'x'),
        1 => proptest::num::u8::ANY,
    ];
    proptest::collection::vec(byte, 0..600)
}

fn options(level: u32) -> Options {
    Options {
        level,
        keys: DEFAULT_KEYS,
        headless: true,
        ..Options::default()
    }
}

fn check_invariants(g: &GameState) -> Result<(), proptest::test_runner::TestCaseError> {
    for (i, &cell) in g.board.iter().enumerate() {
        let (row, col) = (i / B_COLS, i % B_COLS);
        if col == 0 || col == B_COLS - 1 || row >= B_ROWS - 2 {
            prop_assert_eq!(cell, WALL, "wall at ({}, {})", row, col);
        } else {
            prop_assert!(
                cell <= 7,
                "locked cell value {} at ({}, {})",
                cell,
                row,
                col
            );
        }
    }
    prop_assert!(g.curshape < 19 && g.nextshape < 7);
    prop_assert!(g.is_valid_header());
    if !g.is_game_over() {
        prop_assert!(fits(&g.board, g.curshape, g.pos), "falling piece overlaps");
    }
    prop_assert_eq!(g.paused, 0, "headless never pauses");
    Ok(())
}

proptest! {
    #[test]
    fn invariants_hold_after_every_input(seed in proptest::num::u64::ANY, level in 1u32..=9, s in script()) {
        let mut g = start(&options(level), seed);
        let mut counted = 0u64;
        for &b in &s {
            let finished = g.is_finished();
            let before = g;
            let outcome = feed_byte(&mut g, b);
            if b == b'\n' || b == b'\r' {
                prop_assert!(outcome.is_none());
                prop_assert_eq!(g, before);
            } else if finished {
                prop_assert_eq!(g, before, "nothing changes once finished");
            } else {
                counted += 1;
            }
            check_invariants(&g)?;
        }
        prop_assert_eq!(g.inputs, counted);
    }

    #[test]
    fn resuming_from_a_byte_copy_of_the_state_ends_the_same(
        seed in proptest::num::u64::ANY,
        s in script(),
        cut in 0usize..600,
    ) {
        let cut = cut.min(s.len());
        let mut whole = start(&options(2), seed);
        feed(&mut whole, &s);

        let mut first = start(&options(2), seed);
        feed(&mut first, &s[..cut]);
        let bytes = first.as_bytes().to_vec();
        let mut resumed = GameState::read_from_bytes(&bytes).expect("a whole state");
        feed(&mut resumed, &s[cut..]);
        prop_assert_eq!(to_json(&resumed), to_json(&whole));
        prop_assert_eq!(resumed, whole);
    }

    #[test]
    fn json_line_has_the_contract_shape(seed in proptest::num::u64::ANY, s in script()) {
        let mut g = start(&options(4), seed);
        feed(&mut g, &s);
        let line = to_json(&g);
        prop_assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        let obj = v.as_object().expect("an object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sorted_contract = ["seed", "level", "points", "score", "curshape", "nextshape",
            "pos", "inputs", "game_over", "quit", "board"];
        sorted_contract.sort_unstable();
        prop_assert_eq!(keys, sorted_contract.to_vec(), "exactly the contract's keys");
        // Key order in the text itself.
        let mut at = 0;
        for k in ["seed", "level", "points", "score", "curshape", "nextshape", "pos", "inputs",
            "game_over", "quit", "board"] {
            let found = line[at..].find(&format!("\"{k}\":")).expect("key present");
            at += found + 1;
        }
        prop_assert_eq!(obj["score"].as_u64(), Some(u64::from(g.points) * 4));
        let board = obj["board"].as_array().expect("board array");
        prop_assert_eq!(board.len(), 20);
        for row in board {
            let row = row.as_str().expect("row string");
            prop_assert_eq!(row.len(), 10);
            prop_assert!(row.bytes().all(|c| c == b'#' || c == b'.'));
        }
    }
}
