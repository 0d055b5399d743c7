//! The rules against TETRIS-RULES.md: shape table, collisions, scoring, lock/spawn/game over,
//! elide, the fall timer and the key semantics of `step`.

use tetris::rng;
use tetris::rules::{
    self, CTRL_L, Fall, Input, Mode, SHAPES, WALL, base_shape, fits, new_game, place, step,
};
use tetris::state::{B_COLS, B_SIZE, DEFAULT_KEYS, GameState, SPAWN_POS};

const B: i32 = B_COLS as i32;

/// Board index of (row, col).
fn at(row: i32, col: i32) -> i32 {
    row * B + col
}

fn idx(row: i32, col: i32) -> usize {
    usize::try_from(at(row, col)).expect("on the board")
}

/// A game on an empty board with `shape` as the falling piece (seed 1, level 2).
fn game_with(shape: u8) -> GameState {
    let mut g = new_game(1, 2, DEFAULT_KEYS, false);
    g.curshape = shape;
    g
}

/// Fills playfield row `row` (columns 1-10) except the columns in `holes`.
fn fill_row(board: &mut [u8; B_SIZE], row: i32, holes: &[i32], v: u8) {
    for col in 1..=10 {
        if !holes.contains(&col) {
            board[idx(row, col)] = v;
        }
    }
}

/// Playfield row as `#`/`.`, columns 1-10.
fn row_str(board: &[u8; B_SIZE], row: i32) -> String {
    (1..=10)
        .map(|c| if board[idx(row, c)] != 0 { '#' } else { '.' })
        .collect()
}

#[test]
fn shape_table_matches_the_rules_table() {
    // The table of TETRIS-RULES.md, transcribed as text so a typo in SHAPES shows up here.
    let table = [
        (7, "TL TC MR"),
        (8, "TC TR ML"),
        (9, "ML MR BC"),
        (3, "TL TC ML"),
        (12, "ML BL MR"),
        (15, "ML BR MR"),
        (18, "ML MR +2"),
        (0, "TC ML BL"),
        (1, "TC MR BR"),
        (10, "TC MR BC"),
        (11, "TC ML MR"),
        (2, "TC ML BC"),
        (13, "TC BC BR"),
        (14, "TR ML MR"),
        (4, "TL TC BC"),
        (16, "TR TC BC"),
        (17, "TL MR ML"),
        (5, "TC BC BL"),
        (6, "TC BC +24"),
    ];
    let off = |name: &str| -> i32 {
        match name {
            "TL" => -13,
            "TC" => -12,
            "TR" => -11,
            "ML" => -1,
            "MR" => 1,
            "BL" => 11,
            "BC" => 12,
            "BR" => 13,
            n => n.parse().expect("numeric offset"),
        }
    };
    for (i, (rot, offs)) in table.iter().enumerate() {
        let want: Vec<i32> = offs.split(' ').map(off).collect();
        assert_eq!(SHAPES[i].rot, *rot, "rot of shape {i}");
        assert_eq!(SHAPES[i].off.to_vec(), want, "offsets of shape {i}");
    }
}

#[test]
fn rotation_chains_cycle_back_and_give_base_shapes() {
    let chains: [&[u8]; 7] = [
        &[0, 7],
        &[1, 8],
        &[2, 9, 10, 11],
        &[3],
        &[4, 12, 13, 14],
        &[5, 15, 16, 17],
        &[6, 18],
    ];
    let mut seen = [false; 19];
    for (base, chain) in chains.iter().enumerate() {
        for (k, &s) in chain.iter().enumerate() {
            let next = chain[(k + 1) % chain.len()];
            assert_eq!(
                SHAPES[usize::from(s)].rot,
                next,
                "shape {s} turns into {next}"
            );
            assert_eq!(usize::from(base_shape(s)), base, "base of shape {s}");
            seen[usize::from(s)] = true;
        }
    }
    assert!(
        seen.iter().all(|&x| x),
        "every shape is in exactly one chain"
    );
}

