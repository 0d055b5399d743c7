//! The terminal in game mode and back: BSD's mode (`-icanon -echo`, so ^C and ^Z still send
//! signals), the alternate screen, a hidden cursor; and its restoration on every way out.
//!
//! [`GameMode`] is the guard: created by [`GameMode::enter`], restored by
//! [`GameMode::leave`] or on drop; [`install_panic_hook`] restores it before a panic message
//! is printed. The saved termios lives in one process-wide slot so whichever runs first
//! restores, and the others find nothing left to do.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, Once};

use nix::sys::termios::{
    LocalFlags, SetArg, SpecialCharacterIndices, Termios, tcgetattr, tcsetattr,
};
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::queue;
use ratatui::crossterm::style::{Attribute, SetAttribute};
use ratatui::crossterm::terminal::{Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};

/// What went wrong while switching the terminal's mode.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// `tcgetattr` failed: fd is probably not a terminal (BSD: `tcgetattr() fails`).
    #[error("tcgetattr() on fd {fd} fails: {source}")]
    GetAttr {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: nix::Error,
    },
    /// `tcsetattr` failed.
    #[error("tcsetattr() on fd {fd} fails: {source}")]
    SetAttr {
        /// The fd.
        fd: RawFd,
        /// The OS error.
        source: nix::Error,
    },
    /// Game mode is already on: a second guard would save game mode as the mode to restore.
    #[error("the terminal on fd {0} is already in game mode")]
    AlreadyInGameMode(RawFd),
    /// Writing the screen-mode sequences failed.
    #[error("writing the screen-mode sequences failed: {0}")]
    Write(#[from] std::io::Error),
}

/// The termios to put back, and on which fd: set while the terminal is in game mode.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// The terminal in game mode; dropping it restores the terminal.
#[derive(Debug)]
pub struct GameMode<'a> {
    tty: BorrowedFd<'a>,
}

impl<'a> GameMode<'a> {
    /// Saves `tty`'s mode, switches it to BSD's game mode, enters the alternate screen on
    /// stdout, hides the cursor and clears the screen.
    pub fn enter(tty: BorrowedFd<'a>) -> Result<Self, TerminalError> {
        if is_active(tty.as_raw_fd()) {
            return Err(TerminalError::AlreadyInGameMode(tty.as_raw_fd()));
        }
        let mode = Self { tty };
        // On error, drop restores whatever was already changed.
        setup(tty)?;
        Ok(mode)
    }

    /// Puts the terminal back as [`GameMode::enter`] found it (idempotent).
    pub fn leave(&mut self) -> Result<(), TerminalError> {
        restore(self.tty.as_raw_fd())
    }

    /// Game mode again, after [`GameMode::leave`] or after the process was stopped and
    /// continued behind our back (the shell may have reset the terminal meanwhile): the
    /// mode to restore is kept if game mode was still on, read afresh otherwise.
    pub fn resume(&mut self) -> Result<(), TerminalError> {
        if is_active(self.tty.as_raw_fd()) {
            let fd = self.tty.as_raw_fd();
            let current =
                tcgetattr(self.tty).map_err(|source| TerminalError::GetAttr { fd, source })?;
            set_game_termios(self.tty, &current)?;
            let mut out = std::io::stdout().lock();
            queue!(out, EnterAlternateScreen, Hide)?;
            out.flush()?;
            Ok(())
        } else {
            setup(self.tty)
        }
    }
}

impl Drop for GameMode<'_> {
    fn drop(&mut self) {
        let _ = restore(self.tty.as_raw_fd());
    }
}

fn setup(tty: BorrowedFd<'_>) -> Result<(), TerminalError> {
    let fd = tty.as_raw_fd();
    let saved = tcgetattr(tty).map_err(|source| TerminalError::GetAttr { fd, source })?;
    store_saved(Some((fd, saved.clone().into())));
    set_game_termios(tty, &saved)?;
    let mut out = std::io::stdout().lock();
    queue!(out, EnterAlternateScreen, Hide, Clear(ClearType::All))?;
    out.flush()?;
    Ok(())
}

fn is_active(tty: RawFd) -> bool {
    let slot = SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    slot.is_some_and(|(fd, _)| fd == tty)
}

fn store_saved(value: Option<(RawFd, libc::termios)>) {
    let mut slot = SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *slot = value;
}

/// BSD `scr_set`: `c_lflag &= ~(ICANON|ECHO)`; reads return after one byte.
fn set_game_termios(tty: BorrowedFd<'_>, saved: &Termios) -> Result<(), TerminalError> {
    let mut game = saved.clone();
    game.local_flags &= !(LocalFlags::ICANON | LocalFlags::ECHO);
    game.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    game.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    tcsetattr(tty, SetArg::TCSADRAIN, &game).map_err(|source| TerminalError::SetAttr {
        fd: tty.as_raw_fd(),
        source,
    })
}

/// The bytes that leave game mode on screen: clear (BSD `scr_clear`), normal attributes,
/// the cursor shown, the main screen back.
fn leave_sequence() -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = queue!(
        bytes,
        Clear(ClearType::All),
        SetAttribute(Attribute::Reset),
        Show,
        LeaveAlternateScreen
    );
    bytes
}

/// Restores the saved mode if game mode is on; writes with raw `write(2)` so it works even
/// from a panic hook that interrupted a holder of the stdout lock.
fn restore(tty: RawFd) -> Result<(), TerminalError> {
    let taken = {
        let mut slot = SAVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.take_if(|(fd, _)| *fd == tty)
    };
    let Some((fd, saved)) = taken else {
        return Ok(());
    };
    let _ = std::io::stdout().flush();
    write_all_raw(&leave_sequence())?;
    // SAFETY: the slot is only set while a GameMode borrowing this fd lives (its Drop
    // empties the slot), so the fd is open.
    let tty = unsafe { BorrowedFd::borrow_raw(fd) };
    tcsetattr(tty, SetArg::TCSADRAIN, &Termios::from(saved))
        .map_err(|source| TerminalError::SetAttr { fd, source })
}

fn write_all_raw(mut bytes: &[u8]) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let fd = stdout.as_raw_fd();
    // SAFETY: fd 1 stays open for the process's life.
    let out = unsafe { BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match nix::unistd::write(out, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Restores the terminal before the panic message is printed (then runs the previous
/// hook), so a panic never leaves the user's terminal in game mode. Installed once.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let slot = SAVED
                .try_lock()
                .ok()
                .and_then(|s| s.as_ref().map(|(fd, _)| *fd));
            if let Some(fd) = slot {
                let _ = restore(fd);
            }
            previous(info);
        }));
    });
}
