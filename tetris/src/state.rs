//! The whole game as one plain-old-data value, ready to live in checkpoint memory.
//!
//! Everything a restored game needs is in [`GameState`]: no pointers, no heap, no `bool`s
//! (a byte that is not 0 or 1 must not be undefined behaviour when a checkpoint is mapped
//! in), explicit padding, and a magic plus layout version first so a reader can refuse a
//! foreign or stale image. A later issue places this struct in a registered hslib region;
//! the layout is therefore part of the checkpoint format: bump [`LAYOUT_VERSION`] on any
//! change.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Board width including the two wall columns (BSD `B_COLS`).
pub const B_COLS: usize = 12;
/// Board height including the hidden row 0 and the two floor rows (BSD `B_ROWS`).
pub const B_ROWS: usize = 23;
/// Number of cells in the flat board array (BSD `B_SIZE`).
pub const B_SIZE: usize = B_COLS * B_ROWS;
/// Where every new piece appears: row 1, column 5.
pub const SPAWN_POS: i32 = (B_COLS + B_COLS / 2 - 1) as i32;

/// First field of every [`GameState`]: `b"TTRS"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TTRS");
/// Version of the field layout below.
pub const LAYOUT_VERSION: u32 = 3;
/// Most rows one lock can complete: a piece spans four rows.
pub const MAX_CLEARED: usize = 4;

/// Index of each command in [`GameState::keys`].
pub mod key {
    /// Move left.
    pub const LEFT: usize = 0;
    /// Rotate.
    pub const ROTATE: usize = 1;
    /// Move right.
    pub const RIGHT: usize = 2;
    /// Drop.
    pub const DROP: usize = 3;
    /// Pause.
    pub const PAUSE: usize = 4;
    /// Quit.
    pub const QUIT: usize = 5;
    /// Down one row.
    pub const DOWN: usize = 6;
}

/// BSD's default key map (current NetBSD): `jkl pqn`.
pub const DEFAULT_KEYS: [u8; 7] = *b"jkl pqn";

/// The complete, checkpointable state of one game.
///
/// Flags are `u8` holding 0 or 1; use the accessor methods rather than the raw bytes.
///
/// Time is state too: an interactive game dates what is left of its fall timer with the wall
/// clock ([`GameState::timer_wall_us`]) and keeps the rows a lock completed while their
/// pause is shown ([`GameState::elide_rows`]), so a game restored from a checkpoint in
/// another process falls, and ends that pause, when the game it continues would have
/// ([`crate::play::game_loop`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GameState {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// xoshiro256++ generator state for `randshape()`.
    pub rng: [u64; 4],
    /// The seed the generator was started from (reported, never re-used).
    pub seed: u64,
    /// Current fall rate in microseconds (`1_000_000 / level`, sped up on each re-arm).
    pub fallrate_us: u64,
    /// Microseconds left before the fall timer expires; 0 means "re-arm before waiting".
    pub timer_left_us: u64,
    /// Wall-clock time (`CLOCK_REALTIME`, µs since the Unix epoch) from which
    /// `timer_left_us` runs: when it was last brought up to date, or, after a lock that
    /// completed rows, when the pause showing them ends. A restored interactive game
    /// subtracts the time since then, so it falls when its primary would have. 0 when never
    /// dated (a fresh game; headless games, whose timer is the script's).
    pub timer_wall_us: u64,
    /// Inputs consumed so far (keys and timer expiries; newlines in scripts excluded).
    pub inputs: u64,
    /// Bytes of terminal input accounted for (interactive games): every byte up to the end
    /// of the last key consumed, or dropped while rows were shown clearing. A supervisor that
    /// logs what it typed replays its log from here after a restore. 0 in headless games.
    pub tty_bytes: u64,
    /// Points (the final score is `points * level`).
    pub points: u32,
    /// Level, 1 to 9.
    pub level: u32,
    /// Board index of the falling piece's centre cell.
    pub pos: i32,
    /// Shape table index of the falling piece (0..19).
    pub curshape: u8,
    /// Shape table index of the next piece (0..7).
    pub nextshape: u8,
    /// 1 while paused.
    pub paused: u8,
    /// 1 when the next piece is previewed (`-p`).
    pub preview: u8,
    /// 1 once the game is over (a new piece did not fit).
    pub game_over: u8,
    /// 1 once the player quit.
    pub quit: u8,
    /// Key map, indexed by [`key`]: left, rotate, right, drop, pause, quit, down.
    pub keys: [u8; 7],
    /// Cells, `pos = row * B_COLS + col`; non-zero is occupied (walls and locked pieces).
    /// A locked cell holds `1 + base shape` (1..=7) so the screen can colour it; walls hold 8.
    pub board: [u8; B_SIZE],
    /// The rows (1..=20, top to bottom, numbered as before their removal) the last lock
    /// completed, 0 for none. With [`GameState::elide_cells`] and `board` they give back the
    /// board the line-clear pause shows, for a game restored in the middle of it. Set at
    /// the lock, cleared by the next change after the pause.
    pub elide_rows: [u8; MAX_CLEARED],
    /// Columns 1..=10 of each row in [`GameState::elide_rows`], as they were when completed.
    pub elide_cells: [[u8; B_COLS - 2]; MAX_CLEARED],
    /// Explicit padding to the struct's 8-byte alignment; always zero.
    pub _pad: [u8; 7],
}

// The layout is part of the checkpoint format: any change must be deliberate.
const _: () = assert!(size_of::<GameState>() == 440);
const _: () = assert!(align_of::<GameState>() == 8);

impl GameState {
    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.paused != 0
    }
    /// True once the game is over.
    pub fn is_game_over(&self) -> bool {
        self.game_over != 0
    }
    /// True once the player quit.
    pub fn has_quit(&self) -> bool {
        self.quit != 0
    }
    /// True when the game accepts no more input (over or quit).
    pub fn is_finished(&self) -> bool {
        self.is_game_over() || self.has_quit()
    }
    /// True when the next piece is shown.
    pub fn shows_preview(&self) -> bool {
        self.preview != 0
    }
    /// How many rows the last lock completed, as recorded for its line-clear pause.
    pub fn elided(&self) -> usize {
        self.elide_rows.iter().take_while(|&&r| r != 0).count()
    }
    /// True when this value carries the expected magic and layout version.
    pub fn is_valid_header(&self) -> bool {
        self.magic == MAGIC && self.layout_version == LAYOUT_VERSION
    }
}
