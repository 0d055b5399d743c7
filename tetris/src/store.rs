//! Where the game's state lives while it is played, and how a change is made to last.
//!
//! The game loops ([`crate::play::game_loop`], [`crate::headless::play_stream`]) never hold
//! the state themselves: they borrow it from a [`Store`] for each step and call
//! [`Store::commit`] after every change, which for the real game is an hslib checkpoint of the
//! region the state lives in ([`crate::worker`]). A plain [`GameState`] is a store whose
//! commits do nothing, for tests and tools.

use crate::state::GameState;

/// The home of one game's state.
pub trait Store {
    /// The state, to read or change; the borrow must end before [`Store::commit`].
    fn state(&mut self) -> anyhow::Result<&mut GameState>;

    /// Makes the state as it is now survive this process (a checkpoint); called after every
    /// change the game makes, before it waits for the next input.
    fn commit(&mut self) -> anyhow::Result<()>;
}

/// A state in ordinary memory: commits keep nothing.
impl Store for GameState {
    fn state(&mut self) -> anyhow::Result<&mut GameState> {
        Ok(self)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A state in ordinary memory that keeps a copy of it at every commit, so tests can check
/// that every change was committed.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The live state.
    pub state: GameState,
    /// The state at each commit, in order.
    pub commits: Vec<GameState>,
}

impl Recording {
    /// A recording store starting from `state`, with no commits yet.
    pub fn new(state: GameState) -> Self {
        Self {
            state,
            commits: Vec::new(),
        }
    }
}

impl Store for Recording {
    fn state(&mut self) -> anyhow::Result<&mut GameState> {
        Ok(&mut self.state)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        self.commits.push(self.state);
        Ok(())
    }
}

/// The game as the last complete checkpoint of the log at `path` holds it, read without
/// touching the log; `None` when the log completes no checkpoint or holds no tetris game
/// there (resuming says why). A torn tail is passed over, as resuming passes over it.
pub fn logged_state(path: &std::path::Path) -> anyhow::Result<Option<GameState>> {
    use crate::worker::STATE_REGION;
    use zerocopy::FromBytes as _;
    // The game's state is its region's first and root value.
    let at = hslib::Region::first_offset::<GameState>();
    let (replica, _end) =
        hslib::transport::file::rebuild(path, hslib::replica::ReplicaConfig::default())?;
    let bytes = replica
        .image()
        .and_then(|image| image.region(STATE_REGION.0))
        .and_then(|region| region.get(at..at + size_of::<GameState>()));
    Ok(bytes
        .and_then(|b| GameState::read_from_bytes(b).ok())
        .filter(GameState::is_valid_header))
}
