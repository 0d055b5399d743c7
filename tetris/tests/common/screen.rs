//! Reading the game's 80x24 screen in pseudo-terminal tests.

use hotspare_tests::vt100;
use tetris::rules::{self, WALL};
use tetris::state::{B_COLS, GameState};

/// Screen cells (row, column) of the falling piece of `state` on 80x24: board row `r` is
/// screen row `r - 1`, board column `c` screen column `2c + 27`.
pub fn piece_cells(state: &GameState) -> Vec<(u16, u16)> {
    let mut board = rules::empty_board();
    rules::place(&mut board, state.curshape, state.pos, true);
    let mut cells = Vec::new();
    for row in 1..=20 {
        for col in 1..=10 {
            let v = board[row * B_COLS + col];
            if v != 0 && v != WALL {
                cells.push(((row - 1) as u16, (2 * col + 27) as u16));
            }
        }
    }
    cells
}

/// Whether every cell shows a block (`[]`).
pub fn blocks_at(screen: &vt100::Screen, cells: &[(u16, u16)]) -> bool {
    cells.iter().all(|&(r, c)| {
        screen.cell(r, c).is_some_and(|x| x.contents() == "[")
            && screen.cell(r, c + 1).is_some_and(|x| x.contents() == "]")
    })
}

/// The score on the first line (`Score: N`).
pub fn score_on_screen(screen: &vt100::Screen) -> Option<u32> {
    let first = screen.contents().lines().next()?.to_owned();
    first
        .strip_prefix("Score: ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}
