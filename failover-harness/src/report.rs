//! What a game reports on its status descriptor (`TETRIS_STATUS_FD`): the resumed line of a
//! restored game and the periodic stats lines, defined once in `tetris::status` and read
//! here line by line from a non-blocking pipe.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

pub use tetris::status::{ResumedLine as Resumed, StatsLine as Stats, StatusLine as Line};

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
        while !self.eof {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(parsed) = Line::parse(&String::from_utf8_lossy(&line)) {
                lines.push(parsed);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use nix::fcntl::OFlag;

    use super::*;

    #[test]
    fn lines_split_across_reads_are_joined_and_other_lines_skipped() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK).unwrap();
        let mut pipe = StatusPipe::new(r);
        let mut w = std::fs::File::from(w);
        let stats = Stats {
            epoch: 2,
            checkpoints: 5,
            ..Stats::default()
        };
        let text = format!(
            "{}not json\n{}",
            stats.to_line(),
            "{\"resumed\":{\"checkpoint\":1,\"inputs\":3,\"epoch\":2}}\n"
        );
        let (a, b) = text.split_at(text.len() - 10);
        w.write_all(a.as_bytes()).unwrap();
        assert_eq!(pipe.read_lines().unwrap(), vec![Line::Stats(stats)]);
        w.write_all(b.as_bytes()).unwrap();
        drop(w);
        let rest = pipe.read_lines().unwrap();
        assert!(
            matches!(rest.as_slice(), [Line::Resumed(r)] if r.inputs == 3),
            "{rest:?}"
        );
        assert!(pipe.at_eof());
    }
}
