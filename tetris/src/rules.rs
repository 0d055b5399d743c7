//! The rules of BSD Tetris as pure functions on [`GameState`]: no I/O, no clock.
//!
//! Everything here follows `/work/shared/TETRIS-RULES.md` (NetBSD `games/tetris`): the shape
//! table, `fits_in`, `place`, the command keys, the fall timer's re-arm and speed-up, lock,
//! `elide` with current NetBSD's row-0 clearing, spawn and game over.

use crate::rng;
use crate::state::{
    B_COLS, B_ROWS, B_SIZE, GameState, LAYOUT_VERSION, MAGIC, MAX_CLEARED, SPAWN_POS, key,
};

/// Board cell value of a wall (columns 0 and 11, rows 21 and 22).
pub const WALL: u8 = 8;
/// The byte Ctrl-L sends: asks for a full redraw.
pub const CTRL_L: u8 = 0x0c;
/// A key map entry that no key triggers: the down key of a six-key `-k` map. (NUL cannot
/// be given on a command line; a typed NUL must not move the piece.)
pub const NO_KEY: u8 = 0;
/// Number of spawnable shapes (0..7); the rest of the table are their rotations.
pub const NUM_BASE_SHAPES: u8 = 7;

/// One entry of BSD's shape table: the three cells around the centre, and what it turns into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Index of the shape this one becomes when rotated.
    pub rot: u8,
    /// Board offsets of the three non-centre cells, relative to the centre.
    pub off: [i32; 3],
}

const B: i32 = B_COLS as i32;
const TL: i32 = -B - 1;
const TC: i32 = -B;
const TR: i32 = -B + 1;
const ML: i32 = -1;
const MR: i32 = 1;
const BL: i32 = B - 1;
const BC: i32 = B;
const BR: i32 = B + 1;

const fn sh(rot: u8, off: [i32; 3]) -> Shape {
    Shape { rot, off }
}

/// BSD's `shapes[]`, in table order (TETRIS-RULES.md, "Shapes").
pub const SHAPES: [Shape; 19] = [
    sh(7, [TL, TC, MR]),
    sh(8, [TC, TR, ML]),
    sh(9, [ML, MR, BC]),
    sh(3, [TL, TC, ML]),
    sh(12, [ML, BL, MR]),
    sh(15, [ML, BR, MR]),
    sh(18, [ML, MR, 2]),
    sh(0, [TC, ML, BL]),
    sh(1, [TC, MR, BR]),
    sh(10, [TC, MR, BC]),
    sh(11, [TC, ML, MR]),
    sh(2, [TC, ML, BC]),
    sh(13, [TC, BC, BR]),
    sh(14, [TR, ML, MR]),
    sh(4, [TL, TC, BC]),
    sh(16, [TR, TC, BC]),
    sh(17, [TL, MR, ML]),
    sh(5, [TC, BC, BL]),
    sh(6, [TC, BC, 2 * B]),
];

/// Base shape (0..7) of every table entry: the spawned shape whose rotation chain holds it.
const BASE: [u8; 19] = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 2, 2, 4, 4, 4, 5, 5, 5, 6];

/// The spawned shape (0..7) that table entry `shape` is a rotation of; it gives the colour.
///
/// Out-of-range values (only possible from a corrupt state) map to 0 rather than panicking.
pub fn base_shape(shape: u8) -> u8 {
    BASE.get(usize::from(shape)).copied().unwrap_or(0)
}

/// The table entry for `shape`, or `None` when the index is out of range.
fn shape_of(shape: u8) -> Option<&'static Shape> {
    SHAPES.get(usize::from(shape))
}

/// Board indices of the four cells of `shape` centred at `pos`, `None` if any is off the board.
fn cells(shape: u8, pos: i32) -> Option<[usize; 4]> {
    let s = shape_of(shape)?;
    let idx = |p: i32| usize::try_from(p).ok().filter(|&i| i < B_SIZE);
    Some([
        idx(pos)?,
        idx(pos + s.off[0])?,
        idx(pos + s.off[1])?,
        idx(pos + s.off[2])?,
    ])
}

