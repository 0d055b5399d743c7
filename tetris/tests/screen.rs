//! Snapshots of the BSD layout drawn into a ratatui `TestBackend`.
//!
//! The expected screens are written out by hand from the layout rules (TETRIS-RULES.md,
//! "Screen", and NetBSD's screen.c), not produced by the code under test. On 80x24:
//! - vertical offset (24 - 23) / 2 = 0: board row r is screen row r - 1, so rows 1-21
//!   (the floor included) are screen rows 0-20;
//! - board column c is screen column 2c + ((80 - 24) >> 1) - 1 = 2c + 27: the walls (c = 0
//!   and 11) take columns 27-28 and 49-50, the floor columns 27-50, all in reverse video;
//! - `Score: N` at (0, 0); with -p, `Next shape:` at (2, 0) and the next piece's centre at
//!   (5, 4), each offset cell at (row, 2 * col) of `2 + 5 * 12 + offset`;
//! - the message on row 24 - 2 = 22 at column ((80 - len) >> 1) - 1: 0 for the 78-character
//!   help line, 22 for the 33-character pause message.
//!
//! The state used: 1234 points; the falling piece is shape 1 (TC TR ML, base 1: red) at
//! row 5, column 5, so its cells are (4,5) (4,6) (5,4) (5,5): screen row 3 columns 37-40,
//! row 4 columns 35-38. The next piece is shape 2 (ML MR BC, base 2: green): preview row 5
//! columns 2-7 and row 6 columns 4-5. Two locked cells on board row 20, columns 1 (shape 3:
//! yellow) and 2 (shape 6: cyan): screen row 19, columns 29-32.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use tetris::rules;
use tetris::screen::{self, Message, View};
use tetris::state::{B_COLS, DEFAULT_KEYS, GameState};

fn state(preview: bool) -> GameState {
    let mut s = rules::new_game(1, 2, DEFAULT_KEYS, preview);
    s.points = 1234;
    s.curshape = 1;
    s.pos = (5 * B_COLS + 5) as i32;
    s.nextshape = 2;
    s.board[20 * B_COLS + 1] = 1 + 3;
    s.board[20 * B_COLS + 2] = 1 + 6;
    s
}

fn render(state: &GameState, view: View, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| screen::draw(frame, state, &view))
        .unwrap();
    terminal
}

fn view(message: Message) -> View {
    View {
        colour: true,
        message,
        show_piece: true,
    }
}

/// The expected styles on 80x24: walls reversed, blocks coloured (or not).
fn style_80x24(expected: &mut Buffer, colour: bool, preview: bool) {
    let rev = Style::new().add_modifier(Modifier::REVERSED);
    for row in 0..20 {
        expected.set_style(Rect::new(27, row, 2, 1), rev);
        expected.set_style(Rect::new(49, row, 2, 1), rev);
    }
    expected.set_style(Rect::new(27, 20, 24, 1), rev);
    if colour {
        let fg = |n| Style::new().fg(Color::Indexed(n));
        expected.set_style(Rect::new(37, 3, 4, 1), fg(1));
        expected.set_style(Rect::new(35, 4, 4, 1), fg(1));
        expected.set_style(Rect::new(29, 19, 2, 1), fg(3));
        expected.set_style(Rect::new(31, 19, 2, 1), fg(6));
        if preview {
            expected.set_style(Rect::new(2, 5, 6, 1), fg(2));
            expected.set_style(Rect::new(4, 6, 2, 1), fg(2));
        }
    }
}

const WITH_PREVIEW: [&str; 24] = [
    "Score: 1234                                                                     ",
    "                                                                                ",
    "Next shape:                                                                     ",
    "                                     [][]                                       ",
    "                                   [][]                                         ",
    "  [][][]                                                                        ",
    "    []                                                                          ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                             [][]                                               ",
    "                                                                                ",
    "                                                                                ",
    "j - left  k - rotate  l - right  <space> - drop  p - pause  q - quit  n - down  ",
    "                                                                                ",
];

const WITHOUT_PREVIEW: [&str; 24] = [
    "Score: 1234                                                                     ",
    "                                                                                ",
    "                                                                                ",
    "                                     [][]                                       ",
    "                                   [][]                                         ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                             [][]                                               ",
    "                                                                                ",
    "                                                                                ",
    "j - left  k - rotate  l - right  <space> - drop  p - pause  q - quit  n - down  ",
    "                                                                                ",
];