#[test]
fn new_game_board_has_walls_floor_and_an_empty_playfield() {
    let g = new_game(5, 2, DEFAULT_KEYS, false);
    for row in 0..23 {
        for col in 0..12 {
            let wall = col == 0 || col == 11 || row >= 21;
            let want = if wall { WALL } else { 0 };
            assert_eq!(g.board[idx(row, col)], want, "cell ({row},{col})");
        }
    }
}

#[test]
fn new_game_draws_next_before_current_and_sets_the_timer() {
    for level in 1..=9 {
        let g = new_game(42, level, DEFAULT_KEYS, true);
        // Seed 42's first outputs (the documented vector) % 7: 3 then 0.
        assert_eq!(g.nextshape, 3);
        assert_eq!(g.curshape, 0);
        let mut s = rng::seed_state(42);
        rng::next_u64(&mut s);
        rng::next_u64(&mut s);
        assert_eq!(g.rng, s, "two draws consumed");
        assert_eq!(g.pos, SPAWN_POS);
        assert_eq!(g.pos, 17);
        assert_eq!(g.fallrate_us, 1_000_000 / u64::from(level));
        assert_eq!(g.timer_left_us, 0);
        assert_eq!((g.points, g.inputs, g.level), (0, 0, level));
        assert!(g.shows_preview() && g.is_valid_header() && !g.is_finished());
    }
}

#[test]
fn walls_block_sideways_moves() {
    // Shape 3 (O: TL TC ML) at column 2 touches column 1: one more step left hits the wall.
    let g = game_with(3);
    assert!(fits(&g.board, 3, at(5, 2)));
    assert!(!fits(&g.board, 3, at(5, 1)));
    // Shape 6 (I: ML MR +2) at column 8 reaches column 10; at 9 it would enter column 11.
    assert!(fits(&g.board, 6, at(5, 8)));
    assert!(!fits(&g.board, 6, at(5, 9)));
    let mut g = game_with(3);
    g.pos = at(5, 2);
    assert!(!rules::try_move(&mut g, -1));
    assert_eq!(g.pos, at(5, 2));
    assert!(rules::try_move(&mut g, 1));
    assert_eq!(g.pos, at(5, 3));
}

#[test]
fn the_floor_and_row_zero() {
    let g = game_with(3);
    // O's centre is its bottom-right cell: row 20 is the lowest it can be.
    assert!(fits(&g.board, 3, at(20, 5)));
    assert!(!fits(&g.board, 3, at(21, 5)));
    // Row 0 is part of the board (hidden buffer): the O at spawn reaches into it.
    assert!(fits(&g.board, 3, at(1, 5)));
    // Nothing may reach above row 0.
    assert!(!fits(&g.board, 3, at(0, 5)));
}

#[test]
fn blocks_collide_with_locked_cells() {
    let mut g = game_with(3);
    g.board[idx(10, 5)] = 1;
    assert!(!fits(&g.board, 3, at(10, 5)), "centre on a block");
    assert!(!fits(&g.board, 3, at(11, 6)), "TL on a block");
    assert!(!fits(&g.board, 3, at(10, 6)), "ML on a block");
    assert!(fits(&g.board, 3, at(9, 5)), "just above it");
    assert!(fits(&g.board, 3, at(10, 7)), "beside it");
}

#[test]
fn place_writes_one_plus_base_shape_and_clears() {
    let mut board = rules::empty_board();
    // Shape 13 is a rotation of 4: cells hold 5. Offsets TR ML MR around (5,5).
    place(&mut board, 13, at(5, 5), true);
    for (r, c) in [(5, 5), (4, 6), (5, 4), (5, 6)] {
        assert_eq!(board[idx(r, c)], 5, "cell ({r},{c})");
    }
    assert_eq!(board.iter().filter(|&&v| v == 5).count(), 4);
    place(&mut board, 13, at(5, 5), false);
    assert_eq!(board, rules::empty_board());
}

#[test]
fn rotate_turns_in_place_without_wall_kicks() {
    // Vertical I (18) against the left wall: turning to 6 needs ML in column 0, so nothing.
    let mut g = game_with(18);
    g.pos = at(5, 1);
    assert!(!rules::rotate(&mut g));
    assert_eq!((g.curshape, g.pos), (18, at(5, 1)));
    // One column right it turns, about the same centre.
    g.pos = at(5, 2);
    assert!(rules::rotate(&mut g));
    assert_eq!((g.curshape, g.pos), (6, at(5, 2)));
    // Blocked by a locked cell under the turned shape's +24 cell.
    let mut g = game_with(6);
    g.pos = at(5, 5);
    g.board[idx(7, 5)] = 1;
    assert!(!rules::rotate(&mut g));
    assert_eq!(g.curshape, 6);
}

