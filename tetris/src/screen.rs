//! Drawing a [`GameState`] in BSD Tetris's screen layout, into a ratatui buffer.
//!
//! The geometry is NetBSD's `screen.c`: the board (rows 1 to 21, the floor included) is
//! centred, two characters per cell; `Score:`, the `-p` preview and the message line are
//! placed from the screen's edges, not from the board. Pure: no terminal I/O here.

use std::ffi::OsStr;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};

use crate::rules::{self, WALL};
use crate::state::{B_COLS, B_SIZE, GameState};

/// Narrowest screen BSD Tetris plays on.
pub const MIN_COLS: u16 = 40;
/// Lowest screen BSD Tetris plays on.
pub const MIN_ROWS: u16 = 23;
/// What a too small screen gets (on stderr at start, on the screen if resized mid-game).
pub const TOO_SMALL: &str = "the screen is too small: must be at least 40x23";
/// The preview's heading.
const NEXT_SHAPE: &str = "Next shape:";
/// The message shown instead of the help line while paused.
pub const PAUSED: &str = "paused - press RETURN to continue";

/// First and one-past-last board rows shown (BSD `D_FIRST`, `D_LAST`): the floor row shows.
const D_FIRST: usize = 1;
const D_LAST: usize = 22;
/// Where the preview's centre cell goes (BSD's `r`, `c`: screen row 5, column `2 * 2`).
const PREVIEW_ROW: i32 = 5;
const PREVIEW_COL: i32 = 2;
/// ANSI colour of each base shape (current NetBSD); 7 is drawn in the default colour.
const SHAPE_COLOURS: [u8; 7] = [7, 1, 2, 3, 4, 5, 6];

/// What the message line (screen row `rows - 2`) shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// The key help, built from the key map.
    Help,
    /// `paused - press RETURN to continue`.
    Paused,
}

/// How to draw, besides the game state itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Coloured blocks; false for `-b` or `NO_COLOR`.
    pub colour: bool,
    /// The message line.
    pub message: Message,
    /// Overlay the falling piece (false while a lock is being shown row by row).
    pub show_piece: bool,
}

impl View {
    /// The normal view of a game: the falling piece, the help or pause message.
    pub fn of(state: &GameState, colour: bool) -> Self {
        Self {
            colour,
            message: if state.is_paused() {
                Message::Paused
            } else {
                Message::Help
            },
            show_piece: true,
        }
    }
}

/// Colour unless `-b` was given or `NO_COLOR` is set to a non-empty value (no-color.org).
pub fn colour_wanted(black_and_white: bool, no_color: Option<&OsStr>) -> bool {
    !black_and_white && no_color.is_none_or(OsStr::is_empty)
}

/// True when a `cols` x `rows` screen is big enough to play on.
pub fn fits_screen(cols: u16, rows: u16) -> bool {
    cols >= MIN_COLS && rows >= MIN_ROWS
}

/// BSD's key help, from the actual keys, spaced as bsdgames 2.17 spaces it:
/// `j - left   k - rotate   ...   q - quit`, then `   n - down` when there is a down key.
pub fn help_line(keys: &[u8; 7]) -> String {
    help_items(keys).join("   ")
}

/// The help line's items, `j - left` and so on, the down key only if there is one.
fn help_items(keys: &[u8; 7]) -> Vec<String> {
    const NAMES: [&str; 7] = ["left", "rotate", "right", "drop", "pause", "quit", "down"];
    keys.iter()
        .zip(NAMES)
        .filter(|&(&k, _)| k != rules::NO_KEY)
        .map(|(&k, name)| format!("{} - {name}", key_name(k)))
        .collect()
}

