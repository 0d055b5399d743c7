//! The interactive game: BSD Tetris's main loop on a terminal.
//!
//! [`run`] is what `tetris` does without `--headless`: a new game, [`play`] it, then the
//! score lines and table. [`play`] owns the terminal for exactly as long as the game runs
//! (game mode, signals, the loop, restoration) and takes the state by `&mut`, so a restored
//! state can be played on. [`game_loop`] is the loop itself, over a [`Frontend`], an input
//! [`Source`] and a [`Clock`], so tests drive it on a virtual clock without a terminal.

use std::io::Stdout;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};

use crate::clock::{Clock, SystemClock};
use crate::input::{Event, Source, TerminalInput};
use crate::options::Options;
use crate::rules::{self, Input, Mode};
use crate::screen::{self, Message, View};
use crate::signals::{self, Caught, Signals};
use crate::state::{B_COLS, B_SIZE, GameState};
use crate::terminal::{self, GameMode};
use crate::{rng, scores};

/// How a game on the terminal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Quit or game over: the score counts.
    Finished,
    /// SIGINT: no score saved, exit 0.
    Interrupted,
    /// SIGTERM or SIGHUP: no score saved; the process should die of that signal.
    Terminated(Signal),
    /// The terminal is below 40x23: nothing was drawn.
    TooSmall,
}

/// The screen side of the loop: a ratatui terminal plus what a stop and continue need.
pub trait Frontend {
    /// The ratatui backend drawn on.
    type Backend: Backend;
    /// The terminal to draw on.
    fn terminal(&mut self) -> &mut Terminal<Self::Backend>;
    /// SIGTSTP: restore the user's terminal, stop; returns in game mode once continued.
    fn suspend(&mut self) -> anyhow::Result<()>;
    /// SIGCONT without our own stop: put game mode back (someone may have reset it).
    fn resume(&mut self) -> anyhow::Result<()>;
}

/// Plays a new game on the process's terminal (`tetris` without `--headless`).
pub fn run(options: &Options) -> anyhow::Result<ExitCode> {
    let seed = match options.seed {
        Some(seed) => seed,
        None => rng::os_seed().context("reading a random seed from /dev/urandom")?,
    };
    let mut state = rules::new_game(seed, options.level, options.keys, options.preview);
    let colour = screen::colour_wanted(
        options.black_and_white,
        std::env::var_os("NO_COLOR").as_deref(),
    );
    match play(&mut state, colour)? {
        Ending::Finished => {
            let mut out = std::io::stdout().lock();
            scores::finish_game(options, state.points, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Ending::Interrupted => Ok(ExitCode::SUCCESS),
        Ending::TooSmall => {
            eprintln!("{}", screen::TOO_SMALL);
            Ok(ExitCode::from(1))
        }
        Ending::Terminated(signal) => {
            // Our handlers are gone: die of the signal as if we had never caught it.
            nix::sys::signal::raise(signal).context("re-raising the terminating signal")?;
            Ok(ExitCode::from(128 + signal as u8))
        }
    }
}

/// The real terminal: ratatui on stdout, game mode on stdin.
struct TtyFrontend<'a> {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    mode: GameMode<'a>,
}

impl Frontend for TtyFrontend<'_> {
    type Backend = CrosstermBackend<Stdout>;

    fn terminal(&mut self) -> &mut Terminal<Self::Backend> {
        &mut self.terminal
    }

    fn suspend(&mut self) -> anyhow::Result<()> {
        self.mode.leave()?;
        signals::stop_self()?;
        self.mode.resume()?;
        Ok(())
    }

    fn resume(&mut self) -> anyhow::Result<()> {
        Ok(self.mode.resume()?)
    }
}

/// Plays `state` (fresh or restored) on the process's terminal until quit, game over or a
/// signal ends it; the terminal is back in the user's mode when this returns, whatever way.
///
/// Nothing is printed: the caller prints the too-small message or the scores.
pub fn play(state: &mut GameState, colour: bool) -> anyhow::Result<Ending> {
    terminal::install_panic_hook();
    let (cols, rows) = ratatui::crossterm::terminal::size().context("reading the window size")?;
    if !screen::fits_screen(cols, rows) {
        return Ok(Ending::TooSmall);
    }
    let stdin = std::io::stdin();
    let tty = stdin.as_fd();
    let signals = Signals::install()?;
    let mode = GameMode::enter(tty)?;
    let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let mut frontend = TtyFrontend { terminal, mode };
    let mut input = TerminalInput::new(tty, &signals, state.keys);
    let ending = game_loop(
        state,
        colour,
        &mut frontend,
        &mut input,
        &SystemClock::new(),
    );
    // Restore before anything is printed, and before the signal handlers go.
    frontend.mode.leave()?;
    ending
}

/// What the loop does next after a signal.
enum After {
    Continue,
    End(Ending),
}