#[test]
fn drop_scores_a_point_per_row_and_does_not_lock() {
    let mut g = game_with(3);
    // O from row 1 to row 20: 19 rows.
    assert_eq!(rules::drop(&mut g), 19);
    assert_eq!(g.points, 19);
    assert_eq!(g.pos, at(20, 5));
    assert_eq!(g.board, rules::empty_board(), "not locked");
    // Already at the bottom: nothing.
    assert_eq!(rules::drop(&mut g), 0);
    assert_eq!(g.points, 19);
    // It can still slide at the bottom.
    assert!(rules::try_move(&mut g, -1));
}

#[test]
fn down_scores_one_point_only_when_it_moves() {
    let mut g = game_with(3);
    assert!(rules::down(&mut g));
    assert_eq!((g.pos, g.points), (at(2, 5), 1));
    g.pos = at(20, 5);
    assert!(!rules::down(&mut g));
    assert_eq!((g.pos, g.points), (at(20, 5), 1));
}

#[test]
fn timer_falls_then_locks_spawns_and_scores() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    // Seed 42: current 0 (TL TC MR), next 3; the third output % 7 is 5.
    assert_eq!(rules::timer_expired(&mut g), Fall::Fell);
    assert_eq!((g.pos, g.points), (at(2, 5), 0));
    g.pos = at(20, 5);
    assert_eq!(rules::timer_expired(&mut g), Fall::Locked(0));
    assert_eq!(g.points, 1);
    assert_eq!(row_str(&g.board, 19), "...##.....");
    assert_eq!(row_str(&g.board, 20), "....##....");
    assert_eq!(g.board[idx(20, 5)], 1, "shape 0 cells hold 1");
    assert_eq!((g.curshape, g.nextshape, g.pos), (3, 5, 17));
    assert!(!g.is_game_over());
}

#[test]
fn game_over_when_the_new_piece_does_not_fit_and_nothing_is_placed() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    // The next piece is the O (shape 3), whose spawn cells are (0,4) (0,5) (1,4) (1,5):
    // column 5 filled from row 1 to 20 blocks (1,5), so it cannot spawn.
    for row in 2..=20 {
        g.board[idx(row, 5)] = 1;
    }
    g.board[idx(1, 5)] = 1;
    // The current piece (shape 0) sits somewhere it cannot fall from: row 20, columns 7-8.
    g.pos = at(20, 8);
    let before_rng = g.rng;
    assert_eq!(rules::timer_expired(&mut g), Fall::Locked(0));
    assert!(g.is_game_over());
    assert_eq!(g.points, 1);
    assert_eq!((g.curshape, g.pos), (3, 17), "the piece that did not fit");
    assert_ne!(g.rng, before_rng, "a new next shape was drawn");
    // Only the locked piece changed the board: the O was not placed at spawn.
    assert_eq!(row_str(&g.board, 1), "....#.....");
    assert!((1..=10).all(|c| g.board[idx(0, c)] == 0), "row 0 untouched");
    assert_eq!(row_str(&g.board, 19), "....#.##..");
    assert_eq!(row_str(&g.board, 20), "....#..##.");
}

#[test]
fn elide_one_row_shifts_everything_above_down() {
    let mut board = rules::empty_board();
    fill_row(&mut board, 20, &[], 1);
    board[idx(19, 3)] = 2;
    board[idx(5, 7)] = 3;
    assert_eq!(rules::elide(&mut board), 1);
    assert_eq!(row_str(&board, 20), "..#.......");
    assert_eq!(board[idx(20, 3)], 2, "cell values move with the cell");
    assert_eq!(row_str(&board, 6), "......#...");
    assert_eq!(row_str(&board, 5), "..........");
    assert_eq!(row_str(&board, 19), "..........");
    // Walls intact.
    let walls = rules::empty_board();
    for r in 0..23 {
        for c in [0, 11] {
            assert_eq!(board[idx(r, c)], walls[idx(r, c)]);
        }
    }
}