/// The help as shown on a screen `width` columns wide: BSD's line if it fits; else with two
/// spaces between the items (the seven-key line is 84 columns, the six-key one 73); else
/// broken between items into as many lines as it takes, each as wide as fits.
pub fn help_lines(keys: &[u8; 7], width: u16) -> Vec<String> {
    let width = usize::from(width);
    let items = help_items(keys);
    for gap in ["   ", "  "] {
        let line = items.join(gap);
        if line.chars().count() <= width {
            return vec![line];
        }
    }
    let mut lines: Vec<String> = Vec::new();
    for item in items {
        match lines.last_mut() {
            Some(last) if last.chars().count() + 3 + item.chars().count() <= width => {
                last.push_str("   ");
                last.push_str(&item);
            }
            _ => lines.push(item),
        }
    }
    lines
}

/// How a key is written in the help line: space as `<space>`, other bytes as themselves
/// (control bytes in caret notation so they cannot upset the terminal).
fn key_name(k: u8) -> String {
    match k {
        b' ' => "<space>".to_owned(),
        0..=0x1f => format!("^{}", char::from(k + 0x40)),
        0x7f => "^?".to_owned(),
        0x80.. => format!("\\{k:03o}"),
        _ => char::from(k).to_string(),
    }
}

/// Screen column of board column `col` (BSD `CTOD`) on a screen `cols` wide: the board
/// centred.
pub fn board_col(col: usize, cols: u16) -> i32 {
    // col < B_COLS (12), so the cast is exact.
    2 * col as i32 + ((i32::from(cols) - 2 * B_COLS as i32) >> 1) - 1
}

/// Columns the top-left texts of `state` take, a blank column after them included: the
/// score, and with `-p` `Next shape:` and the preview piece (screen columns 0 to 9).
pub fn left_texts_width(state: &GameState) -> i32 {
    let score = score_text(state).chars().count();
    let preview = if state.shows_preview() {
        NEXT_SHAPE.len()
    } else {
        0
    };
    i32::try_from(score.max(preview)).unwrap_or(i32::MAX) + 1
}

/// Screen column of the board's left wall for `state` on a screen `cols` wide: BSD's centred
/// column, moved right as far as it takes (and the screen allows) for the board to clear the
/// score and the preview. Only screens under about 56 columns move it; at 40, a score of up
/// to 8 digits stays clear.
pub fn board_left(state: &GameState, cols: u16) -> i32 {
    let centred = board_col(0, cols);
    let rightmost = i32::from(cols) - 2 * B_COLS as i32;
    centred.max(left_texts_width(state).min(rightmost))
}

fn score_text(state: &GameState) -> String {
    format!("Score: {}", state.points)
}

/// Screen row of board row `row` (BSD `RTOD(row + Offset)`) on a screen `rows` high, with
/// current NetBSD's vertical centring `Offset = (rows - 23) / 2`.
pub fn board_row(row: usize, rows: u16) -> i32 {
    let offset = (i32::from(rows) - D_LAST as i32 + D_FIRST as i32 - 2) / 2;
    // row < B_ROWS (23), so the cast is exact.
    row as i32 + offset - 1
}

/// Draws the game into a ratatui frame (the whole frame).
pub fn draw(frame: &mut Frame<'_>, state: &GameState, view: &View) {
    let area = frame.area();
    render(state, view, area, frame.buffer_mut());
}

