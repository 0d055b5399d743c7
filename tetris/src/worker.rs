//! The game as hslib's worker: the state in a registered region, a checkpoint after every
//! change, and the roles (standalone, primary, spare, resumed) chosen by the command line and
//! the `HS_*` environment.
//!
//! One code path for every role: [`run`] registers [`STATE_REGION`] and a worker with hslib.
//! On a fresh start hslib runs `init`, which places a new [`GameState`] as the region's root
//! value, then the worker; a promoted spare or a resumed game gets the region back as the last
//! complete checkpoint left it and hslib calls the same worker directly, which finds the state
//! as the region's root. The worker sets up whatever it reads and draws (the terminal, or the
//! headless script) itself, plays the state where it lies through a [`Store`] whose commit is
//! [`hslib::Context::checkpoint`], puts the terminal back and returns how the game ended.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use hslib::{
    Backend, Context, HotSpare, LinkConfig, Outcome, Region, RegionId, Restored, Role, Slot,
};

use crate::options::Options;
use crate::play::{self, Ending};
use crate::signals::Signals;
use crate::state::{GameState, LAYOUT_VERSION};
use crate::stats::Stalls;
use crate::status::{Published, Reporter};
use crate::store::Store;
use crate::{headless, rng, rules, screen, status};

/// The name the worker is registered under (a spare checks the checkpoint names it).
pub const WORKER_NAME: &str = "tetris";
/// The region holding the game.
pub const STATE_REGION: RegionId = RegionId(1);
/// Its length: one page holds the whole game.
pub const REGION_LEN: usize = 4096;

/// Stall samples recorded before the vector has to grow (`--stats` only).
const STALL_CAPACITY: usize = 1 << 16;

/// The state's address, the same in every process of the binary (for tools and tests that
/// look at a running game's memory): the region's first and root value.
pub fn state_address() -> anyhow::Result<usize> {
    Ok(Region::derived_address(STATE_REGION)? + Region::first_offset::<GameState>())
}

/// How a run of the binary ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ran {
    /// This process was a spare and ended without playing: its primary ended the game on
    /// purpose, or (a cluster spare) its agent closed the order descriptor without an order.
    /// Nothing to show.
    SpareDone,
    /// This process was a spare and its primary, alive, dropped it: it missed the primary's
    /// ack deadline (it was stopped or starved). It did not take over; the game goes on
    /// without it until its supervisor starts another spare.
    SpareDropped {
        /// The last checkpoint it held.
        checkpoint: Option<u64>,
    },
    /// The game was played here to its end (fresh, resumed or promoted).
    Played {
        /// The game as it ended.
        state: Box<GameState>,
        /// How the game on the terminal ended; `None` in headless mode.
        ending: Option<Ending>,
        /// Where this process was restored from, if it was.
        restored: Option<Restored>,
    },
}

/// What the worker needs from the command line (moved into it: it must be `'static`).
#[derive(Clone, Debug)]
struct Plan {
    headless: bool,
    script: Option<PathBuf>,
    colour: bool,
    /// `--stats FILE`: the stalls are recorded and written there at the game's end.
    stats: Option<PathBuf>,
}

/// What the worker hands back.
#[derive(Debug)]
struct Results {
    state: GameState,
    ending: Option<Ending>,
    /// The stats thread, kept running until hslib has ended the link (see [`run`]).
    reporter: Option<Reporter>,
}