#[test]
fn elide_two_three_and_four_rows() {
    for n in 2..=4 {
        let mut board = rules::empty_board();
        for k in 0..n {
            fill_row(&mut board, 20 - k, &[], 1);
        }
        // A marker above the full rows ends up n rows lower.
        let top = 20 - n;
        board[idx(top, 1)] = 4;
        assert_eq!(rules::elide(&mut board), u8::try_from(n).expect("small"));
        assert_eq!(row_str(&board, 20), "#.........", "{n} rows");
        assert_eq!(board[idx(20, 1)], 4);
        assert!(
            (1..20).all(|r| row_str(&board, r) == ".........."),
            "{n} rows"
        );
    }
}

#[test]
fn elide_non_adjacent_rows() {
    let mut board = rules::empty_board();
    fill_row(&mut board, 20, &[], 1);
    fill_row(&mut board, 19, &[4], 1); // not full
    fill_row(&mut board, 18, &[], 1);
    fill_row(&mut board, 17, &[9], 1); // not full
    board[idx(16, 2)] = 1;
    assert_eq!(rules::elide(&mut board), 2);
    // Row 18 goes: rows 1-17 move down one. Then row 20 goes: rows 1-19 move down one.
    assert_eq!(row_str(&board, 20), "###.######");
    assert_eq!(row_str(&board, 19), "########.#");
    assert_eq!(row_str(&board, 18), ".#........");
    assert!((1..18).all(|r| row_str(&board, r) == ".........."));
}

#[test]
fn elide_clears_row_zero_after_shifting_it_into_row_one() {
    let mut board = rules::empty_board();
    fill_row(&mut board, 20, &[], 1);
    // Cells in the hidden row 0 (e.g. from a piece locked at spawn).
    board[idx(0, 4)] = 2;
    board[idx(0, 5)] = 2;
    board[idx(1, 5)] = 2;
    assert_eq!(rules::elide(&mut board), 1);
    // Row 0 moved into row 1, row 1 into row 2, and row 0 was cleared (current NetBSD).
    assert_eq!(row_str(&board, 1), "...##.....");
    assert_eq!(row_str(&board, 2), "....#.....");
    assert!((1..=10).all(|c| board[idx(0, c)] == 0), "row 0 cleared");
    assert_eq!(board[idx(0, 0)], WALL);
    assert_eq!(board[idx(0, 11)], WALL);
}

#[test]
fn elide_ignores_rows_that_are_not_full() {
    let mut board = rules::empty_board();
    fill_row(&mut board, 20, &[10], 1);
    let before = board;
    assert_eq!(rules::elide(&mut board), 0);
    assert_eq!(board, before);
}

#[test]
fn step_rearms_and_speeds_up_the_timer_only_when_it_ran_out() {
    let mut g = new_game(3, 2, DEFAULT_KEYS, false);
    assert_eq!(g.fallrate_us, 500_000);
    // First input: re-arm: 500000 - 500000/3000 (166) = 499834.
    step(&mut g, Input::Key(b'x'), Mode::Headless);
    assert_eq!((g.fallrate_us, g.timer_left_us), (499_834, 499_834));
    // Keys never reset it: a second key leaves both alone.
    g.timer_left_us = 1234;
    step(&mut g, Input::Key(b'j'), Mode::Headless);
    assert_eq!((g.fallrate_us, g.timer_left_us), (499_834, 1234));
    // A timer expiry empties it...
    step(&mut g, Input::Timer, Mode::Headless);
    assert_eq!(g.timer_left_us, 0);
    assert_eq!(g.fallrate_us, 499_834, "not re-armed while time was left");
    // ...so the next input re-arms with another speed-up: 499834 - 166 = 499668.
    step(&mut g, Input::Key(b'x'), Mode::Headless);
    assert_eq!((g.fallrate_us, g.timer_left_us), (499_668, 499_668));
    assert_eq!(g.inputs, 4);
}

