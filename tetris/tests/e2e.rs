//! The real `tetris` binary on a pseudo-terminal, its screen parsed with vt100.
//!
//! Nothing here waits on wall-clock time to pass: every step polls the screen (or the exit)
//! with a generous deadline. Games run at level 1 (one row a second) so a human-speed test
//! is never raced by the fall timer in a way that changes what is asserted.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::screen::{blocks_at, piece_cells, score_on_screen};
use hotspare_tests::{Session, keys, vt100};
use nix::sys::signal::Signal;
use nix::sys::termios::LocalFlags;
use tempfile::TempDir;
use tetris::rules::{self, Input, Mode};
use tetris::scores::SEE_SCORES_PROMPT;
use tetris::state::{B_COLS, DEFAULT_KEYS};

const DEADLINE: Duration = Duration::from_secs(30);
const SEED: u64 = 7;
const HELP: &str = "j - left  k - rotate  l - right  <space> - drop  p - pause  q - quit  n - down";

fn tetris(scores: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tetris"));
    cmd.args(args)
        .arg("--scores-file")
        .arg(scores)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("TETRIS_SCORES");
    cmd
}

fn start(dir: &TempDir, args: &[&str], rows: u16, cols: u16) -> Session {
    let scores = dir.path().join("scores");
    Session::spawn(tetris(&scores, args), rows, cols).expect("tetris starts on a pty")
}

/// After a game: BSD's "Hit RETURN to see high scores" wait is answered, then the exit awaited.
fn answer_scores_prompt_and_exit(s: &mut Session) -> std::process::ExitStatus {
    s.wait_for_text(SEE_SCORES_PROMPT, DEADLINE)
        .expect("the see-high-scores prompt");
    s.send(b"\n").expect("answering the prompt");
    s.wait_exit(DEADLINE).expect("exit after the table")
}

/// The board frame on 80x24: walls in reverse video at columns 27-28 and 49-50 of rows
/// 0-19, the floor on row 20 columns 27-50, and the help line on row 22.
fn board_is_drawn(screen: &vt100::Screen) -> bool {
    let rev = |r: u16, c: u16| screen.cell(r, c).is_some_and(vt100::Cell::inverse);
    screen.alternate_screen()
        && (0..20).all(|r| rev(r, 27) && rev(r, 28) && rev(r, 49) && rev(r, 50))
        && (27..51).all(|c| rev(20, c))
        && !rev(10, 30)
        && screen.contents().lines().nth(22).map(str::trim_end) == Some(HELP)
}

/// Where the first piece of `SEED` ends up after `keys` then a drop on an empty level-1
/// board, by the rules (falls before the drop cannot change that: same column, same floor).
fn dropped_cells(keys: &[u8]) -> Vec<(u16, u16)> {
    let mut state = rules::new_game(SEED, 1, DEFAULT_KEYS, false);
    for &k in keys.iter().chain(b" ") {
        rules::step(&mut state, Input::Key(k), Mode::Interactive);
    }
    piece_cells(&state)
}

fn assert_terminal_restored(s: &Session) {
    let now = s.termios().expect("tcgetattr on the pty");
    assert_eq!(&now, s.initial_termios(), "termios not restored");
    assert!(
        !s.screen().alternate_screen(),
        "still on the alternate screen"
    );
    assert!(!s.screen().hide_cursor(), "cursor left hidden");
}

#[test]
fn play_move_drop_and_quit_prints_the_score_and_restores_the_terminal() {
    let dir = TempDir::new().unwrap();
    let seed = SEED.to_string();
    let mut s = start(&dir, &["--seed", &seed, "-l", "1"], 24, 80);
    s.wait_for("the board and the help line", DEADLINE, board_is_drawn)
        .unwrap();
    assert_eq!(score_on_screen(s.screen()), Some(0));
    // In game mode: no canonical input, no echo (BSD's -icanon -echo), signals still on.
    let game = s.termios().unwrap();
    assert!(!game.local_flags.contains(LocalFlags::ICANON));
    assert!(!game.local_flags.contains(LocalFlags::ECHO));
    assert!(game.local_flags.contains(LocalFlags::ISIG));

    s.send(b"jj ").unwrap();
    let cells = dropped_cells(b"jj");
    s.wait_for("the dropped piece, moved left twice", DEADLINE, |sc| {
        blocks_at(sc, &cells)
    })
    .unwrap();
    s.wait_for("a score above 0", DEADLINE, |sc| {
        score_on_screen(sc).is_some_and(|n| n > 0)
    })
    .unwrap();

    s.send(b"q").unwrap();
    let status = answer_scores_prompt_and_exit(&mut s);
    assert_eq!(status.code(), Some(0));
    let text = s.contents();
    let line = text
        .lines()
        .find(|l| l.starts_with("Your score:  "))
        .unwrap_or_else(|| panic!("no score line in:\n{text}"));
    assert!(line.contains("x  level 1  ="), "{line}");
    assert!(text.contains("Tetris High Scores"), "{text}");
    assert!(dir.path().join("scores").exists(), "the score was saved");
    assert_terminal_restored(&s);
}

