//! A game whose primary is SIGKILLed every half second (`play --chaos 0.5`) falls at the
//! rate of the same game left alone: each promoted spare takes off the fall timer the time
//! that passed since its primary's last checkpoint, instead of waiting a whole fall rate
//! again (which at level 3 makes every axe cost a third of a second, and at level 1 keeps
//! the piece from ever falling).
//!
//! Both games run at once on pseudo-terminals, the same seed and level, and nobody types:
//! every input a game consumes is a timer expiry (a row fallen, or a lock). The falls are
//! counted from the game's own state, read from the primary's memory (the state lies at the
//! same address in every game process), and each game is timed from the moment its count
//! passes [`FROM`] to the moment it passes [`FROM`] + [`FALLS`]: the same stretch of the same
//! game, so the speed-up of the fall rate is the same in both.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{harness, output};
use hotspare_tests::Session;
use tempfile::TempDir;

const ROWS: u16 = 25;
const COLS: u16 = 80;
/// A fall every third of a second: short of the half second between axes, so a timer
/// restarted by each failover loses about a third of the falls.
const LEVEL: &str = "3";
const CHAOS_SECS: &str = "0.5";
/// Where the timing starts: the games are drawn and their timers running.
const FROM: u64 = 2;
/// Timer expiries timed: about 8 s at level 3, long enough for 10% to be 2.4 falls.
const FALLS: u64 = 24;
/// The bound on the whole test, far above the ~10 s it takes.
const DEADLINE: Duration = Duration::from_secs(90);

/// One `failover-harness play` session with its own runtime directory, and where its fall
/// count stands.
struct Game {
    session: Session,
    _tmp: TempDir,
    runtime: PathBuf,
    pid: Option<u32>,
    inputs: u64,
    from: Option<Instant>,
    took: Option<Duration>,
}

impl Game {
    fn start(chaos: bool) -> Self {
        let tmp = TempDir::new().expect("tempdir");
        let runtime = tmp.path().join("rt");
        std::fs::create_dir(&runtime).expect("mkdir");
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let mut cmd = harness();
        cmd.args(["play", "--seed", "7", "-l", LEVEL, "--scores-file"])
            .arg(tmp.path().join("scores"))
            .env("HOTSPARE_HARNESS_DIR", &runtime)
            .env("TERM", "xterm-256color")
            .env_remove("TETRIS_SCORES");
        if chaos {
            cmd.args(["--chaos", CHAOS_SECS]);
        }
        let session = Session::spawn(cmd, ROWS, COLS).expect("the harness starts on a pty");
        Self {
            session,
            _tmp: tmp,
            runtime,
            pid: None,
            inputs: 0,
            from: None,
            took: None,
        }
    }

    /// `failover-harness status --json` of this session, `None` before it answers.
    fn status(&self) -> Option<serde_json::Value> {
        let mut cmd = harness();
        cmd.args(["status", "--json"])
            .env("HOTSPARE_HARNESS_DIR", &self.runtime);
        let out = output(cmd);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn field(&self, name: &str) -> Option<u64> {
        self.status()?.get(name)?.as_u64()
    }

    /// Drains the game's screen output (a game blocked on a full terminal stops falling),
    /// reads its fall count and notes the times it passes [`FROM`] and [`FROM`] + [`FALLS`].
    fn poll(&mut self) {
        let _ = self.session.pump(Duration::from_millis(2));
        let state = match self.pid.and_then(game_in) {
            Some(state) => state,
            None => {
                // Not known yet, or axed: ask the harness who the primary is now.
                self.pid = self
                    .field("primary_pid")
                    .and_then(|p| u32::try_from(p).ok());
                match self.pid.and_then(game_in) {
                    Some(state) => state,
                    None => return,
                }
            }
        };
        self.inputs = self.inputs.max(state.inputs);
        let now = Instant::now();
        if self.from.is_none() && self.inputs >= FROM {
            self.from = Some(now);
        }
        if let Some(from) = self.from
            && self.took.is_none()
            && self.inputs >= FROM + FALLS
        {
            self.took = Some(now - from);
        }
    }

    fn rate(&self) -> Option<f64> {
        self.took.map(|t| FALLS as f64 / t.as_secs_f64())
    }

    fn quit(mut self) {
        self.session.send(b"q").expect("typing on the terminal");
        self.session
            .wait_for("the scores prompt", DEADLINE, |sc| {
                sc.contents().contains(tetris::scores::SEE_SCORES_PROMPT)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        self.session.send(b"\r").expect("typing on the terminal");
        let st = self.session.wait_exit(DEADLINE).expect("the harness exits");
        assert!(st.success(), "{st:?}: {}", self.session.contents());
    }
}

/// The game state in the memory of process `pid`; `None` while it is not mapped or the
/// process is gone.
fn game_in(pid: u32) -> Option<tetris::state::GameState> {
    use std::os::unix::fs::FileExt as _;
    use zerocopy::FromBytes as _;
    let addr = tetris::worker::state_address().ok()?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; size_of::<tetris::state::GameState>()];
    mem.read_exact_at(&mut buf, addr as u64).ok()?;
    tetris::state::GameState::read_from_bytes(&buf)
        .ok()
        .filter(tetris::state::GameState::is_valid_header)
}

#[test]
fn a_game_axed_every_half_second_falls_at_the_rate_of_the_game_left_alone() {
    let mut alone = Game::start(false);
    let mut chaos = Game::start(true);
    let start = Instant::now();
    let failovers_before = loop {
        chaos.poll();
        alone.poll();
        if chaos.from.is_some() {
            break chaos.field("failovers").unwrap_or(0);
        }
        assert!(start.elapsed() < DEADLINE, "the chaos game never fell");
    };
    while alone.took.is_none() || chaos.took.is_none() {
        alone.poll();
        chaos.poll();
        assert!(start.elapsed() < DEADLINE, "timed out");
        // The game left alone has done its falls: a chaos game 20% behind it has failed.
        if let Some(took) = alone.took
            && alone
                .from
                .is_some_and(|from| from.elapsed() > took.mul_f64(1.2))
            && chaos.took.is_none()
        {
            break;
        }
    }
    let failovers = chaos.field("failovers").unwrap_or(0) - failovers_before;
    let alone_rate = alone.rate().expect("the game left alone was timed");
    eprintln!(
        "level {LEVEL}, {FALLS} timer expiries: alone {alone_rate:.3}/s in {:?}; chaos {} \
         with {failovers} failovers",
        alone.took.unwrap_or_default(),
        chaos.took.map_or_else(
            || "not done".to_owned(),
            |t| format!("{:.3}/s in {t:?}", FALLS as f64 / t.as_secs_f64())
        ),
    );
    let chaos_rate = chaos.rate().unwrap_or_else(|| {
        panic!(
            "the chaos game fell {} times while the game left alone fell {FALLS} (after {} \
             failovers)",
            chaos.inputs.saturating_sub(FROM),
            failovers
        )
    });
    // At one axe per half second (or later: an axe waits for a synced spare) over 8 s.
    assert!(failovers >= 5, "only {failovers} failovers while timed");
    let ratio = chaos_rate / alone_rate;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "the chaos game falls at {chaos_rate:.3}/s, {ratio:.3} times the {alone_rate:.3}/s of \
         the game left alone ({failovers} failovers)"
    );
    alone.quit();
    chaos.quit();
}
