//! The interactive game: BSD Tetris's main loop on a terminal.
//!
//! [`play`] is what the worker does without `--headless` ([`crate::worker`]): it owns the
//! terminal for exactly as long as the game runs (game mode, signals, the loop, restoration)
//! and plays the state of a [`Store`], fresh or restored; [`finish`] prints the score lines
//! and table afterwards. [`game_loop`] is the loop itself, over a [`Frontend`], an input
//! [`Source`] and a [`Clock`], so tests drive it on a virtual clock without a terminal.

use std::io::{IsTerminal as _, Stdout};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::layout::Rect;

use crate::clock::{Clock, SystemClock};
pub use crate::input::Announcement;
use crate::input::{Announcing, Event, Source, TerminalInput};
use crate::options::Options;
use crate::rules::{self, Input, Mode};
use crate::scores;
use crate::screen::{self, Message, View};
use crate::signals::{self, Caught, Signals};
use crate::state::{B_COLS, B_SIZE, GameState, MAX_CLEARED};
use crate::store::Store;
use crate::terminal::{self, GameMode};

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

/// After the game: the score lines and table for a finished game, the too-small message, or
/// the terminating signal raised again (`state` is the game as it ended).
pub fn finish(options: &Options, state: &GameState, ending: Ending) -> anyhow::Result<ExitCode> {
    match ending {
        Ending::Finished => {
            let mut out = std::io::stdout().lock();
            let mut stdin = std::io::stdin();
            // BSD waits for RETURN before the table; a script on a pipe must never hang there.
            let wait: Option<&mut dyn std::io::Read> = if stdin.is_terminal() {
                Some(&mut stdin)
            } else {
                None
            };
            scores::finish_game(options, state.points, &mut out, wait)?;
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

/// Plays the game in `store` (fresh or restored) on the process's terminal until quit, game
/// over or a signal ends it; the terminal is set up here and is back in the user's mode when
/// this returns, whatever way, so a promoted spare sets up its own screen and draws it all.
///
/// Nothing is printed: the caller prints the too-small message or the scores.
///
/// `signals` are the game's handlers, installed by the caller before the game announces
/// itself (a promoted spare's resumed line), so a ^C passed on at once is the game's to act
/// on. `wanted` is hslib's checkpoint-wanted descriptor: while it is readable the loop takes a
/// checkpoint (a spare connected while the game waited for a key).
pub fn play<St: Store>(
    store: &mut St,
    colour: bool,
    signals: &Signals,
    wanted: Option<BorrowedFd<'_>>,
    announcement: Option<Announcement<'_>>,
) -> anyhow::Result<Ending> {
    terminal::install_panic_hook();
    let (cols, rows) = ratatui::crossterm::terminal::size().context("reading the window size")?;
    if !screen::fits_screen(cols, rows) {
        if let Some(say) = announcement {
            say()?;
        }
        return Ok(Ending::TooSmall);
    }
    let (keys, tty_bytes) = {
        let state = store.state()?;
        (state.keys, state.tty_bytes)
    };
    let stdin = std::io::stdin();
    let tty = stdin.as_fd();
    let mode = GameMode::enter(tty)?;
    let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let mut frontend = TtyFrontend { terminal, mode };
    // A restored game's resumed line goes out after its first frame, before its first input.
    let mut input = Announcing::new(
        TerminalInput::with_wanted(tty, signals, keys, tty_bytes, wanted),
        announcement,
    );
    let ending = game_loop(
        store,
        colour,
        &mut frontend,
        &mut input,
        &SystemClock::new(),
    )
    .and_then(|ending| input.announce().map(|()| ending));
    // Restore before anything is printed, and before the signal handlers go.
    let left = frontend.mode.leave();
    match ending? {
        // After SIGHUP the terminal is gone and restoring it fails: die of the signal anyway.
        terminated @ Ending::Terminated(_) => Ok(terminated),
        ending => {
            left?;
            Ok(ending)
        }
    }
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
///
/// The state is borrowed from `store` for each turn and committed after every change (each
/// key, each timer expiry with its lock and elided rows, the time a signal used up), before
/// anything is drawn or waited for. The timer's re-arm before a wait is not committed on its
/// own: it follows from the committed state (`timer_left_us == 0`), so a restored game
/// re-arms the same way.
///
/// The fall timer runs on across a restore (a promoted spare, `--resume`): every commit
/// dates `timer_left_us` with the wall clock ([`GameState::timer_wall_us`]), and a game
/// that starts from a dated state first takes off the time elapsed since, so it falls when
/// the game it continues would have; a lock that completed rows also records them, and a
/// game restored during their pause shows what is left of it and discards the keys typed
/// until it ends (accounting them in `tty_bytes`, so a supervisor does not replay them).
/// The wall clock is used because the two games may run on different hosts; a step of it
/// never makes a wait negative or longer than the timer or the pause it continues.
pub fn game_loop<St, F, S, C>(
    store: &mut St,
    colour: bool,
    front: &mut F,
    input: &mut S,
    clock: &C,
) -> anyhow::Result<Ending>
where
    St: Store,
    F: Frontend,
    S: Source,
    C: Clock,
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    let state = store.state()?;
    match catch_up(state, wall_us(clock)) {
        Some(into) => {
            if let After::End(ending) = show_elide(store, colour, front, input, clock, into, true)?
            {
                return Ok(ending);
            }
        }
        None => redraw(front, state, &View::of(state, colour))?,
    }
    loop {
        let state = store.state()?;
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
        let waited_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let wall = wall_us(clock);
        match event {
            // The timer stays armed (non-zero) so step does not re-arm it a second time;
            // step marks it expired.
            Event::Timeout => {
                let mut locked = state.board;
                rules::place(&mut locked, state.curshape, state.pos, true);
                let outcome = rules::step(state, Input::Timer, Mode::Interactive);
                stamp(state, wall);
                if outcome.cleared_rows > 0 {
                    record_elide(state, &locked);
                    // The next wait begins when the rows' pause ends.
                    state.timer_wall_us = wall.saturating_add(elide_pause_us(state));
                }
                store.commit()?;
                if outcome.cleared_rows > 0
                    && let After::End(ending) =
                        show_elide(store, colour, front, input, clock, Duration::ZERO, false)?
                {
                    return Ok(ending);
                }
            }
            Event::Key(k) => {
                if !frozen {
                    // BSD's rwait: a key arriving at or after expiry uses the expiry up.
                    state.timer_left_us = state.timer_left_us.saturating_sub(waited_us);
                }
                stamp(state, wall);
                if let Some(end) = input.position() {
                    state.tty_bytes = end;
                }
                // The loop's first check means the key is consumed: the state changed.
                let outcome = rules::step(state, Input::Key(k), Mode::Interactive);
                store.commit()?;
                if outcome.redraw {
                    let state = store.state()?;
                    redraw(front, state, &View::of(state, colour))?;
                }
            }
            Event::Signal(caught) => {
                if !frozen {
                    // A signal must not swallow an expiry: at least 1 µs stays to wait.
                    let left = state.timer_left_us.saturating_sub(waited_us).max(1);
                    if left != state.timer_left_us {
                        state.timer_left_us = left;
                        stamp(state, wall);
                        store.commit()?;
                    }
                }
                let state = store.state()?;
                if let After::End(ending) =
                    on_signal(caught, front, state, &View::of(state, colour))?
                {
                    return Ok(ending);
                }
            }
            Event::CheckpointWanted => {
                if !frozen {
                    // As for a signal: the time waited is used up, the expiry kept.
                    state.timer_left_us = state.timer_left_us.saturating_sub(waited_us).max(1);
                }
                stamp(state, wall);
                store.commit()?;
            }
            Event::Eof => anyhow::bail!("end of file on the terminal"),
        }
    }
}

/// The wall clock in microseconds since the Unix epoch, as [`GameState::timer_wall_us`]
/// holds it.
fn wall_us<C: Clock>(clock: &C) -> u64 {
    u64::try_from(clock.wall().as_micros()).unwrap_or(u64::MAX)
}

/// Dates the fall timer: `timer_left_us` runs from `wall`. Any pause of completed rows is
/// over by now, so its record goes.
fn stamp(state: &mut GameState, wall: u64) {
    state.timer_wall_us = wall;
    state.elide_rows = [0; MAX_CLEARED];
    state.elide_cells = [[0; B_COLS - 2]; MAX_CLEARED];
}

/// How long the pause of the rows the last lock completed lasts: two fall rates a row.
fn elide_pause_us(state: &GameState) -> u64 {
    let rows = u64::try_from(state.elided()).unwrap_or(u64::MAX);
    state.fallrate_us.saturating_mul(rows.saturating_mul(2))
}

/// A game starting from a committed state (a promoted spare, a resumed log; nothing happens
/// to a fresh one, whose timer is undated) catches up with the time that passed since its
/// commit at wall-clock time `wall`. During a pause of completed rows: returns how far into
/// the pause it is, and the timer waits for its end. Otherwise the timer is re-armed if its
/// commit left it expired (as the game that committed it did at once) and loses the time
/// elapsed, keeping at least 1 µs so the expiry still happens; a paused game's timer stands
/// still. A wall clock stepped back counts as no time elapsed, so the wait is never longer
/// than the timer or the pause.
fn catch_up(state: &mut GameState, wall: u64) -> Option<Duration> {
    if state.timer_wall_us == 0 || state.is_finished() {
        return None;
    }
    if state.elided() > 0 && wall < state.timer_wall_us {
        let pause = elide_pause_us(state);
        let left = (state.timer_wall_us - wall).min(pause);
        return Some(Duration::from_micros(pause - left));
    }
    // Paused, the timer stands still: the state is left exactly as committed.
    if !state.is_paused() {
        rules::rearm_timer(state);
        let elapsed = wall.saturating_sub(state.timer_wall_us);
        state.timer_left_us = state.timer_left_us.saturating_sub(elapsed).max(1);
        stamp(state, wall);
    }
    None
}

/// Records in `state`, just after a lock, the rows complete on `locked` (the board with the
/// piece placed, before the rows were removed), so that [`locked_board`] can give it back.
/// More rows than a piece can complete (a board made up by hand) are not recorded.
fn record_elide(state: &mut GameState, locked: &[u8; B_SIZE]) {
    state.elide_rows = [0; MAX_CLEARED];
    state.elide_cells = [[0; B_COLS - 2]; MAX_CLEARED];
    let full: Vec<usize> = (1..=20)
        .filter(|row| {
            let start = row * B_COLS + 1;
            locked[start..start + B_COLS - 2].iter().all(|&c| c != 0)
        })
        .collect();
    if full.len() > MAX_CLEARED {
        return;
    }
    for (i, &row) in full.iter().enumerate() {
        let start = row * B_COLS + 1;
        // Rows are 1..=20: they fit a byte.
        state.elide_rows[i] = u8::try_from(row).unwrap_or(0);
        state.elide_cells[i].copy_from_slice(&locked[start..start + B_COLS - 2]);
    }
}

/// The board the last lock left before its completed rows were removed: rows 0..=20 of
/// `state.board` are the rows that were kept, in order, under one empty row per removed
/// one (BSD's elide shifts everything above a removed row down); the removed rows go back
/// in between from [`GameState::elide_cells`]. `None` when the record does not describe
/// rows in order (only a corrupt state).
fn locked_board(state: &GameState) -> Option<[u8; B_SIZE]> {
    let rows = &state.elide_rows[..state.elided()];
    if rows.windows(2).any(|w| w[0] >= w[1]) || rows.iter().any(|&r| r > 20) {
        return None;
    }
    let mut board = state.board;
    let mut kept = rows.len();
    let mut removed = 0;
    for row in 0..=20 {
        let at = row * B_COLS;
        if rows.get(removed).is_some_and(|&r| usize::from(r) == row) {
            board[at + 1..at + B_COLS - 1].copy_from_slice(&state.elide_cells[removed]);
            removed += 1;
        } else {
            let from = kept * B_COLS;
            board[at..at + B_COLS].copy_from_slice(&state.board[from..from + B_COLS]);
            kept += 1;
        }
    }
    Some(board)
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
    // Not Terminal::clear: it asks the terminal for the cursor position (ESC[6n) and lets
    // crossterm read the answer from stdin, where it can swallow the player's keys.
    // resize clears the screen and forgets the previous frame without asking anything.
    let size = terminal.size()?;
    terminal.resize(Rect::new(0, 0, size.width, size.height))?;
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
/// and dropped (and committed as accounted for, so a supervisor never replays them to a
/// restored game as real moves). The state in `store` is the lock's, rows already removed
/// and recorded ([`record_elide`]); `into` is how much of the pause has passed (by a game
/// restored during it; the frames already over are skipped), `whole` asks for the first
/// frame drawn on a cleared screen.
fn show_elide<St, F, S, C>(
    store: &mut St,
    colour: bool,
    front: &mut F,
    input: &mut S,
    clock: &C,
    into: Duration,
    whole: bool,
) -> anyhow::Result<After>
where
    St: Store,
    F: Frontend,
    S: Source,
    C: Clock,
    <F::Backend as Backend>::Error: Send + Sync + 'static,
{
    let mut shown = *store.state()?;
    let Some(locked) = locked_board(&shown) else {
        if whole {
            redraw(front, &shown, &View::of(&shown, colour))?;
        }
        return Ok(After::Continue);
    };
    // BSD counts the lock's point before eliding; the next piece is not dealt yet.
    shown.board = locked;
    shown.nextshape = shown.curshape;
    shown.game_over = 0;
    let view = View {
        colour,
        message: Message::Help,
        show_piece: false,
    };
    let hold = Duration::from_micros(shown.fallrate_us);
    let began = clock.now();
    let mut first = true;
    for (n, frame) in (1u32..).zip(elide_frames(&locked)) {
        // Each frame ends a whole number of holds after the pause began.
        let ends = hold.saturating_mul(n);
        if ends <= into {
            continue;
        }
        shown.board = frame;
        if first && whole {
            redraw(front, &shown, &view)?;
        } else {
            draw(front, &shown, &view)?;
        }
        first = false;
        let deadline = began.saturating_add(ends - into);
        loop {
            let left = deadline.saturating_sub(clock.now());
            if left.is_zero() {
                break;
            }
            match input.wait(Some(left))? {
                Event::Timeout => break,
                Event::Key(_) => {
                    if let Some(end) = input.position() {
                        store.state()?.tty_bytes = end;
                        store.commit()?;
                    }
                }
                Event::Signal(caught) => {
                    if let After::End(ending) = on_signal(caught, front, &shown, &view)? {
                        return Ok(After::End(ending));
                    }
                }
                // The state is the lock's, already committed: that checkpoint again.
                Event::CheckpointWanted => store.commit()?,
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use ratatui::backend::TestBackend;

    use super::*;
    use crate::clock::{MANUAL_WALL_START, ManualClock};
    use crate::input::InputError;
    use crate::state::{DEFAULT_KEYS, SPAWN_POS};

    /// Level 1's fall rate after the first re-arm: 1_000_000 - 1_000_000 / 3000.
    const FIRST_ARM_US: u64 = 999_667;

    /// Events at fixed virtual times; records every timeout it was asked to wait.
    struct Scripted {
        clock: ManualClock,
        events: VecDeque<(Duration, Event)>,
        waits: Vec<Option<Duration>>,
        /// Set when Ctrl-L is delivered, so the frontend scribbles on the screen just then.
        scribble_on_ctrl_l: Option<Rc<Cell<bool>>>,
        /// When set, the stream position: each key counts as two bytes.
        position: Option<u64>,
    }

    impl Scripted {
        fn new(clock: &ManualClock, events: &[(u64, Event)]) -> Self {
            Self {
                clock: clock.clone(),
                events: events
                    .iter()
                    .map(|&(us, e)| (Duration::from_micros(us), e))
                    .collect(),
                waits: Vec::new(),
                scribble_on_ctrl_l: None,
                position: None,
            }
        }

        fn waits_us(&self) -> Vec<Option<u64>> {
            self.waits
                .iter()
                .map(|w| w.map(|d| u64::try_from(d.as_micros()).unwrap()))
                .collect()
        }
    }

    impl Source for Scripted {
        fn position(&self) -> Option<u64> {
            self.position
        }

        fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, InputError> {
            self.waits.push(timeout);
            let now = self.clock.now();
            match self.events.front() {
                Some(&(at, event)) if timeout.is_none_or(|t| at <= now + t) => {
                    self.events.pop_front();
                    self.clock.advance_to(at);
                    if let (Event::Key(_), Some(p)) = (event, &mut self.position) {
                        *p += 2;
                    }
                    if let (Event::Key(rules::CTRL_L), Some(flag)) =
                        (event, &self.scribble_on_ctrl_l)
                    {
                        flag.set(true);
                    }
                    Ok(event)
                }
                _ => match timeout {
                    Some(t) => {
                        self.clock.advance(t);
                        Ok(Event::Timeout)
                    }
                    // The script ran out while the game waits for ever: end it loudly.
                    None => Ok(Event::Eof),
                },
            }
        }
    }

    struct TestFrontend {
        terminal: Terminal<TestBackend>,
        suspends: usize,
        resumes: usize,
        scribble: Option<Rc<Cell<bool>>>,
    }

    impl TestFrontend {
        fn new() -> Self {
            Self {
                terminal: Terminal::new(TestBackend::new(80, 24)).unwrap(),
                suspends: 0,
                resumes: 0,
                scribble: None,
            }
        }

        fn row(&self, y: u16) -> String {
            let buf = self.terminal.backend().buffer();
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect::<String>()
                .trim_end()
                .to_owned()
        }
    }

    impl Frontend for TestFrontend {
        type Backend = TestBackend;
        fn terminal(&mut self) -> &mut Terminal<TestBackend> {
            if self.scribble.as_ref().is_some_and(|f| f.replace(false)) {
                let x = ratatui::buffer::Cell::new("X");
                self.terminal
                    .backend_mut()
                    .draw(std::iter::once((0, 0, &x)))
                    .unwrap();
            }
            &mut self.terminal
        }
        fn suspend(&mut self) -> anyhow::Result<()> {
            self.suspends += 1;
            Ok(())
        }
        fn resume(&mut self) -> anyhow::Result<()> {
            self.resumes += 1;
            Ok(())
        }
    }

    fn key(k: u8) -> Event {
        Event::Key(k)
    }

    fn play_script(
        state: &mut GameState,
        events: &[(u64, Event)],
    ) -> (anyhow::Result<Ending>, Scripted, TestFrontend) {
        let clock = ManualClock::new();
        let mut input = Scripted::new(&clock, events);
        let mut front = TestFrontend::new();
        let ending = game_loop(state, true, &mut front, &mut input, &clock);
        (ending, input, front)
    }

    fn level1() -> GameState {
        rules::new_game(42, 1, DEFAULT_KEYS, false)
    }

    #[test]
    fn keys_never_reset_the_fall_timer_they_use_up_the_time_waited() {
        let mut state = level1();
        let (ending, input, _) =
            play_script(&mut state, &[(400_000, key(b'j')), (500_000, key(b'q'))]);
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(
            input.waits_us(),
            [Some(FIRST_ARM_US), Some(FIRST_ARM_US - 400_000)]
        );
        assert_eq!(state.timer_left_us, FIRST_ARM_US - 500_000);
    }

    #[test]
    fn timer_expiry_drops_the_piece_a_row_and_the_rate_speeds_up_on_re_arm() {
        let mut state = level1();
        let (ending, input, _) = play_script(&mut state, &[(1_500_000, key(b'q'))]);
        assert_eq!(ending.unwrap(), Ending::Finished);
        let second = FIRST_ARM_US - FIRST_ARM_US / 3000;
        assert_eq!(input.waits_us(), [Some(FIRST_ARM_US), Some(second)]);
        assert_eq!(state.pos, SPAWN_POS + B_COLS as i32);
        assert_eq!(state.fallrate_us, second);
    }

    #[test]
    fn pause_freezes_the_timer_and_the_resuming_key_is_a_command() {
        let mut state = level1();
        let (ending, input, front) =
            play_script(&mut state, &[(300_000, key(b'p')), (10_000_000, key(b'q'))]);
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert!(state.has_quit());
        // While paused the loop waits without a timeout, and the time paused is not counted.
        assert_eq!(input.waits_us(), [Some(FIRST_ARM_US), None]);
        assert_eq!(state.timer_left_us, FIRST_ARM_US - 300_000);
        assert_eq!(
            front.row(22),
            format!("{}{}", " ".repeat(22), screen::PAUSED)
        );
    }

    /// Row 20 full but for columns 4-7, and a horizontal I (shape 6: ML, centre, MR, +2)
    /// resting in that gap: the next timer expiry locks it and clears the row.
    fn one_row_to_clear() -> GameState {
        let mut state = level1();
        for col in [1, 2, 3, 8, 9, 10] {
            state.board[20 * B_COLS + col] = 3;
        }
        state.board[19 * B_COLS + 1] = 2;
        state.curshape = 6;
        state.pos = (20 * B_COLS + 5) as i32;
        state
    }

    #[test]
    fn a_cleared_row_is_held_two_fall_rates_and_keys_meanwhile_are_dropped() {
        let mut state = one_row_to_clear();
        let expected_after = {
            let mut s = state;
            rules::step(&mut s, Input::Timer, Mode::Interactive);
            s
        };
        let (ending, input, _) = play_script(
            &mut state,
            &[(1_200_000, key(b'j')), (3_500_000, key(b'q'))],
        );
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(
            input.waits_us(),
            [
                Some(FIRST_ARM_US),                              // the fall timer: lock, 1 row
                Some(FIRST_ARM_US),                              // row shown empty
                Some(FIRST_ARM_US - (1_200_000 - FIRST_ARM_US)), // 'j' dropped, wait on
                Some(FIRST_ARM_US),                              // rows shifted down
                Some(FIRST_ARM_US - FIRST_ARM_US / 3000),        // the game again
            ]
        );
        // The 'j' never reached the rules: the new piece is where it spawned.
        assert_eq!(state.pos, expected_after.pos);
        assert_eq!(state.board, expected_after.board);
        assert_eq!(state.inputs, 2, "the timer and the q");
    }

    #[test]
    fn elide_frames_show_the_row_emptied_then_shifted_ending_as_the_rules_do() {
        let mut state = one_row_to_clear();
        rules::place(&mut state.board, state.curshape, state.pos, true);
        let frames = elide_frames(&state.board);
        assert_eq!(frames.len(), 2);
        let row20 = 20 * B_COLS + 1..20 * B_COLS + 11;
        assert!(frames[0][row20.clone()].iter().all(|&c| c == 0));
        assert_eq!(frames[0][19 * B_COLS + 1], 2, "rows above not moved yet");
        assert_eq!(frames[1][20 * B_COLS + 1], 2, "rows above moved down");
        let mut by_rules = state.board;
        assert_eq!(rules::elide(&mut by_rules), 1);
        assert_eq!(frames[1], by_rules);
    }

    #[test]
    fn sigint_ends_the_game_as_interrupted() {
        let mut state = level1();
        let (ending, _, _) = play_script(&mut state, &[(100, Event::Signal(Caught::Interrupt))]);
        assert_eq!(ending.unwrap(), Ending::Interrupted);
        assert!(!state.is_finished());
    }

    #[test]
    fn suspend_stops_via_the_frontend_and_keeps_the_timer() {
        let mut state = level1();
        let (ending, input, front) = play_script(
            &mut state,
            &[
                (200_000, Event::Signal(Caught::Suspend)),
                (300_000, Event::Signal(Caught::Continue)),
                (400_000, key(b'q')),
            ],
        );
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!((front.suspends, front.resumes), (1, 1));
        assert_eq!(
            input.waits_us(),
            [
                Some(FIRST_ARM_US),
                Some(FIRST_ARM_US - 200_000),
                Some(FIRST_ARM_US - 300_000)
            ]
        );
    }

    #[test]
    fn ctrl_l_redraws_a_screen_that_was_scribbled_on() {
        let mut state = level1();
        let clock = ManualClock::new();
        let mut input = Scripted::new(&clock, &[(100, key(rules::CTRL_L)), (200, key(b'q'))]);
        input.scribble_on_ctrl_l = Some(Rc::new(Cell::new(false)));
        let mut front = TestFrontend::new();
        front.scribble = input.scribble_on_ctrl_l.clone();
        let ending = game_loop(&mut state, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        // Without a full redraw ratatui's diff would leave the scribbled X in place.
        assert!(front.row(0).starts_with("Score: 0 "), "{}", front.row(0));
    }

    #[test]
    fn every_change_is_committed_and_nothing_else() {
        use crate::store::Recording;
        let mut store = Recording::new(level1());
        let clock = ManualClock::new();
        let events = [
            (100_000, key(b'j')),                     // move
            (200_000, key(b'k')),                     // rotate
            (300_000, key(b'l')),                     // move
            (400_000, key(b'n')),                     // down
            (600_000, Event::Signal(Caught::Resize)), // the timer used up so far
            (1_500_000, key(b'p')),                   // after a gravity step: pause
            (9_000_000, key(b'j')),                   // resume and move
            (9_100_000, key(b' ')),                   // drop
            (9_200_000, key(b'q')),                   // quit
        ];
        let mut input = Scripted::new(&clock, &events);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        let c = &store.commits;
        // Eight keys, one timer expiry, one signal that used up time.
        assert_eq!(c.len(), 10, "{c:#?}");
        let inputs: Vec<u64> = c.iter().map(|s| s.inputs).collect();
        assert_eq!(inputs, [1, 2, 3, 4, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            c[4].timer_left_us,
            FIRST_ARM_US - 600_000,
            "the signal's commit"
        );
        assert_eq!(c[5].pos, c[4].pos + B_COLS as i32, "the gravity step");
        assert!(c[6].is_paused());
        assert!(!c[7].is_paused());
        assert_eq!(
            c[7].timer_left_us, c[6].timer_left_us,
            "paused time not counted"
        );
        assert!(c[9].has_quit());
        assert_eq!(c.last(), Some(&store.state), "the end state is committed");
    }

    #[test]
    fn a_checkpoint_wanted_is_committed_with_the_time_waited_and_nothing_else() {
        use crate::store::Recording;
        let mut store = Recording::new(level1());
        let clock = ManualClock::new();
        let events = [(300_000, Event::CheckpointWanted), (400_000, key(b'q'))];
        let mut input = Scripted::new(&clock, &events);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        let c = &store.commits;
        assert_eq!(c.len(), 2, "{c:#?}");
        assert_eq!((c[0].inputs, c[0].pos), (0, level1().pos));
        assert_eq!(c[0].timer_left_us, FIRST_ARM_US - 300_000);
        assert_eq!(
            input.waits_us(),
            [Some(FIRST_ARM_US), Some(FIRST_ARM_US - 300_000)]
        );
    }

    #[test]
    fn the_stream_position_of_every_key_is_committed_dropped_keys_included() {
        use crate::store::Recording;
        let mut start = one_row_to_clear();
        start.tty_bytes = 10;
        let mut store = Recording::new(start);
        let clock = ManualClock::new();
        // The timer locks the piece and clears a row; the j typed while the row is shown is
        // dropped; the q quits.
        let mut input = Scripted::new(&clock, &[(1_200_000, key(b'j')), (3_500_000, key(b'q'))]);
        input.position = Some(10);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        let seen: Vec<(u64, u64)> = store
            .commits
            .iter()
            .map(|s| (s.inputs, s.tty_bytes))
            .collect();
        // The lock (no key), the dropped j (accounted for, not an input), the q.
        assert_eq!(seen, [(1, 10), (1, 12), (2, 14)]);
    }

    #[test]
    fn a_lock_is_committed_with_its_rows_elided_before_the_animation() {
        use crate::store::Recording;
        let mut store = Recording::new(one_row_to_clear());
        let expected = {
            let mut s = store.state;
            rules::step(&mut s, Input::Timer, Mode::Interactive);
            // The completed row 20 as it was: three blocks, the I (base shape 6), three more.
            s.elide_rows = [20, 0, 0, 0];
            s.elide_cells[0] = [3, 3, 3, 7, 7, 7, 7, 3, 3, 3];
            // The next wait begins when the row's pause of two fall rates ends.
            s.timer_wall_us = wall_at(FIRST_ARM_US + 2 * FIRST_ARM_US);
            s
        };
        let clock = ManualClock::new();
        let mut input = Scripted::new(&clock, &[(3_500_000, key(b'q'))]);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(store.commits.len(), 2);
        assert_eq!(store.commits[0], expected);
        assert_eq!(store.commits[1].elide_rows, [0; 4], "the pause is over");
    }

    /// [`ManualClock::new`]'s wall clock `us` microseconds in.
    fn wall_at(us: u64) -> u64 {
        u64::try_from(MANUAL_WALL_START.as_micros()).unwrap() + us
    }

    /// Level 1's fall rate after the second re-arm.
    const SECOND_ARM_US: u64 = FIRST_ARM_US - FIRST_ARM_US / 3000;

    /// A primary playing `start` from time 0 on its own virtual clock, SIGKILLed at `axe_us`
    /// (its input ends there, with nothing more committed): its last commit, which is what
    /// the spare restores, and its screen at the kill.
    fn axed_primary(
        start: GameState,
        events: &[(u64, Event)],
        axe_us: u64,
    ) -> (GameState, TestFrontend) {
        let mut store = crate::store::Recording::new(start);
        let clock = ManualClock::new();
        let mut script = events.to_vec();
        script.push((axe_us, Event::Eof));
        let mut input = Scripted::new(&clock, &script);
        input.position = Some(start.tty_bytes);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        assert!(ending.is_err(), "the primary ran to the axe");
        assert_eq!(clock.now(), Duration::from_micros(axe_us));
        (*store.commits.last().unwrap(), front)
    }

    /// The spare promoted with `restored`, starting at wall-clock time `wall_us` (the
    /// primary's clock) on a virtual clock of its own; the harness replays keys at once.
    fn promoted_spare(
        restored: GameState,
        wall_us: u64,
        events: &[(u64, Event)],
    ) -> (
        anyhow::Result<Ending>,
        crate::store::Recording,
        Scripted,
        TestFrontend,
    ) {
        let mut store = crate::store::Recording::new(restored);
        let clock = ManualClock::with_wall(Duration::from_micros(wall_us));
        let mut input = Scripted::new(&clock, events);
        input.position = Some(restored.tty_bytes);
        let mut front = TestFrontend::new();
        let ending = game_loop(&mut store, true, &mut front, &mut input, &clock);
        (ending, store, input, front)
    }

    #[test]
    fn a_game_restored_0_3_s_after_a_fall_falls_0_7_s_later_not_1_s() {
        let axe = FIRST_ARM_US + 300_000;
        let (restored, _) = axed_primary(level1(), &[], axe);
        assert_eq!(
            restored.pos,
            SPAWN_POS + B_COLS as i32,
            "one fall committed"
        );
        let (ending, store, input, _) =
            promoted_spare(restored, wall_at(axe), &[(1_000_000, key(b'q'))]);
        assert_eq!(ending.unwrap(), Ending::Finished);
        let third = SECOND_ARM_US - SECOND_ARM_US / 3000;
        assert_eq!(
            input.waits_us(),
            [Some(SECOND_ARM_US - 300_000), Some(third)],
            "the second fall comes when the primary's would have"
        );
        assert_eq!(store.state.pos, SPAWN_POS + 2 * B_COLS as i32);
    }

    #[test]
    fn the_failover_time_counts_against_the_restored_timer() {
        let axe = 400_000;
        let (restored, _) = axed_primary(level1(), &[(100_000, key(b'j'))], axe);
        // The spare takes over 5 ms after the axe: 405 ms of the first fall rate are gone.
        let (ending, _, input, _) =
            promoted_spare(restored, wall_at(axe + 5_000), &[(100_000, key(b'q'))]);
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(input.waits_us()[0], Some(FIRST_ARM_US - 405_000));
    }

    #[test]
    fn a_wall_clock_step_never_makes_a_restored_wait_negative_or_longer_than_the_timer() {
        let axe = FIRST_ARM_US + 300_000;
        let (restored, _) = axed_primary(level1(), &[], axe);
        let hour = 3_600_000_000;
        // The spare's clock an hour behind: no time counts as elapsed, the whole rate waits.
        let (_, _, input, _) = promoted_spare(restored, wall_at(axe) - hour, &[(10, Event::Eof)]);
        assert_eq!(input.waits_us()[0], Some(SECOND_ARM_US));
        // An hour ahead (or a log resumed an hour later): the fall is due at once.
        let (_, store, input, _) =
            promoted_spare(restored, wall_at(axe) + hour, &[(10, Event::Eof)]);
        assert_eq!(input.waits_us()[0], Some(1));
        assert_eq!(store.state.pos, SPAWN_POS + 2 * B_COLS as i32);
    }

    #[test]
    fn a_game_restored_while_paused_keeps_its_timer_frozen() {
        let axe = 5_000_000;
        let (restored, _) = axed_primary(level1(), &[(300_000, key(b'p'))], axe);
        let (ending, _, input, _) = promoted_spare(
            restored,
            wall_at(axe),
            &[(1_000_000, key(b'j')), (1_100_000, key(b'q'))],
        );
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(
            input.waits_us(),
            [None, Some(FIRST_ARM_US - 300_000)],
            "neither the pause nor the failover counted"
        );
    }

    /// The row-clearing primary of [`one_row_to_clear`], axed 1.3 s into its pause of two
    /// fall rates (0.3 s into the second frame), a `j` typed 0.2 s into the pause dropped
    /// and committed: what the spare restores and what the primary showed.
    fn axed_in_the_line_clear_pause() -> (GameState, TestFrontend, u64) {
        let mut start = one_row_to_clear();
        start.tty_bytes = 10;
        let axe = FIRST_ARM_US + 1_300_000;
        let (restored, front) = axed_primary(start, &[(FIRST_ARM_US + 200_000, key(b'j'))], axe);
        assert_eq!((restored.inputs, restored.tty_bytes), (1, 12));
        (restored, front, axe)
    }

    #[test]
    fn a_game_restored_in_the_line_clear_pause_shows_the_rest_of_it_and_drops_keys() {
        let (restored, primary, axe) = axed_in_the_line_clear_pause();
        // Keys typed after the primary's last commit are replayed at once; one more comes.
        let (ending, store, input, spare) = promoted_spare(
            restored,
            wall_at(axe),
            &[(0, key(b'j')), (100_000, key(b'l')), (300_000, Event::Eof)],
        );
        assert!(ending.is_err());
        let rest = 2 * FIRST_ARM_US - 1_300_000;
        assert_eq!(
            input.waits_us(),
            [Some(rest), Some(rest), Some(rest - 100_000)],
            "the pause holds for what is left of it"
        );
        assert_eq!(
            spare.terminal.backend().buffer(),
            primary.terminal.backend().buffer(),
            "the spare shows the frame the primary showed"
        );
        let seen: Vec<(u64, u64, i32)> = store
            .commits
            .iter()
            .map(|s| (s.inputs, s.tty_bytes, s.pos))
            .collect();
        assert_eq!(
            seen,
            [(1, 14, SPAWN_POS), (1, 16, SPAWN_POS)],
            "keys accounted for, not played"
        );
    }

    #[test]
    fn after_a_restored_line_clear_pause_the_timer_is_re_armed_and_keys_play() {
        let (restored, _, axe) = axed_in_the_line_clear_pause();
        let rest = 2 * FIRST_ARM_US - 1_300_000;
        let (ending, store, input, _) = promoted_spare(
            restored,
            wall_at(axe),
            &[(rest + 100_000, key(b'j')), (rest + 200_000, key(b'q'))],
        );
        assert_eq!(ending.unwrap(), Ending::Finished);
        assert_eq!(
            input.waits_us(),
            [
                Some(rest),
                Some(SECOND_ARM_US),
                Some(SECOND_ARM_US - 100_000)
            ]
        );
        assert_eq!(store.state.pos, SPAWN_POS - 1, "the j moved the new piece");
    }

    #[test]
    fn a_wall_clock_stepped_back_never_makes_a_restored_pause_longer() {
        let (restored, _, axe) = axed_in_the_line_clear_pause();
        let (_, _, input, _) =
            promoted_spare(restored, wall_at(axe) - 3_600_000_000, &[(10, Event::Eof)]);
        assert_eq!(
            input.waits_us()[0],
            Some(FIRST_ARM_US),
            "the first frame, whole"
        );
    }

    #[test]
    fn the_recorded_rows_give_back_the_board_before_they_were_removed() {
        let mut locked = rules::empty_board();
        // Rows 17, 18 and 20 complete, in colours; rows 0 (hidden) and 19 partly filled.
        for (row, colour) in [(17, 1), (18, 4), (20, 6)] {
            for col in 1..B_COLS - 1 {
                locked[row * B_COLS + col] = colour + (col % 3) as u8;
            }
        }
        locked[5] = 2;
        locked[19 * B_COLS + 3] = 5;
        locked[16 * B_COLS + 10] = 7;
        let mut state = level1();
        record_elide(&mut state, &locked);
        assert_eq!(state.elide_rows, [17, 18, 20, 0]);
        state.board = locked;
        assert_eq!(rules::elide(&mut state.board), 3);
        assert_eq!(locked_board(&state), Some(locked));
        assert_eq!(elide_frames(&locked).last(), Some(&state.board));
    }

    #[test]
    fn end_of_file_on_the_terminal_is_an_error() {
        let mut state = level1();
        let (ending, _, _) = play_script(&mut state, &[(100, Event::Eof)]);
        assert!(ending.unwrap_err().to_string().contains("end of file"));
    }

    /// A frontend that logs each frame it is asked to draw.
    struct Logged<'a> {
        inner: TestFrontend,
        log: &'a std::cell::RefCell<Vec<&'static str>>,
    }

    impl Frontend for Logged<'_> {
        type Backend = TestBackend;
        fn terminal(&mut self) -> &mut Terminal<TestBackend> {
            self.log.borrow_mut().push("frame");
            self.inner.terminal()
        }
        fn suspend(&mut self) -> anyhow::Result<()> {
            self.inner.suspend()
        }
        fn resume(&mut self) -> anyhow::Result<()> {
            self.inner.resume()
        }
    }

    /// A source that logs each wait.
    struct LoggedSource<'a> {
        inner: Scripted,
        log: &'a std::cell::RefCell<Vec<&'static str>>,
    }

    impl Source for LoggedSource<'_> {
        fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, InputError> {
            self.log.borrow_mut().push("wait");
            self.inner.wait(timeout)
        }
    }

    #[test]
    fn an_announcement_is_made_once_after_the_first_frame_and_before_the_first_input() {
        let log = std::cell::RefCell::new(Vec::new());
        let mut state = level1();
        let clock = ManualClock::new();
        let mut input = Announcing::new(
            LoggedSource {
                inner: Scripted::new(&clock, &[(1000, key(b'j')), (2000, key(b'q'))]),
                log: &log,
            },
            Some(Box::new(|| {
                log.borrow_mut().push("announced");
                Ok(())
            })),
        );
        let mut front = Logged {
            inner: TestFrontend::new(),
            log: &log,
        };
        let ending = game_loop(&mut state, true, &mut front, &mut input, &clock);
        assert_eq!(ending.unwrap(), Ending::Finished);
        input.announce().unwrap();
        drop((input, front));
        let log = log.into_inner();
        let at = log
            .iter()
            .position(|e| *e == "announced")
            .expect("announced");
        assert_eq!(
            log.iter().filter(|e| **e == "announced").count(),
            1,
            "{log:?}"
        );
        assert!(log[..at].contains(&"frame"), "after a frame: {log:?}");
        assert!(!log[..at].contains(&"wait"), "before any wait: {log:?}");
    }

    #[test]
    fn a_game_that_never_waits_still_announces_when_asked() {
        let said = Cell::new(0);
        let clock = ManualClock::new();
        let mut input = Announcing::new(
            Scripted::new(&clock, &[]),
            Some(Box::new(|| {
                said.set(said.get() + 1);
                Ok(())
            })),
        );
        input.announce().unwrap();
        input.announce().unwrap();
        assert_eq!(said.get(), 1);
    }
}