const PAUSED: [&str; 24] = [
    "Score: 1234                                                                     ",
    "                                                                                ",
    "                                                                                ",
    "                                     [][]                                       ",
    "                                   [][]                                         ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                                                                                ",
    "                             [][]                                               ",
    "                                                                                ",
    "                                                                                ",
    "                      paused - press RETURN to continue                         ",
    "                                                                                ",
];

#[test]
fn layout_80x24_with_preview_matches_bsd() {
    let terminal = render(&state(true), view(Message::Help), 80, 24);
    let mut expected = Buffer::with_lines(WITH_PREVIEW);
    style_80x24(&mut expected, true, true);
    terminal.backend().assert_buffer(&expected);
}

#[test]
fn layout_80x24_without_preview_matches_bsd() {
    let terminal = render(&state(false), view(Message::Help), 80, 24);
    let mut expected = Buffer::with_lines(WITHOUT_PREVIEW);
    style_80x24(&mut expected, true, false);
    terminal.backend().assert_buffer(&expected);
}

#[test]
fn paused_replaces_the_help_line_with_the_centred_message() {
    let terminal = render(&state(false), view(Message::Paused), 80, 24);
    let mut expected = Buffer::with_lines(PAUSED);
    style_80x24(&mut expected, true, false);
    terminal.backend().assert_buffer(&expected);
}

#[test]
fn black_and_white_draws_the_same_blocks_without_colour() {
    let mut v = view(Message::Help);
    v.colour = false;
    let terminal = render(&state(true), v, 80, 24);
    let mut expected = Buffer::with_lines(WITH_PREVIEW);
    style_80x24(&mut expected, false, true);
    terminal.backend().assert_buffer(&expected);
}

#[test]
fn too_small_screen_shows_only_the_message_wrapped() {
    // 30 columns: the 47-character message wraps after "must ".
    let terminal = render(&state(true), view(Message::Help), 30, 10);
    terminal.backend().assert_buffer_lines([
        "the screen is too small: must ",
        "be at least 40x23             ",
        "                              ",
        "                              ",
        "                              ",
        "                              ",
        "                              ",
        "                              ",
        "                              ",
        "                              ",
    ]);
}

#[test]
fn a_larger_screen_centres_the_board_and_the_message_line() {
    // 100x30: offset (30 - 23) / 2 = 3, so board row 1 is screen row 3 and the floor (row 21)
    // screen row 23; column c at 2c + ((100 - 24) >> 1) - 1 = 2c + 37; help on row 28 at
    // column ((100 - 78) >> 1) - 1 = 10. Score stays at (0, 0), not offset.
    let terminal = render(&state(false), view(Message::Help), 100, 30);
    let buf = terminal.backend().buffer();
    let reversed = |x: u16, y: u16| buf[(x, y)].modifier.contains(Modifier::REVERSED);
    assert!(reversed(37, 3) && reversed(38, 3) && reversed(59, 3) && reversed(60, 3));
    assert!(!reversed(37, 2), "nothing above the board's first row");
    assert!((37..61).all(|x| reversed(x, 23)), "the floor");
    assert!(!reversed(37, 24));
    let row = |y: u16| -> String { (0..100).map(|x| buf[(x, y)].symbol()).collect() };
    assert!(row(0).starts_with("Score: 1234 "));
    assert!(
        row(28).starts_with("       j - left   k - rotate"),
        "{}",
        row(28)
    );
    // The falling piece's top cells (board row 4, columns 5-6) on screen row 4 + 3 - 1.
    assert_eq!(&row(6)[47..51], "[][]");
}

#[test]
fn help_line_is_built_from_the_actual_keys() {
    assert_eq!(
        screen::help_line(b"as dfgh"),
        "a - left   s - rotate   <space> - right   d - drop   f - pause   g - quit   h - down"
    );
    assert_eq!(
        screen::help_line(&DEFAULT_KEYS),
        "j - left   k - rotate   l - right   <space> - drop   p - pause   q - quit   n - down"
    );
}

#[test]
fn help_line_of_six_keys_is_bsdgames_line_without_a_down_key() {
    let Ok(tetris::options::Parsed::Run(o)) =
        tetris::options::parse_from(["tetris", "-k", "jkl pq"], None)
    else {
        panic!("-k 'jkl pq' parses")
    };
    // bsdgames 2.17's key_msg, spaced as it spaces it.
    assert_eq!(
        screen::help_line(&o.keys),
        "j - left   k - rotate   l - right   <space> - drop   p - pause   q - quit"
    );
}