/// BSD's `fits_in`: the centre and the three offset cells are all empty.
///
/// A shape reaching outside the array (or an unknown shape index) does not fit.
pub fn fits(board: &[u8; B_SIZE], shape: u8, pos: i32) -> bool {
    cells(shape, pos).is_some_and(|c| c.iter().all(|&i| board[i] == 0))
}

/// BSD's `place`: sets the shape's four cells to `1 + base_shape` (`on`) or to 0 (`!on`).
///
/// Cells outside the array are skipped (the rules only place shapes that fit).
pub fn place(board: &mut [u8; B_SIZE], shape: u8, pos: i32, on: bool) {
    let Some(s) = shape_of(shape) else { return };
    let v = if on { 1 + base_shape(shape) } else { 0 };
    for p in [pos, pos + s.off[0], pos + s.off[1], pos + s.off[2]] {
        if let Some(cell) = usize::try_from(p).ok().and_then(|i| board.get_mut(i)) {
            *cell = v;
        }
    }
}

/// An empty board: walls in columns 0 and 11 of every row, rows 21 and 22 full.
pub fn empty_board() -> [u8; B_SIZE] {
    let mut board = [0u8; B_SIZE];
    for (i, cell) in board.iter_mut().enumerate() {
        let (row, col) = (i / B_COLS, i % B_COLS);
        if col == 0 || col == B_COLS - 1 || row >= B_ROWS - 2 {
            *cell = WALL;
        }
    }
    board
}

/// A fresh game: BSD's start-up (`nextshape = randshape()` first, then `curshape`), the fall
/// rate `1_000_000 / level` µs and the timer unarmed.
///
/// `level` is taken as given (the options layer enforces 1..=9); 0 is treated as 1 so the
/// division cannot fail.
pub fn new_game(seed: u64, level: u32, keys: [u8; 7], preview: bool) -> GameState {
    let mut rng = rng::seed_state(seed);
    let nextshape = rng::randshape(&mut rng);
    let curshape = rng::randshape(&mut rng);
    GameState {
        magic: MAGIC,
        layout_version: LAYOUT_VERSION,
        rng,
        seed,
        fallrate_us: 1_000_000 / u64::from(level.max(1)),
        timer_left_us: 0,
        timer_wall_us: 0,
        inputs: 0,
        tty_bytes: 0,
        points: 0,
        level,
        pos: SPAWN_POS,
        curshape,
        nextshape,
        paused: 0,
        preview: u8::from(preview),
        game_over: 0,
        quit: 0,
        keys,
        board: empty_board(),
        elide_rows: [0; MAX_CLEARED],
        elide_cells: [[0; B_COLS - 2]; MAX_CLEARED],
        _pad: [0; 7],
    }
}

/// Moves the current piece by `delta` if it fits there; true when it moved.
pub fn try_move(state: &mut GameState, delta: i32) -> bool {
    if fits(&state.board, state.curshape, state.pos + delta) {
        state.pos += delta;
        true
    } else {
        false
    }
}

/// Turns the current piece to its `rot` about the same centre; no wall kicks.
pub fn rotate(state: &mut GameState) -> bool {
    let Some(s) = shape_of(state.curshape) else {
        return false;
    };
    if fits(&state.board, s.rot, state.pos) {
        state.curshape = s.rot;
        true
    } else {
        false
    }
}

/// Moves the piece down while it fits, one point per row; does not lock. Returns the rows.
pub fn drop(state: &mut GameState) -> u32 {
    let mut rows = 0;
    while try_move(state, B) {
        state.points = state.points.wrapping_add(1);
        rows += 1;
    }
    rows
}

/// Moves the piece one row down if it fits, one point if it did.
pub fn down(state: &mut GameState) -> bool {
    let moved = try_move(state, B);
    if moved {
        state.points = state.points.wrapping_add(1);
    }
    moved
}

/// BSD's `elide`: clears every full row of 1..=20 top to bottom, shifting everything above
/// down and clearing row 0 (current NetBSD). Returns the number of rows cleared.
pub fn elide(board: &mut [u8; B_SIZE]) -> u8 {
    let mut cleared = 0;
    for row in 1..=20 {
        let start = row * B_COLS + 1;
        if board[start..start + B_COLS - 2].iter().all(|&c| c != 0) {
            // NetBSD: `while (--base != 0) board[base + B_COLS] = board[base];` with base
            // starting at the row's first cell: indices 1..=row*12 move down one row.
            board.copy_within(1..row * B_COLS + 1, 1 + B_COLS);
            board[1..B_COLS - 1].fill(0);
            cleared += 1;
        }
    }
    cleared
}

