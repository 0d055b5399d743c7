//! The engine's state machine over orders of events that real games produce only by chance:
//! an axe that comes as the game finishes. The games here are scripted (every answer of
//! [`Node`] is the test's), so each order is played out every time; the real games' runs
//! (`tests/run.rs`) meet these orders only now and then.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use nix::poll::PollFlags;

use super::*;

/// What a scripted game says, set by the test; what the engine did to it, for the test.
#[derive(Default)]
struct Script {
    status: Vec<Line>,
    output: Vec<u8>,
    exit: Option<Exit>,
    killed: bool,
    input: Vec<u8>,
}

struct Game {
    name: String,
    pid: u32,
    script: Rc<RefCell<Script>>,
}

impl Node for Game {
    fn name(&self) -> &str {
        &self.name
    }
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
    fn write_input(&mut self, bytes: &[u8]) -> anyhow::Result<Written> {
        self.script.borrow_mut().input.extend_from_slice(bytes);
        Ok(Written::Took(bytes.len()))
    }
    fn close_input(&mut self) {}
    fn interrupt(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    fn read_output(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(Some(std::mem::take(&mut self.script.borrow_mut().output)))
    }
    fn read_status(&mut self) -> anyhow::Result<Vec<Line>> {
        Ok(std::mem::take(&mut self.script.borrow_mut().status))
    }
    fn exited(&mut self) -> anyhow::Result<Option<Exit>> {
        Ok(self.script.borrow().exit.clone())
    }
    /// The kill is recorded; the death is seen when the test sets the exit (a real one is
    /// seen a little later too, and in between anything else may be).
    fn kill(&mut self) -> anyhow::Result<()> {
        self.script.borrow_mut().killed = true;
        Ok(())
    }
    fn resize(&mut self, _rows: u16, _cols: u16) {}
    fn last_words(&self) -> String {
        String::new()
    }
    fn final_stats(&self) -> Option<String> {
        None
    }
    fn wait_on(&self, _writing: bool) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        Vec::new()
    }
}

/// Every game's script, in launch order.
type Scripts = Rc<RefCell<Vec<Rc<RefCell<Script>>>>>;

/// Starts scripted games; the test holds every one's script.
#[derive(Default)]
struct Launcher {
    games: Scripts,
}

impl super::Launcher for Launcher {
    type Node = Game;
    fn launch(&mut self, _role: &Role, _epoch: u64, name: &str) -> anyhow::Result<Game> {
        let script = Rc::new(RefCell::new(Script::default()));
        let mut games = self.games.borrow_mut();
        games.push(Rc::clone(&script));
        Ok(Game {
            name: name.to_owned(),
            pid: 1000 + games.len() as u32,
            script,
        })
    }
    fn resumed_at(&self, resumed: &Resumed) -> u64 {
        resumed.inputs
    }
    fn accounted(&self, stats: &Stats) -> u64 {
        stats.inputs
    }
    fn resize(&mut self, _rows: u16, _cols: u16) {}
}

fn killed_by_axe() -> Exit {
    Exit {
        success: false,
        text: "signal: 9 (SIGKILL)".to_owned(),
    }
}

fn finished() -> Exit {
    Exit {
        success: true,
        text: "exit status: 0".to_owned(),
    }
}

/// A primary (game 0) whose spare (game 1) holds a checkpoint.
fn synced_pair() -> (Engine<Launcher>, Scripts) {
    let launcher = Launcher::default();
    let games = Rc::clone(&launcher.games);
    let (mut engine, _) = Engine::start(launcher, InputPolicy::AfterSync).expect("start");
    games.borrow()[0]
        .borrow_mut()
        .status
        .push(Line::Stats(Stats {
            epoch: 1,
            sessions: 1,
            live: true,
            synced: true,
            ..Stats::default()
        }));
    let mut events = Vec::new();
    engine.service(&mut events).expect("service");
    assert!(
        events.contains(&Event::SpareSynced { pid: 1002 }),
        "{events:?}"
    );
    (engine, games)
}

#[test]
fn a_primary_axed_after_its_goodbye_ends_the_session_finished_with_its_result() {
    let (mut engine, games) = synced_pair();
    let (primary, spare) = {
        let g = games.borrow();
        (Rc::clone(&g[0]), Rc::clone(&g[1]))
    };
    // The game ends: the primary prints its result and lets its spare go; the axe falls
    // before its exit.
    let mut events = Vec::new();
    assert_eq!(engine.axe(&mut events).expect("axe"), Axe::Killed(1001));
    assert!(primary.borrow().killed);
    primary.borrow_mut().output = b"{\"game_over\":true}\n".to_vec();
    spare.borrow_mut().exit = Some(finished());
    engine.service(&mut events).expect("service");
    assert!(engine.game_over(), "the spare ended at the goodbye");
    assert!(!engine.ended());
    // Its death is seen after its spare's end.
    primary.borrow_mut().exit = Some(killed_by_axe());
    engine.service(&mut events).expect("service");
    assert_eq!(engine.end(), Some(&End::Finished), "{events:?}");
    let said: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(said, b"{\"game_over\":true}\n");
    assert_eq!(
        games.borrow().len(),
        2,
        "no spare is started for an ended game"
    );
}

#[test]
fn once_the_game_has_ended_no_axe_falls() {
    let (mut engine, games) = synced_pair();
    let spare = Rc::clone(&games.borrow()[1]);
    spare.borrow_mut().exit = Some(finished());
    let mut events = Vec::new();
    engine.service(&mut events).expect("service");
    assert!(engine.game_over());
    let err = engine
        .axe(&mut events)
        .expect_err("no axe after the game's end");
    assert!(err.to_string().contains("the game has ended"), "{err}");
    assert!(!games.borrow()[0].borrow().killed);
}

#[test]
fn a_primary_that_dies_with_its_spare_gone_unsaid_loses_the_game() {
    // The other side of the rule: a spare that died (not at a goodbye) is replaced, and a
    // primary that dies before the new one holds anything loses the game.
    let (mut engine, games) = synced_pair();
    let (primary, spare) = {
        let g = games.borrow();
        (Rc::clone(&g[0]), Rc::clone(&g[1]))
    };
    spare.borrow_mut().exit = Some(killed_by_axe());
    let mut events = Vec::new();
    engine.service(&mut events).expect("service");
    assert!(!engine.game_over());
    assert_eq!(games.borrow().len(), 3, "a new spare");
    primary.borrow_mut().exit = Some(killed_by_axe());
    engine.service(&mut events).expect("service");
    // The new spare holds nothing: the promotion waits for it, and when it ends without a
    // resumed line the game is lost.
    games.borrow()[2].borrow_mut().exit = Some(Exit {
        success: false,
        text: "exit status: 1".to_owned(),
    });
    engine.service(&mut events).expect("service");
    assert!(
        matches!(engine.end(), Some(End::Lost(_))),
        "{:?}",
        engine.end()
    );
}