#[test]
fn step_keys_follow_the_key_map() {
    let keys = *b"asdfghz";
    let mut g = new_game(42, 2, keys, false); // shape 0 at 17
    let o = step(&mut g, Input::Key(b'a'), Mode::Headless);
    assert!(o.consumed && o.changed);
    assert_eq!(g.pos, 16);
    step(&mut g, Input::Key(b'd'), Mode::Headless);
    assert_eq!(g.pos, 17);
    step(&mut g, Input::Key(b's'), Mode::Headless);
    assert_eq!(g.curshape, 7);
    step(&mut g, Input::Key(b'z'), Mode::Headless);
    assert_eq!((g.pos, g.points), (29, 1));
    // The default keys mean nothing now, but are consumed.
    let o = step(&mut g, Input::Key(b'j'), Mode::Headless);
    assert!(o.consumed && !o.changed);
    step(&mut g, Input::Key(b'n'), Mode::Headless);
    assert_eq!((g.pos, g.points, g.curshape), (29, 1, 7));
    step(&mut g, Input::Key(b'f'), Mode::Headless);
    // Shape 7 (TC ML BL): its lowest cell is BL, one row below the centre: centre row 19.
    assert_eq!((g.pos, g.points), (at(19, 5), 1 + 17));
    assert_eq!(g.inputs, 7);
    let o = step(&mut g, Input::Key(b'h'), Mode::Headless);
    assert!(o.consumed && g.has_quit());
    assert_eq!(g.board, rules::empty_board(), "quitting locks nothing");
}

#[test]
fn finished_games_consume_nothing() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    step(&mut g, Input::Key(b'q'), Mode::Headless);
    let snapshot = g;
    for input in [Input::Timer, Input::Key(b'j'), Input::Key(b' ')] {
        for mode in [Mode::Headless, Mode::Interactive] {
            let o = step(&mut g, input, mode);
            assert!(!o.consumed && !o.changed);
        }
    }
    assert_eq!(g, snapshot);
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    g.game_over = 1;
    let snapshot = g;
    assert!(!step(&mut g, Input::Timer, Mode::Headless).consumed);
    assert_eq!(g, snapshot);
}

#[test]
fn pause_and_ctrl_l_do_nothing_headless() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    let o = step(&mut g, Input::Key(b'p'), Mode::Headless);
    assert!(o.consumed && !o.changed && !g.is_paused());
    let o = step(&mut g, Input::Key(CTRL_L), Mode::Headless);
    assert!(o.consumed && !o.redraw);
    assert_eq!(g.inputs, 2);
}

#[test]
fn interactive_pause_resumes_on_any_key_which_then_counts() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    let o = step(&mut g, Input::Key(b'p'), Mode::Interactive);
    assert!(o.changed && g.is_paused());
    // Any key resumes and is handled: `j` moves left.
    step(&mut g, Input::Key(b'j'), Mode::Interactive);
    assert!(!g.is_paused());
    assert_eq!(g.pos, 16);
    // `p` then `q` quits.
    step(&mut g, Input::Key(b'p'), Mode::Interactive);
    step(&mut g, Input::Key(b'q'), Mode::Interactive);
    assert!(g.has_quit() && !g.is_paused());
    // `p` while paused pauses again (resume, then handle `p`).
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    step(&mut g, Input::Key(b'p'), Mode::Interactive);
    step(&mut g, Input::Key(b'p'), Mode::Interactive);
    assert!(g.is_paused());
}

#[test]
fn ctrl_l_asks_for_a_redraw_interactively() {
    let mut g = new_game(42, 2, DEFAULT_KEYS, false);
    let o = step(&mut g, Input::Key(CTRL_L), Mode::Interactive);
    assert!(o.consumed && o.redraw && !o.changed);
}

#[test]
fn step_reports_locks_and_cleared_rows() {
    let mut g = game_with(6); // horizontal I
    fill_row(&mut g.board, 20, &[4, 5, 6, 7], 1);
    g.pos = at(20, 5); // cells 4..7 of row 20
    let o = step(&mut g, Input::Timer, Mode::Headless);
    assert!(o.locked);
    assert_eq!(o.cleared_rows, 1);
    assert_eq!(row_str(&g.board, 20), "..........");
}