/// Draws the game into `buf` over `area` (which must lie in the buffer), or the too-small
/// message if `area` is below 40x23.
pub fn render(state: &GameState, view: &View, area: Rect, buf: &mut Buffer) {
    let mut painter = Painter { area, buf };
    painter.clear();
    if !fits_screen(area.width, area.height) {
        painter.wrapped(TOO_SMALL);
        return;
    }

    painter.text(0, 0, &score_text(state), Style::new());

    if state.shows_preview() {
        painter.text(PREVIEW_ROW - 3, PREVIEW_COL - 2, NEXT_SHAPE, Style::new());
        let centre = PREVIEW_COL + PREVIEW_ROW * B_COLS as i32;
        let cell = 1 + rules::base_shape(state.nextshape);
        let offsets = rules::SHAPES
            .get(usize::from(state.nextshape))
            .map_or([0; 3], |s| s.off);
        for t in std::iter::once(centre).chain(offsets.iter().map(|o| centre + o)) {
            let (r, c) = (t.div_euclid(B_COLS as i32), t.rem_euclid(B_COLS as i32));
            painter.cell(r, 2 * c, cell, view.colour);
        }
    }

    let mut board: [u8; B_SIZE] = state.board;
    if view.show_piece && !state.is_finished() {
        rules::place(&mut board, state.curshape, state.pos, true);
    }
    let left = board_left(state, area.width);
    for row in D_FIRST..D_LAST {
        for col in 0..B_COLS {
            painter.cell(
                board_row(row, area.height),
                // col < B_COLS (12), so the cast is exact.
                left + 2 * col as i32,
                board[row * B_COLS + col],
                view.colour,
            );
        }
    }

    let lines = match view.message {
        Message::Help => help_lines(&state.keys, area.width),
        Message::Paused => vec![PAUSED.to_owned()],
    };
    // BSD's message row, and the bottom row for the rest of a help broken in two; a third
    // line (only 7 keys under 48 columns) has no row left.
    for (row, line) in (i32::from(area.height) - 2..).zip(lines.iter().take(2)) {
        let len = i32::try_from(line.chars().count()).unwrap_or(i32::MAX);
        let col = (((i32::from(area.width) - len) >> 1) - 1).max(0);
        painter.text(row, col, line, Style::new());
    }
}

/// Writes into the buffer relative to `area`, clipping whatever falls outside it.
struct Painter<'a> {
    area: Rect,
    buf: &'a mut Buffer,
}

impl Painter<'_> {
    fn clear(&mut self) {
        for y in self.area.top()..self.area.bottom() {
            for x in self.area.left()..self.area.right() {
                if let Some(cell) = self.buf.cell_mut((x, y)) {
                    cell.reset();
                }
            }
        }
    }

    /// `text` at screen (`row`, `col`), one buffer cell per character, clipped to the area.
    fn text(&mut self, row: i32, col: i32, text: &str, style: Style) {
        let Ok(y) = u16::try_from(row) else { return };
        if y >= self.area.height {
            return;
        }
        for (i, ch) in text.chars().enumerate() {
            let Some(x) = i32::try_from(i)
                .ok()
                .and_then(|i| u16::try_from(col + i).ok())
                .filter(|&x| x < self.area.width)
            else {
                continue;
            };
            if let Some(cell) = self.buf.cell_mut((self.area.x + x, self.area.y + y)) {
                cell.set_char(ch).set_style(style);
            }
        }
    }

    /// One board cell (two characters) at screen (`row`, `col`).
    fn cell(&mut self, row: i32, col: i32, value: u8, colour: bool) {
        match value {
            0 => self.text(row, col, "  ", Style::new()),
            WALL => self.text(
                row,
                col,
                "  ",
                Style::new().add_modifier(Modifier::REVERSED),
            ),
            v => {
                let style = if colour {
                    let ansi = SHAPE_COLOURS[usize::from((v - 1) % 7)];
                    // BSD resets to the default colour for 7 rather than asking for white.
                    let fg = if ansi == 7 {
                        Color::Reset
                    } else {
                        Color::Indexed(ansi)
                    };
                    Style::new().fg(fg)
                } else {
                    Style::new()
                };
                self.text(row, col, "[]", style);
            }
        }
    }

    /// `text` hard-wrapped to the area's width from the top-left corner.
    fn wrapped(&mut self, text: &str) {
        let width = usize::from(self.area.width.max(1));
        let chars: Vec<char> = text.chars().collect();
        for (row, chunk) in chars.chunks(width).enumerate() {
            let line: String = chunk.iter().collect();
            self.text(
                i32::try_from(row).unwrap_or(i32::MAX),
                0,
                &line,
                Style::new(),
            );
        }
    }
}