#[test]
fn game_over_ends_like_quit_with_the_score_saved() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "5", "-l", "9"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    // Drop every piece straight down: the middle fills up and a new piece soon does not fit.
    // One drop per score change (a drop, or a lock dealing a new piece): keys must not
    // flood the game, as a stream of keys starves BSD's fall timer.
    let start = std::time::Instant::now();
    let mut last = None;
    while !s.contents().contains(SEE_SCORES_PROMPT) {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "no game over:\n{}",
            s.contents()
        );
        let score = score_on_screen(s.screen());
        if score.is_some() && score != last {
            last = score;
            s.send(b" ").unwrap();
        }
        s.pump(Duration::from_millis(20)).unwrap();
    }
    let status = answer_scores_prompt_and_exit(&mut s);
    assert_eq!(status.code(), Some(0));
    let text = s.contents();
    assert!(text.contains("Your score:"), "{text}");
    assert!(text.contains("x  level 9  ="), "{text}");
    assert!(dir.path().join("scores").exists());
    assert_terminal_restored(&s);
}

/// The playfield as the screen shows it on 80x24: for board rows `rows`, true where a block
/// (`[`) is drawn in columns 1-10.
fn screen_cells(screen: &vt100::Screen, rows: std::ops::RangeInclusive<usize>) -> Vec<bool> {
    let mut cells = Vec::new();
    for row in rows {
        for col in 1..=10 {
            let cell = screen.cell((row - 1) as u16, (2 * col + 27) as u16);
            cells.push(cell.is_some_and(|c| c.contents() == "["));
        }
    }
    cells
}

/// The same for a board array.
fn board_cells(board: &[u8], rows: std::ops::RangeInclusive<usize>) -> Vec<bool> {
    let mut cells = Vec::new();
    for row in rows {
        for col in 1..=10 {
            cells.push(board[row * B_COLS + col] != 0);
        }
    }
    cells
}

#[test]
fn a_full_row_is_shown_emptied_then_closed_up_before_the_next_piece() {
    // Found by a greedy search over the rules: on seed 5 these three pieces (rotations and
    // moves, then a drop; the fall timer locks them) fill board row 20.
    const SEED5: u64 = 5;
    const PIECES: [&[u8]; 3] = [b"kkjjjjj ", b"kk ", b"lll "];
    // What the rules say: the locked board after each piece, and the two frames BSD shows
    // while eliding the row the last piece completes.
    let mut state = rules::new_game(SEED5, 1, DEFAULT_KEYS, false);
    let mut locked = vec![state.board];
    let mut frames = Vec::new();
    for keys in PIECES {
        for &k in keys {
            rules::step(&mut state, Input::Key(k), Mode::Interactive);
        }
        let mut with_piece = state.board;
        rules::place(&mut with_piece, state.curshape, state.pos, true);
        frames = tetris::play::elide_frames(&with_piece);
        let outcome = rules::step(&mut state, Input::Timer, Mode::Interactive);
        assert!(outcome.locked);
        locked.push(state.board);
    }
    assert_eq!(frames.len(), 2, "the last piece clears exactly one row");
    assert_ne!(
        board_cells(&frames[0], 1..=20),
        board_cells(&frames[1], 1..=20)
    );

    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "5", "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    for (i, keys) in PIECES.iter().enumerate() {
        // The pieces so far are locked (rows 5-20 as the rules say) and a new one is at the
        // top (rows 1-4): its turn now.
        s.wait_for(&format!("piece {i} dealt"), DEADLINE, |sc| {
            screen_cells(sc, 5..=20) == board_cells(&locked[i], 5..=20)
                && screen_cells(sc, 1..=4).contains(&true)
        })
        .unwrap();
        s.send(keys).unwrap();
    }
    s.wait_for("the full row shown emptied", DEADLINE, |sc| {
        screen_cells(sc, 1..=20) == board_cells(&frames[0], 1..=20)
    })
    .unwrap();
    s.wait_for("the rows above moved down", DEADLINE, |sc| {
        screen_cells(sc, 1..=20) == board_cells(&frames[1], 1..=20)
    })
    .unwrap();
    s.wait_for("the next piece after the elide", DEADLINE, |sc| {
        screen_cells(sc, 5..=20) == board_cells(&locked[3], 5..=20)
            && screen_cells(sc, 1..=4).contains(&true)
    })
    .unwrap();
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
}

