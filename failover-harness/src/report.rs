//! What a game reports on its status descriptor (`TETRIS_STATUS_FD`, see `tetris::status`):
//! the resumed line of a restored game and the periodic stats lines, read line by line from a
//! non-blocking pipe.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use serde::Deserialize;

/// A restored game's first line: where it continues from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Resumed {
    /// The checkpoint it continues from.
    pub checkpoint: u64,
    /// Inputs its state has consumed (headless: script bytes, newlines not counted).
    pub inputs: u64,
    /// Its epoch.
    pub epoch: u64,
    /// A game on a terminal: the bytes of terminal input its state accounts for.
    #[serde(default)]
    pub tty_bytes: Option<u64>,
}

/// A stats line: the game's checkpoints and its link to the spare.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
pub struct Stats {
    /// The game's epoch.
    pub epoch: u64,
    /// Checkpoints, continuing from the restored checkpoint's number.
    pub checkpoints: u64,
    /// Inputs consumed at the last checkpoint.
    pub inputs: u64,
    /// Terminal bytes accounted for at the last checkpoint.
    pub tty_bytes: u64,
    /// The last checkpoint's stall, microseconds.
    pub stall_last_us: f64,
    /// The 99th percentile stall, microseconds.
    pub stall_p99_us: f64,
    /// The number of the last checkpoint written to the spare.
    pub last_written: u64,
    /// The last checkpoint the spare acknowledged.
    pub acked: u64,
    /// Sessions opened (one per spare that connected).
    pub sessions: u64,
    /// Whether a spare is connected.
    pub live: bool,
    /// Whether the connected spare holds a checkpoint.
    pub synced: bool,
}

impl Stats {
    /// Checkpoints written that the spare has not acknowledged yet.
    pub fn lag(&self) -> u64 {
        self.last_written.saturating_sub(self.acked)
    }
}

/// One line from a game.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Line {
    /// `{"resumed":{...}}`.
    Resumed(Resumed),
    /// `{"stats":{...}}`.
    Stats(Stats),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Wire {
    Resumed(Resumed),
    Stats(Stats),
}

/// Parses one line; `None` for anything else (a newer game may say more).
pub fn parse(line: &str) -> Option<Line> {
    match serde_json::from_str::<Wire>(line.trim()).ok()? {
        Wire::Resumed(r) => Some(Line::Resumed(r)),
        Wire::Stats(s) => Some(Line::Stats(s)),
    }
}

/// The harness's end of a game's status pipe: non-blocking reads split into lines.
#[derive(Debug)]
pub struct StatusPipe {
    fd: OwnedFd,
    partial: Vec<u8>,
    eof: bool,
}

impl StatusPipe {
    /// Reads from `fd`, which must be non-blocking.
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            partial: Vec::new(),
            eof: false,
        }
    }

    /// The descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True once the writer closed it (the game exited) and everything was read.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Reads what is there now and returns the complete lines parsed.
    pub fn read_lines(&mut self) -> std::io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(parsed) = parse(&String::from_utf8_lossy(&line)) {
                lines.push(parsed);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_tetris_writes_parse() {
        assert_eq!(
            parse("{\"resumed\":{\"checkpoint\":17,\"inputs\":9,\"epoch\":2}}\n"),
            Some(Line::Resumed(Resumed {
                checkpoint: 17,
                inputs: 9,
                epoch: 2,
                tty_bytes: None
            }))
        );
        assert_eq!(
            parse("{\"resumed\":{\"checkpoint\":1,\"inputs\":0,\"epoch\":3,\"tty_bytes\":12}}"),
            Some(Line::Resumed(Resumed {
                checkpoint: 1,
                inputs: 0,
                epoch: 3,
                tty_bytes: Some(12)
            }))
        );
        let stats = tetris::status::StatsLine {
            epoch: 3,
            checkpoints: 10,
            inputs: 4,
            tty_bytes: 6,
            stall_last_us: 2.5,
            stall_p99_us: 7.0,
            link: hslib::LinkStats {
                last_written: 9,
                acked: 7,
                sessions: 2,
                live: true,
                synced: true,
                ..hslib::LinkStats::default()
            },
        };
        let Some(Line::Stats(s)) = parse(&stats.to_line()) else {
            panic!("a stats line");
        };
        assert_eq!(
            (s.epoch, s.checkpoints, s.inputs, s.tty_bytes),
            (3, 10, 4, 6)
        );
        assert_eq!((s.stall_last_us, s.stall_p99_us), (2.5, 7.0));
        assert_eq!((s.lag(), s.sessions, s.live, s.synced), (2, 2, true, true));
        assert_eq!(parse("{\"other\":1}"), None);
        assert_eq!(parse("not json"), None);
    }
}