/// BSD's main loop: draw, wait for a key or the fall timer, apply it with
/// [`rules::step`], until the game is finished or a signal ends it.
///
/// Timing is BSD's `tgetchar`: the wait lasts what is left of the fall timer; a key
/// subtracts the time waited and never resets it; pause freezes it; each cleared row is
/// shown for two fall rates while keys typed meanwhile are discarded.
pub fn game_loop<F, S, C>(
    state: &mut GameState,
    colour: bool,
    front: &mut F,
    input: &mut S,
    clock: &C,
) -> anyhow::Result<Ending>
where
    F: Frontend,
    S: Source,
    C: Clock,
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    redraw(front, state, &View::of(state, colour))?;
    loop {
        if state.is_finished() {
            return Ok(Ending::Finished);
        }
        draw(front, state, &View::of(state, colour))?;
        let frozen = state.is_paused() || !fits(front)?;
        if !frozen {
            // BSD re-arms (and speeds up) before waiting; step would do it first anyway.
            rules::rearm_timer(state);
        }
        let timeout = (!frozen).then(|| Duration::from_micros(state.timer_left_us));
        let start = clock.now();
        let event = input.wait(timeout)?;
        let waited = clock.now().saturating_sub(start);
        if !frozen {
            let waited_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            state.timer_left_us = state.timer_left_us.saturating_sub(waited_us);
        }
        match event {
            Event::Timeout => {
                let before = *state;
                let outcome = rules::step(state, Input::Timer, Mode::Interactive);
                if outcome.cleared_rows > 0
                    && let After::End(ending) =
                        show_elide(&before, state, colour, front, input, clock)?
                {
                    return Ok(ending);
                }
            }
            Event::Key(k) => {
                let outcome = rules::step(state, Input::Key(k), Mode::Interactive);
                if outcome.redraw {
                    redraw(front, state, &View::of(state, colour))?;
                }
            }
            Event::Signal(caught) => {
                if let After::End(ending) =
                    on_signal(caught, front, state, &View::of(state, colour))?
                {
                    return Ok(ending);
                }
            }
            Event::Eof => anyhow::bail!("end of file on the terminal"),
        }
    }
}

fn fits<F: Frontend>(front: &mut F) -> anyhow::Result<bool>
where
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    let size = front.terminal().size()?;
    Ok(screen::fits_screen(size.width, size.height))
}

fn draw<F: Frontend>(front: &mut F, state: &GameState, view: &View) -> anyhow::Result<()>
where
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    front
        .terminal()
        .draw(|frame| screen::draw(frame, state, view))?;
    Ok(())
}

/// Forgets what is on the screen and draws everything (Ctrl-L, resize, continue).
fn redraw<F: Frontend>(front: &mut F, state: &GameState, view: &View) -> anyhow::Result<()>
where
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    let terminal = front.terminal();
    terminal.autoresize()?;
    terminal.clear()?;
    draw(front, state, view)
}

fn on_signal<F: Frontend>(
    caught: Caught,
    front: &mut F,
    state: &GameState,
    view: &View,
) -> anyhow::Result<After>
where
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    match caught {
        Caught::Interrupt => return Ok(After::End(Ending::Interrupted)),
        Caught::Terminate(signal) => return Ok(After::End(Ending::Terminated(signal))),
        Caught::Suspend => front.suspend()?,
        Caught::Continue => front.resume()?,
        Caught::Resize => {}
    }
    redraw(front, state, view)?;
    Ok(After::Continue)
}

/// BSD's `elide` on screen: for each full row, top to bottom, show it cleared, wait a fall
/// rate, show the rows above shifted down, wait a fall rate; keys typed meanwhile are read
/// and dropped. `before` is the state just before the lock, `after` just after.
fn show_elide<F, S, C>(
    before: &GameState,
    after: &GameState,
    colour: bool,
    front: &mut F,
    input: &mut S,
    clock: &C,
) -> anyhow::Result<After>
where
    F: Frontend,
    S: Source,
    C: Clock,
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    let mut shown = *before;
    // BSD counts the lock's point before eliding; the next piece is not dealt yet.
    shown.points = after.points;
    rules::place(&mut shown.board, before.curshape, before.pos, true);
    let view = View {
        colour,
        message: Message::Help,
        show_piece: false,
    };
    let hold = Duration::from_micros(after.fallrate_us);
    for frame in elide_frames(&shown.board) {
        shown.board = frame;
        draw(front, &shown, &view)?;
        let deadline = clock.now().saturating_add(hold);
        loop {
            let left = deadline.saturating_sub(clock.now());
            if left.is_zero() {
                break;
            }
            match input.wait(Some(left))? {
                Event::Timeout => break,
                Event::Key(_) => {}
                Event::Signal(caught) => {
                    if let After::End(ending) = on_signal(caught, front, &shown, &view)? {
                        return Ok(After::End(ending));
                    }
                }
                Event::Eof => anyhow::bail!("end of file on the terminal"),
            }
        }
    }
    Ok(After::Continue)
}

/// The boards BSD shows while eliding `board` (the lock already placed): two per full row,
/// first with the row emptied, then with everything above it shifted down and row 0 cleared.
/// The last one equals what [`rules::elide`] leaves.
pub fn elide_frames(board: &[u8; B_SIZE]) -> Vec<[u8; B_SIZE]> {
    let mut frames = Vec::new();
    let mut b = *board;
    for row in 1..=20 {
        let start = row * B_COLS + 1;
        let cells = start..start + B_COLS - 2;
        if b[cells.clone()].iter().all(|&c| c != 0) {
            b[cells].fill(0);
            frames.push(b);
            b.copy_within(1..start, 1 + B_COLS);
            b[1..B_COLS - 1].fill(0);
            frames.push(b);
        }
    }
    frames
}