#[test]
fn arrow_keys_move_the_piece_as_the_key_map_does() {
    let dir = TempDir::new().unwrap();
    let seed = SEED.to_string();
    let mut s = start(&dir, &["--seed", &seed, "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    // Right arrow three times, then drop: where "lll " puts it.
    for _ in 0..3 {
        s.send(keys::RIGHT).unwrap();
    }
    s.send(b" ").unwrap();
    let cells = dropped_cells(b"lll");
    assert_ne!(cells, dropped_cells(b""), "the test must move the piece");
    s.wait_for("the piece dropped three columns right", DEADLINE, |sc| {
        blocks_at(sc, &cells)
    })
    .unwrap();
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
}

#[test]
fn ctrl_c_exits_0_restoring_the_terminal_without_saving_a_score() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.send(keys::CTRL_C).unwrap();
    let status = s.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!s.contents().contains("Your score"), "{}", s.contents());
    assert!(!dir.path().join("scores").exists(), "no score saved on ^C");
    assert_terminal_restored(&s);
}

#[test]
fn sigterm_restores_the_terminal_then_dies_of_the_signal() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.signal(Signal::SIGTERM).unwrap();
    let status = s.wait_exit(DEADLINE).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    assert!(!dir.path().join("scores").exists());
    assert_terminal_restored(&s);
}

#[test]
fn too_small_terminal_prints_the_message_and_exits_1_untouched() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3"], 22, 80);
    let status = s.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        s.contents()
            .contains("the screen is too small: must be at least 40x23"),
        "{}",
        s.contents()
    );
    assert_terminal_restored(&s);
}

#[test]
fn pause_shows_the_message_and_the_next_key_is_a_command() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3", "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.send(b"p").unwrap();
    s.wait_for("the pause message", DEADLINE, |sc| {
        sc.contents().lines().nth(22).map(str::trim_end)
            == Some("                      paused - press RETURN to continue")
    })
    .unwrap();
    // BSD: the key that ends the pause is then handled, so p then q quits.
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
    assert!(s.contents().contains("Your score:"));
}

#[test]
fn resize_redraws_the_board_centred_in_the_new_size() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3", "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.resize(30, 100).unwrap();
    // 100x30: offset 3, wall columns 2 * 0 + 37 and 2 * 11 + 37, floor on row 23.
    s.wait_for("the board centred in 100x30", DEADLINE, |sc| {
        let rev = |r: u16, c: u16| sc.cell(r, c).is_some_and(vt100::Cell::inverse);
        rev(3, 37) && rev(3, 59) && (37..61).all(|c| rev(23, c)) && !rev(2, 37)
    })
    .unwrap();
    // A redraw must not ask for the cursor position: the answer is read from stdin, and
    // the library that reads it swallowed the keys typed around it.
    assert!(!s.output_text().contains("\x1b[6n"));
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
}

#[test]
fn shrinking_below_40x23_mid_game_shows_the_message_until_it_grows_back() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3", "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.resize(20, 60).unwrap();
    s.wait_for("the too-small message", DEADLINE, |sc| {
        sc.contents()
            .starts_with("the screen is too small: must be at least 40x23")
    })
    .unwrap();
    s.resize(24, 80).unwrap();
    s.wait_for("the board again", DEADLINE, board_is_drawn)
        .unwrap();
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
    assert_terminal_restored(&s);
}

#[test]
fn ctrl_z_stops_with_the_terminal_restored_and_continue_redraws() {
    let dir = TempDir::new().unwrap();
    let mut s = start(&dir, &["--seed", "3", "-l", "1"], 24, 80);
    s.wait_for("the board", DEADLINE, board_is_drawn).unwrap();
    s.send(keys::CTRL_Z).unwrap();
    let pid = s.pid();
    s.wait_for("the process stopped, main screen back", DEADLINE, |sc| {
        process_state(pid) == Some('T') && !sc.alternate_screen()
    })
    .unwrap();
    assert_eq!(&s.termios().unwrap(), s.initial_termios());
    s.signal(Signal::SIGCONT).unwrap();
    s.wait_for("the board redrawn after continue", DEADLINE, board_is_drawn)
        .unwrap();
    assert!(
        !s.termios()
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON),
        "game mode again"
    );
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
    assert_terminal_restored(&s);
}