/// Runs the game in the role the command line and the environment ask for; writes the
/// `--stats` file when the game ended here.
pub fn run(options: &Options) -> anyhow::Result<Ran> {
    // Drawn even when a checkpoint will be restored instead: reading /dev/urandom touches no
    // terminal, and a spare whose primary dies before its first checkpoint starts afresh.
    let seed = match options.seed {
        Some(seed) => seed,
        None => rng::os_seed().context("cannot draw a seed from /dev/urandom")?,
    };
    let fresh = rules::new_game(seed, options.level, options.keys, options.preview);
    let plan = Plan {
        headless: options.headless,
        script: options.script.clone(),
        colour: screen::colour_wanted(
            options.black_and_white,
            std::env::var_os("NO_COLOR").as_deref(),
        ),
        stats: options.stats.clone(),
    };
    // Started before hslib runs the role: a spare's waits there, so its promotion starts no
    // thread before the game draws.
    let stats_thread = Reporter::standby();
    // The game's checkpoint memory is one page, and the game checkpoints only after it has
    // changed it: asking the kernel which pages changed always answers "that one", and the
    // asking is not free (uffd write-protects the page again at each scan, which costs a TLB
    // shootdown on every CPU running one of our threads: ~9 us per checkpoint here, against
    // ~2 us for the whole checkpoint without it). `HS_TRACKER` still chooses, when set.
    let mut hs = HotSpare::new(WORKER_NAME)
        .region(STATE_REGION, REGION_LEN)
        .default_tracker(Backend::Full)
        .init(move |ctx| init(ctx, fresh).map_err(worker_error))
        .worker(move |ctx| worker(ctx, &plan, stats_thread).map_err(worker_error))
        .from_env()?;
    // The command line is more specific than the environment.
    if let Some(path) = &options.checkpoint_file {
        hs = hs.link(LinkConfig::File {
            path: path.clone(),
            append: false,
        });
    }
    if let Some(path) = &options.resume {
        hs = hs.role(Role::Resume(path.clone()));
    }
    let (results, restored) = match hs.run()? {
        // A spare whose primary finished, or a cluster spare let go without an order.
        Outcome::PrimaryFinished { .. } | Outcome::Dismissed { .. } => return Ok(Ran::SpareDone),
        Outcome::Dropped { checkpoint } => return Ok(Ran::SpareDropped { checkpoint }),
        Outcome::Finished {
            value, restored, ..
        } => (value, restored),
    };
    // The stats thread went on through hslib's end of the link (the goodbye to the spare,
    // which waits while a cut-off spare's socket is full): a supervisor that hears no status
    // line takes the game for hung (a cluster agent stops speaking for it, and the client
    // suspects it), and this game is not hung but finishing. It stops now.
    drop(results.reporter);
    Ok(Ran::Played {
        state: Box::new(results.state),
        ending: results.ending,
        restored,
    })
}

/// hslib wants errors it can send across threads; keep anyhow's whole chain in the message.
fn worker_error(e: anyhow::Error) -> hslib::WorkerError {
    crate::cli::user_message(&e).into()
}

/// A fresh start: the new game goes into the region, as its root value.
fn init(ctx: &mut Context, fresh: GameState) -> anyhow::Result<()> {
    ctx.place(STATE_REGION, fresh)?;
    Ok(())
}