/// What one timer expiry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fall {
    /// The piece moved down one row.
    Fell,
    /// The piece locked; this many rows were elided; a new piece spawned (maybe game over).
    Locked(u8),
}

/// Timer expiry: fall one row if the piece fits there, else lock it (+1 point), elide, spawn
/// `nextshape` at the top and draw a new `nextshape`; the game is over if the new piece does
/// not fit (nothing is placed then, as in BSD).
pub fn timer_expired(state: &mut GameState) -> Fall {
    if try_move(state, B) {
        return Fall::Fell;
    }
    place(&mut state.board, state.curshape, state.pos, true);
    state.points = state.points.wrapping_add(1);
    let cleared = elide(&mut state.board);
    state.curshape = state.nextshape;
    state.nextshape = rng::randshape(&mut state.rng);
    state.pos = SPAWN_POS;
    if !fits(&state.board, state.curshape, state.pos) {
        state.game_over = 1;
    }
    Fall::Locked(cleared)
}

/// BSD's `faster()` + timer re-arm, done by `tgetchar` whenever no time is left.
pub fn rearm_timer(state: &mut GameState) {
    if state.timer_left_us == 0 {
        state.fallrate_us -= state.fallrate_us / 3000;
        state.timer_left_us = state.fallrate_us;
    }
}

/// Who drives the game: some keys mean something only with a screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Scripted: pause and Ctrl-L change nothing.
    Headless,
    /// A player at a terminal.
    Interactive,
}

/// One input to the game.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The fall timer expired.
    Timer,
    /// A byte as typed (arrow keys already mapped to the key map's bytes).
    Key(u8),
}

/// What [`step`] did with one input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// False when the game was already over or quit: the input was not consumed.
    pub consumed: bool,
    /// The game changed visibly (moved, rotated, dropped, fell, locked, paused, resumed, quit).
    pub changed: bool,
    /// Ctrl-L in interactive mode: a full redraw was asked for.
    pub redraw: bool,
    /// A piece locked on this input.
    pub locked: bool,
    /// Rows elided by that lock (0..=4).
    pub cleared_rows: u8,
}

/// One input with BSD semantics (see `tetris-api.md`): re-arm the timer as `tgetchar` does,
/// count the input, then apply the timer expiry or the key.
pub fn step(state: &mut GameState, input: Input, mode: Mode) -> Outcome {
    let mut out = Outcome::default();
    if state.is_finished() {
        return out;
    }
    out.consumed = true;
    rearm_timer(state);
    state.inputs = state.inputs.wrapping_add(1);
    match input {
        Input::Timer => {
            state.timer_left_us = 0;
            out.changed = true;
            if let Fall::Locked(rows) = timer_expired(state) {
                out.locked = true;
                out.cleared_rows = rows;
            }
        }
        Input::Key(c) => {
            if mode == Mode::Interactive && state.is_paused() {
                state.paused = 0;
                out.changed = true;
            }
            let k = state.keys;
            // BSD tests the keys in this order, so a key map entry wins over Ctrl-L.
            if c == k[key::QUIT] {
                state.quit = 1;
                out.changed = true;
            } else if c == k[key::PAUSE] {
                if mode == Mode::Interactive {
                    state.paused = 1;
                    out.changed = true;
                }
            } else if c == k[key::LEFT] {
                out.changed |= try_move(state, -1);
            } else if c == k[key::ROTATE] {
                out.changed |= rotate(state);
            } else if c == k[key::RIGHT] {
                out.changed |= try_move(state, 1);
            } else if c == k[key::DROP] {
                out.changed |= drop(state) > 0;
            } else if c == k[key::DOWN] && c != NO_KEY {
                out.changed |= down(state);
            } else if c == CTRL_L && mode == Mode::Interactive {
                out.redraw = true;
            }
        }
    }
    out
}