#[test]
fn no_color_draws_blocks_in_the_default_colour() {
    let dir = TempDir::new().unwrap();
    let scores = dir.path().join("scores");
    let colours = |env_no_color: bool| {
        let mut cmd = tetris(&scores, &["--seed", "3", "-l", "1", "-p"]);
        if env_no_color {
            cmd.env("NO_COLOR", "1");
        }
        let mut s = Session::spawn(cmd, 24, 80).unwrap();
        s.wait_for("the board and preview", DEADLINE, |sc| {
            board_is_drawn(sc) && sc.contents().contains("Next shape:")
        })
        .unwrap();
        let screen = s.screen().clone();
        s.send(keys::CTRL_C).unwrap();
        s.wait_exit(DEADLINE).unwrap();
        let mut fg = Vec::new();
        for r in 0..24 {
            for c in 0..80 {
                if let Some(cell) = screen.cell(r, c)
                    && cell.contents() == "["
                {
                    fg.push(cell.fgcolor());
                }
            }
        }
        fg
    };
    let coloured = colours(false);
    let plain = colours(true);
    assert!(!plain.is_empty());
    assert!(
        plain.iter().all(|&c| c == vt100::Color::Default),
        "{plain:?}"
    );
    assert!(
        coloured.iter().any(|&c| c != vt100::Color::Default),
        "{coloured:?}"
    );
}

/// The state letter of /proc/PID/stat ('T' when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The leftmost reverse-video column of screen row `row`: the board's left wall.
fn left_wall(screen: &vt100::Screen, row: u16) -> Option<u16> {
    let (_, cols) = screen.size();
    (0..cols.get()).find(|&c| screen.cell(row, c).is_some_and(vt100::Cell::inverse))
}

#[test]
fn at_40x23_the_score_and_next_shape_are_not_covered_by_the_wall() {
    let dir = TempDir::new().unwrap();
    let seed = SEED.to_string();
    let mut s = start(&dir, &["--seed", &seed, "-l", "1", "-p"], 23, 40);
    s.wait_for("the board with the preview", DEADLINE, |sc| {
        sc.contents().contains("Next shape:") && left_wall(sc, 10).is_some()
    })
    .unwrap();
    // Drop a few pieces so the score has several digits.
    s.send(b" ").unwrap();
    s.wait_for("a score of two digits", DEADLINE, |sc| {
        score_on_screen(sc).is_some_and(|n| n >= 10)
    })
    .unwrap();
    let screen = s.screen();
    let score = score_on_screen(screen).unwrap();
    assert!(
        s.row_text(0).starts_with(&format!("Score: {score} ")),
        "{:?}",
        s.row_text(0)
    );
    assert!(
        s.row_text(2).starts_with("Next shape: "),
        "{:?}",
        s.row_text(2)
    );
    for row in 0..20 {
        let wall = left_wall(screen, row).unwrap();
        assert!(wall > 11, "row {row}: the wall at column {wall}");
    }
    s.send(keys::CTRL_C).unwrap();
    assert_eq!(s.wait_exit(DEADLINE).unwrap().code(), Some(0));
    assert_terminal_restored(&s);
}

#[test]
fn six_keys_show_bsdgames_help_line_and_have_no_down_key() {
    const BSD_HELP: &str =
        "j - left   k - rotate   l - right   <space> - drop   p - pause   q - quit";
    let dir = TempDir::new().unwrap();
    let seed = SEED.to_string();
    let mut s = start(&dir, &["--seed", &seed, "-l", "1", "-k", "jkl pq"], 24, 80);
    s.wait_for("the six-key help line", DEADLINE, |sc| {
        sc.contents().lines().nth(22).map(str::trim) == Some(BSD_HELP)
    })
    .unwrap();
    // `n` and the down arrow are nothing: thirty of each would take the piece to the floor
    // for a point a row; without a down key the game quits with no point scored (the fall
    // timer scores nothing, and at level 1 it needs seconds a row).
    for _ in 0..30 {
        s.send(b"n").unwrap();
        s.send(keys::DOWN).unwrap();
    }
    s.send(b"q").unwrap();
    assert_eq!(answer_scores_prompt_and_exit(&mut s).code(), Some(0));
    let text = s.contents();
    assert!(text.contains("Your score:  0 points  x  level 1"), "{text}");
}