/// The main loop, for every role: report a restore, then play the state where it lies.
fn worker(
    ctx: &mut Context,
    plan: &Plan,
    stats_thread: Option<hslib::link::Standby>,
) -> anyhow::Result<Results> {
    let slot = ctx.root::<GameState>(STATE_REGION)?;
    let start = *ctx.get(STATE_REGION, slot)?;
    anyhow::ensure!(
        start.is_valid_header(),
        "region {STATE_REGION} holds no tetris game of layout {LAYOUT_VERSION} at its root \
         (magic {:#010x}, layout {})",
        start.magic,
        start.layout_version
    );
    let restored = ctx.restored();
    if let Some(warning) = ctx.log_warning() {
        // Said before the game takes the terminal (a game on a screen shows it after).
        eprintln!("tetris: warning: {warning}");
    }
    // The handlers go in before a promoted game says it resumed: its supervisor may pass on
    // the user's ^C the moment it reads that line, and SIGINT's default action would kill
    // the game instead of ending it (exit 0, the terminal restored). None: headless.
    let signals = (!plan.headless).then(Signals::install).transpose()?;
    let published = Arc::new(Published::new(restored.map_or(0, |r| r.checkpoint)));
    // Headless, the resumed line goes out now; on a terminal, once the first frame is (the
    // user waits for the screen, the supervisor only needs the line before any input is
    // consumed), and the stats thread says nothing before it: the resumed line is first.
    let mut resumed_line = None;
    if let Some(r) = restored {
        if plan.headless {
            status::report_resumed(&r, start.inputs, None)?;
        } else {
            published.hold();
            let published = Arc::clone(&published);
            let announce: play::Announcement<'_> = Box::new(move || {
                status::report_resumed(&r, start.inputs, Some(start.tty_bytes))?;
                published.release();
                Ok(())
            });
            resumed_line = Some(announce);
        }
    }
    let mut stalls = Stalls::with_capacity(if plan.stats.is_some() {
        STALL_CAPACITY
    } else {
        0
    });
    // Our own copy: the store below borrows the context for as long as the game runs.
    let wanted = ctx
        .checkpoint_wanted_fd()
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .context("cannot duplicate the checkpoint-wanted descriptor")?;
    let reporter = Reporter::start(&published, ctx.link_probe(), ctx.epoch(), stats_thread)?;
    let mut store = Checkpointed {
        ctx,
        slot,
        stalls: plan.stats.is_some().then_some(&mut stalls),
        published: reporter.is_some().then_some(&*published),
        shed: false,
    };
    let ending = if let Some(signals) = &signals {
        Some(play::play(
            &mut store,
            plan.colour,
            signals,
            wanted.as_ref().map(AsFd::as_fd),
            resumed_line,
        )?)
    } else {
        let (mut script, is_file) = headless::open_script(plan.script.as_deref())?;
        // A file is read from its start again: pass over what the restored game consumed.
        // A stream (stdin) goes on where it is; whoever feeds it replays what is missing.
        let skip = match restored {
            Some(_) if is_file => start.inputs,
            _ => 0,
        };
        let stdin = std::io::stdin();
        let wake = match &wanted {
            Some(w) if !is_file => Some(headless::Wake {
                input: stdin.as_fd(),
                wanted: w.as_fd(),
            }),
            _ => None,
        };
        headless::play_stream(&mut store, &mut script, skip, wake)?;
        // The result goes out before the worker returns, that is before hslib tells the
        // spare goodbye: a primary killed between the two leaves a spare that takes over
        // the finished game and prints the same line, never a game whose result is lost.
        let end = *store.state()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", headless::to_json(&end))
            .and_then(|()| out.flush())
            .context("cannot write the result to stdout")?;
        None
    };
    let end = *store.state()?;
    if let Some(path) = &plan.stats {
        // Written before the worker returns, like the result line: a primary killed between
        // its goodbye and its exit (an axe that came as the game ended) still leaves them.
        // Once every checkpoint is on the stream, so the bytes are the game's all.
        let bytes = {
            let Checkpointed { ctx, .. } = store;
            if let Err(e) = ctx.flush() {
                // The game is played: its figures go out as they stand.
                tracing::warn!(error = %e, "the link did not drain before the stats were written");
            }
            ctx.link_stats().bytes
        };
        stalls.summary(bytes).write(path)?;
    }
    Ok(Results {
        state: end,
        ending,
        reporter,
    })
}

/// The game's state in its region; a commit is a checkpoint, timed for `--stats`.
struct Checkpointed<'a> {
    ctx: &'a mut Context,
    slot: Slot<GameState>,
    stalls: Option<&'a mut Stalls>,
    published: Option<&'a Published>,
    /// The start-up code's file pages were shed ([`hslib::shed_file_pages`]).
    shed: bool,
}

impl Store for Checkpointed<'_> {
    fn state(&mut self) -> anyhow::Result<&mut GameState> {
        Ok(self.ctx.get_mut(STATE_REGION, self.slot)?)
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let taken = self.ctx.checkpoint();
        let stall = start.elapsed();
        let taken = taken.context("taking a checkpoint failed")?;
        if let Some(stalls) = self.stalls.as_deref_mut() {
            stalls.record(stall);
        }
        if let Some(published) = self.published {
            let state = self.ctx.get(STATE_REGION, self.slot)?;
            published.record(stall, taken.full, state.inputs, state.tty_bytes);
        }
        if !self.shed && taken.full && taken.strategy.is_some() {
            // A spare holds the game now (this process drew, after a promotion, long ago):
            // the pages of code that only starting up ran go, so that this process, killed,
            // tears down less before its spare sees the end of its stream. Once; what the
            // game runs from here faults back in.
            self.shed = true;
            match hslib::shed_file_pages() {
                Ok(kib) => tracing::debug!(kib, "start-up file pages shed"),
                Err(e) => tracing::warn!(error = %e, "shedding the start-up file pages failed"),
            }
        }
        Ok(())
    }
}
