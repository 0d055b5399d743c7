//! Just enough of a terminal's parser to pass a game's output through and still write our
//! own status row: where a sequence starts and ends (the row goes in only between them), and
//! whether the game has the alternate screen and a hidden cursor (to put things back if the
//! game could not).

/// Where the output stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Between sequences and characters.
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// ESC and intermediate bytes.
    EscIntermediate,
    /// A control sequence (ESC [).
    Csi,
    /// A string (OSC, DCS, SOS, PM, APC) up to BEL or ST.
    Str,
    /// ESC inside a string: ST if `\` follows.
    StrEsc,
    /// Inside a UTF-8 character: this many continuation bytes to come.
    Utf8(u8),
}

/// The output stream's state.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    state: State,
    /// A control sequence's parameter and intermediate bytes so far.
    params: Vec<u8>,
    alt_screen: bool,
    cursor_hidden: bool,
}

const ESC: u8 = 0x1b;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const BEL: u8 = 0x07;

impl Tracker {
    /// A stream at its start.
    pub fn new() -> Self {
        Self::default()
    }

    /// True between sequences: something else may be written to the terminal here.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Ground
    }

    /// True while the game shows the alternate screen.
    pub fn alt_screen(&self) -> bool {
        self.alt_screen
    }

    /// True while the game has hidden the cursor.
    pub fn cursor_hidden(&self) -> bool {
        self.cursor_hidden
    }

    /// Bytes that end whatever sequence the stream was cut in (CAN aborts one) and reset the
    /// attributes: a dead game's half-written frame must not swallow the next game's first.
    pub fn cut(&mut self) -> &'static [u8] {
        let mid = self.state != State::Ground;
        self.state = State::Ground;
        self.params.clear();
        if mid { b"\x18\x1b[0m" } else { b"\x1b[0m" }
    }

    /// Follows `bytes` of output.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        // These abort or restart a sequence anywhere (but inside a UTF-8 character).
        if !matches!(self.state, State::Utf8(_) | State::Str | State::StrEsc) {
            match b {
                CAN | SUB => {
                    self.state = State::Ground;
                    return;
                }
                ESC => {
                    self.state = State::Esc;
                    return;
                }
                _ => {}
            }
        }
        self.state = match self.state {
            State::Ground => match b {
                0xc0..=0xdf => State::Utf8(1),
                0xe0..=0xef => State::Utf8(2),
                0xf0..=0xf7 => State::Utf8(3),
                _ => State::Ground,
            },
            State::Utf8(n) => match b {
                0x80..=0xbf if n > 1 => State::Utf8(n - 1),
                // The last continuation byte, or a broken character: either way it is over.
                _ => State::Ground,
            },
            State::Esc => match b {
                b'[' => {
                    self.params.clear();
                    State::Csi
                }
                b']' | b'P' | b'X' | b'^' | b'_' => State::Str,
                0x20..=0x2f => State::EscIntermediate,
                _ => State::Ground,
            },
            State::EscIntermediate => match b {
                0x20..=0x2f => State::EscIntermediate,
                _ => State::Ground,
            },
            State::Csi => match b {
                0x20..=0x3f => {
                    if self.params.len() < 64 {
                        self.params.push(b);
                    }
                    State::Csi
                }
                0x40..=0x7e => {
                    self.csi_done(b);
                    State::Ground
                }
                // Other C0 controls are executed in place; the sequence goes on.
                _ => State::Csi,
            },
            State::Str => match b {
                BEL => State::Ground,
                ESC => State::StrEsc,
                _ => State::Str,
            },
            State::StrEsc => match b {
                b'\\' => State::Ground,
                ESC => State::StrEsc,
                _ => State::Str,
            },
        };
    }

    /// A control sequence ended with `final_byte`: the private modes we follow.
    fn csi_done(&mut self, final_byte: u8) {
        let on = match final_byte {
            b'h' => true,
            b'l' => false,
            _ => return,
        };
        let Some(rest) = self.params.strip_prefix(b"?") else {
            return;
        };
        for mode in rest.split(|&c| c == b';') {
            match mode {
                b"1049" | b"1047" | b"47" => self.alt_screen = on,
                b"25" => self.cursor_hidden = !on,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(bytes: &[u8]) -> Tracker {
        let mut t = Tracker::new();
        t.feed(bytes);
        t
    }

    #[test]
    fn boundaries_fall_between_sequences_and_characters() {
        assert!(fed(b"abc\x1b[1;5Hx").at_boundary());
        assert!(!fed(b"abc\x1b").at_boundary());
        assert!(!fed(b"\x1b[1;").at_boundary());
        assert!(fed(b"\x1b[1;5H").at_boundary());
        assert!(!fed(b"\x1b]0;title").at_boundary());
        assert!(fed(b"\x1b]0;title\x07").at_boundary());
        assert!(fed(b"\x1b]0;title\x1b\\").at_boundary());
        assert!(fed(b"\x1b(B").at_boundary());
        assert!(!fed(b"\x1b(").at_boundary());
        assert!(!fed("é".as_bytes().split_at(1).0).at_boundary());
        assert!(fed("é€😀".as_bytes()).at_boundary());
        assert!(fed(b"\x1b[12\x18").at_boundary(), "CAN aborts");
    }

    #[test]
    fn the_alternate_screen_and_the_cursor_are_followed() {
        let t = fed(b"\x1b[?1049h\x1b[?25l");
        assert!(t.alt_screen() && t.cursor_hidden());
        let t = fed(b"\x1b[?1049h\x1b[?25l\x1b[2J\x1b[?25h\x1b[?1049l");
        assert!(!t.alt_screen() && !t.cursor_hidden());
        assert!(fed(b"\x1b[?1047;25h").alt_screen());
        assert!(!fed(b"\x1b[1049h").alt_screen(), "not a private mode");
    }

    #[test]
    fn a_cut_stream_is_ended_with_can() {
        let mut t = fed(b"\x1b[1;");
        assert_eq!(t.cut(), b"\x18\x1b[0m");
        assert!(t.at_boundary());
        assert_eq!(t.cut(), b"\x1b[0m");
    }
}