#[test]
fn no_color_or_dash_b_turn_colour_off() {
    use std::ffi::OsStr;
    assert!(screen::colour_wanted(false, None));
    assert!(!screen::colour_wanted(true, None));
    assert!(!screen::colour_wanted(false, Some(OsStr::new("1"))));
    // no-color.org: an empty NO_COLOR does not count.
    assert!(screen::colour_wanted(false, Some(OsStr::new(""))));
}

/// The columns of `row` drawn in reverse video (walls and floor).
fn reversed_cols(buf: &Buffer, row: u16) -> Vec<u16> {
    (0..buf.area.width)
        .filter(|&x| buf[(x, row)].modifier.contains(Modifier::REVERSED))
        .collect()
}

fn row_text(buf: &Buffer, row: u16) -> String {
    (0..buf.area.width)
        .map(|x| buf[(x, row)].symbol())
        .collect()
}

#[test]
fn at_the_minimum_40x23_the_score_and_the_preview_stay_clear_of_the_board() {
    for cols in [40, 41, 44, 50, 56] {
        for points in [0, 7, 12_345, 12_345_678] {
            let mut s = state(true);
            s.points = points;
            let t = render(&s, view(Message::Help), cols, 23);
            let buf = t.backend().buffer();
            let score = format!("Score: {points}");
            assert!(
                row_text(buf, 0).starts_with(&format!("{score} ")),
                "{cols} cols, {points}: {:?}",
                row_text(buf, 0)
            );
            assert!(row_text(buf, 2).starts_with("Next shape: "), "{cols} cols");
            // The left wall: two reversed columns on every board row, right of the texts.
            let wall = reversed_cols(buf, 0);
            assert_eq!(wall.len(), 4, "{cols} cols, {points}: two walls on row 0");
            assert!(
                usize::from(wall[0]) > score.len() && wall[0] > 11,
                "{cols} cols, {points}: the wall at column {} covers the texts",
                wall[0]
            );
            assert!(wall[3] < cols, "the right wall is on the screen");
            // The preview's cells (columns 2-9 of rows 4-7) are not wall.
            assert!((4..8).all(|r| reversed_cols(buf, r)[0] > 9));
        }
    }
}

#[test]
fn from_56_columns_the_board_is_centred_as_bsd_centres_it() {
    for cols in [56, 80, 100] {
        let t = render(&state(true), view(Message::Help), cols, 24);
        let wall = reversed_cols(t.backend().buffer(), 0);
        let centred = u16::try_from(screen::board_col(0, cols)).unwrap();
        assert_eq!(wall[0], centred, "{cols} cols");
    }
}

#[test]
fn a_help_line_wider_than_the_screen_is_spaced_closer_then_broken_between_items() {
    // BSD's three spaces where they fit (the six-key line is 73 columns).
    assert_eq!(
        screen::help_lines(b"jkl pq\0", 73),
        ["j - left   k - rotate   l - right   <space> - drop   p - pause   q - quit"]
    );
    // The seven-key line is 84 columns: two spaces on 80.
    assert_eq!(screen::help_line(&DEFAULT_KEYS).len(), 84);
    assert_eq!(
        screen::help_lines(&DEFAULT_KEYS, 80),
        ["j - left  k - rotate  l - right  <space> - drop  p - pause  q - quit  n - down"]
    );
    // On 40 columns the six-key line takes the message row and the one below it.
    assert_eq!(
        screen::help_lines(b"jkl pq\0", 40),
        [
            "j - left   k - rotate   l - right",
            "<space> - drop   p - pause   q - quit"
        ]
    );
    assert_eq!(
        screen::help_lines(b"jkl pq\0", 72).len(),
        1,
        "two spaces fit in 72"
    );
    let t = render(&state(false), view(Message::Help), 40, 23);
    let buf = t.backend().buffer();
    let mut s = state(false);
    s.keys = *b"jkl pq\0";
    let t6 = render(&s, view(Message::Help), 40, 23);
    let buf6 = t6.backend().buffer();
    assert_eq!(
        row_text(buf6, 21).trim(),
        "j - left   k - rotate   l - right"
    );
    assert_eq!(
        row_text(buf6, 22).trim(),
        "<space> - drop   p - pause   q - quit"
    );
    assert!(row_text(buf, 21).contains("j - left"));
}
