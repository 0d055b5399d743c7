//! `TETRIS_STATUS_FD`: the line a restored game writes for its supervisor before it consumes
//! any input, so the supervisor knows which inputs it has to replay.
//!
//! The line is `{"resumed":{"checkpoint":C,"inputs":N,"epoch":E}}` and a newline: the game
//! continues from checkpoint `C` (of the stream it was restored from), has consumed `N`
//! inputs, and runs as epoch `E`. A variable that is unset, empty, not a number or names a
//! closed descriptor means nobody listens: nothing is written.

use std::os::fd::{BorrowedFd, RawFd};

use anyhow::Context as _;
use hslib::Restored;
use nix::errno::Errno;

/// The variable naming the descriptor.
pub const STATUS_FD_ENV: &str = "TETRIS_STATUS_FD";

/// The line (with its newline) for a game restored as `restored` with `inputs` consumed.
pub fn resumed_line(restored: &Restored, inputs: u64) -> String {
    format!(
        "{{\"resumed\":{{\"checkpoint\":{},\"inputs\":{},\"epoch\":{}}}}}\n",
        restored.checkpoint, inputs, restored.epoch
    )
}

/// The descriptor `TETRIS_STATUS_FD` names, if it is open.
fn status_fd() -> Option<RawFd> {
    let value = std::env::var(STATUS_FD_ENV).ok()?;
    let fd: RawFd = value.trim().parse().ok().filter(|&fd| fd >= 0)?;
    // SAFETY: F_GETFD only reads the descriptor's flags; on a number that is not an open
    // descriptor it fails with EBADF and touches nothing.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    open.then_some(fd)
}

/// Writes the resumed line to `TETRIS_STATUS_FD` when it names an open descriptor.
pub fn report_resumed(restored: &Restored, inputs: u64) -> anyhow::Result<()> {
    let Some(fd) = status_fd() else {
        return Ok(());
    };
    // SAFETY: `status_fd` just found `fd` open; this thread does not close it, hslib's threads
    // close only their own descriptors, and the borrow ends with this function.
    let out = unsafe { BorrowedFd::borrow_raw(fd) };
    let line = resumed_line(restored, inputs);
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(out, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot write the resumed line to {STATUS_FD_ENV}={fd}")
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_the_documented_form() {
        let r = Restored {
            checkpoint: 17,
            from_epoch: 1,
            epoch: 2,
        };
        assert_eq!(
            resumed_line(&r, 9),
            "{\"resumed\":{\"checkpoint\":17,\"inputs\":9,\"epoch\":2}}\n"
        );
    }
}
