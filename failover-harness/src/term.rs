//! The user's terminal: raw mode for as long as the harness holds it, and put back however
//! the session ends — normally, on a signal, or in a panic (a hook restores it before the
//! message is printed).

use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use anyhow::Context as _;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::sys;

/// stdin's mode to put back, while the harness holds the terminal.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// Whether the game's output left the alternate screen on (kept current by the proxy).
static ALT_SCREEN: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// The user's terminal (stdin) in raw mode; dropping it restores it.
#[derive(Debug)]
pub struct RawTerminal {
    _private: (),
}

impl RawTerminal {
    /// Switches stdin's terminal to raw mode (keys as typed, no echo, no signals from keys,
    /// no output processing: the games' terminals did that already).
    pub fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = tcgetattr(fd).context("stdin is not a terminal: play needs one")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        store(Some(saved.into()));
        let terminal = Self { _private: () };
        tcsetattr(fd, SetArg::TCSADRAIN, &raw).context("cannot switch the terminal to raw mode")?;
        Ok(terminal)
    }

    /// The terminal's size (rows, columns).
    pub fn size(&self) -> anyhow::Result<(u16, u16)> {
        sys::window_size(std::io::stdin().as_fd()).context("cannot read the terminal's size")
    }

    /// Tells the restore whether the alternate screen is on (it leaves it if so).
    pub fn note_alt_screen(&self, on: bool) {
        ALT_SCREEN.store(on, Ordering::Relaxed);
    }

    /// Restores the terminal now (idempotent).
    pub fn restore(&mut self) {
        restore();
    }

    /// Gives the terminal back as it was and stops the harness (as a shell's job); once
    /// continued (`fg`), takes it again in raw mode.
    pub fn suspend(&mut self) -> anyhow::Result<()> {
        let fd = std::io::stdin();
        let raw = tcgetattr(fd.as_fd()).context("cannot read the terminal's mode")?;
        let saved = SAVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|t| Termios::from(*t));
        restore();
        // SIGSTOP, not SIGTSTP: a stop the kernel would not discard in an orphaned process
        // group (a harness started by something else than a job-control shell).
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP)
            .context("cannot stop the harness")?;
        if let Some(saved) = saved {
            store(Some(saved.into()));
        }
        tcsetattr(fd.as_fd(), SetArg::TCSADRAIN, &raw)
            .context("cannot switch the terminal back to raw mode")
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

fn store(v: Option<libc::termios>) {
    *SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
}

/// Puts the saved mode back and leaves the screen usable: attributes reset, cursor shown,
/// the alternate screen left if the game could not leave it.
fn restore() {
    let taken = SAVED.try_lock().map(|mut s| s.take()).unwrap_or(None);
    let Some(saved) = taken else {
        return;
    };
    let mut tail = String::from("\x1b[0m\x1b[?25h");
    if ALT_SCREEN.swap(false, Ordering::Relaxed) {
        tail.push_str("\x1b[?1049l");
    }
    // Raw write(2): a panic may have interrupted a holder of the stdout lock.
    let _ = std::io::stdout().flush();
    let stdout = std::io::stdout();
    let mut rest = tail.as_bytes();
    while let Ok(n) = nix::unistd::write(stdout.as_fd(), rest) {
        if n == 0 || n == rest.len() {
            break;
        }
        rest = &rest[n..];
    }
    let _ = tcsetattr(
        std::io::stdin().as_fd(),
        SetArg::TCSADRAIN,
        &Termios::from(saved),
    );
}

/// Restores the terminal before a panic's message is printed. Installed once.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
