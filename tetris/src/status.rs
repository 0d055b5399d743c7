//! `TETRIS_STATUS_FD`: what the game tells its supervisor.
//!
//! - The **resumed line**, written by a restored game before it consumes any input, so the
//!   supervisor knows which inputs it has to replay:
//!   `{"resumed":{"checkpoint":C,"inputs":N,"epoch":E}}` and a newline: the game continues
//!   from checkpoint `C` (of the stream it was restored from), has consumed `N` inputs, and
//!   runs as epoch `E`. A game on a terminal adds `"tty_bytes":T` after the epoch: the bytes
//!   of terminal input its state accounts for (a supervisor that logs the bytes it typed
//!   replays its log from byte `T`).
//! - With `TETRIS_STATS_MS` set to a number of milliseconds, **stats lines** from a thread of
//!   their own, at most one per interval and only when something changed (and at least every
//!   [`STATS_KEEPALIVE`]), until hslib has ended the link (its goodbye to the spare included:
//!   a game that finishes is not silent while it waits for a cut-off spare's socket):
//!   `{"stats":{"epoch":E,"checkpoints":C,"inputs":N,"tty_bytes":T,"stall_last_us":F,`
//!   `"stall_p99_us":F,"last_written":W,"acked":A,"sessions":S,"live":B,"synced":B}}`. `checkpoints`
//!   continues from the restored checkpoint's number; `inputs` and `tty_bytes` are the state's
//!   at the last checkpoint; the stalls are the time spent inside `checkpoint()` in the
//!   steady state (the p99 of this process's checkpoints, to within 1/8 of an octave; full
//!   checkpoints, the first a new spare gets after a start or a failover, are not moves and
//!   are left out); `last_written`, `acked`,
//!   `sessions`, `live` and `synced` are the link's ([`hslib::LinkStats`]): the spare lags
//!   `last_written - acked` checkpoints behind, each spare that connects opens a new session,
//!   and the spare of the open session holds a checkpoint once `synced`. While a
//!   connected spare is not yet synced the thread looks every millisecond, so the sync is
//!   reported at once.
//!
//! A variable that is unset, empty, not a number or names a closed descriptor means nobody
//! listens: nothing is written.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hslib::link::Standby;
use hslib::{LinkProbe, LinkStats, Restored};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// The variable naming the descriptor.
pub const STATUS_FD_ENV: &str = "TETRIS_STATUS_FD";
/// The variable asking for stats lines, every so many milliseconds.
pub const STATS_MS_ENV: &str = "TETRIS_STATS_MS";

/// A restored game's first line, `{"resumed":{...}}`: where it continues from. The one
/// definition of the line, written here and read by the failover harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedLine {
    /// The checkpoint it continues from.
    pub checkpoint: u64,
    /// Inputs its state has consumed (headless: script bytes, newlines not counted).
    pub inputs: u64,
    /// Its epoch.
    pub epoch: u64,
    /// A game on a terminal: the bytes of terminal input its state accounts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_bytes: Option<u64>,
}

/// One line on the status descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusLine {
    /// `{"resumed":{...}}`.
    Resumed(ResumedLine),
    /// `{"stats":{...}}`.
    Stats(StatsLine),
}

impl StatusLine {
    /// The line, with its newline.
    pub fn to_line(&self) -> String {
        // Plain numbers and booleans: serialising cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one line; `None` for anything else (a newer game may say more).
    pub fn parse(line: &str) -> Option<StatusLine> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// The line (with its newline) for a game restored as `restored` with `inputs` consumed;
/// `tty_bytes` for a game on a terminal.
pub fn resumed_line(restored: &Restored, inputs: u64, tty_bytes: Option<u64>) -> String {
    StatusLine::Resumed(ResumedLine {
        checkpoint: restored.checkpoint,
        inputs,
        epoch: restored.epoch,
        tty_bytes,
    })
    .to_line()
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

/// Writes all of `line` to `fd`.
fn write_line(fd: RawFd, line: &str) -> Result<(), Errno> {
    // SAFETY: the caller found `fd` open; this process never closes the status descriptor
    // (nothing but this module knows it), and the borrow ends with this function.
    let out = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(out, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the resumed line to `TETRIS_STATUS_FD` when it names an open descriptor.
pub fn report_resumed(
    restored: &Restored,
    inputs: u64,
    tty_bytes: Option<u64>,
) -> anyhow::Result<()> {
    let Some(fd) = status_fd() else {
        return Ok(());
    };
    write_line(fd, &resumed_line(restored, inputs, tty_bytes))
        .with_context(|| format!("cannot write the resumed line to {STATUS_FD_ENV}={fd}"))
}

/// Buckets of the stall histogram: 8 per octave of nanoseconds.
const BUCKETS: usize = 496;

/// The histogram bucket of `ns`: exact below 8, else the octave and its eighth.
fn bucket(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let octave = 63 - u64::from(ns.leading_zeros());
    let eighth = (ns >> (octave - 3)) & 7;
    (octave * 8 + eighth - 16) as usize
}

/// The largest value in bucket `b`.
fn bucket_top(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let octave = (b as u64 + 16) / 8;
    let eighth = (b as u64 + 16) % 8;
    let top = (u128::from(9 + eighth) << (octave - 3)) - 1;
    u64::try_from(top).unwrap_or(u64::MAX)
}

/// What the game loop publishes at each checkpoint for the stats thread: lock-free counters
/// and a stall histogram, one atomic add each.
#[derive(Debug)]
pub struct Published {
    checkpoints: AtomicU64,
    inputs: AtomicU64,
    tty_bytes: AtomicU64,
    last_stall_ns: AtomicU64,
    histogram: Vec<AtomicU64>,
    /// The stats thread says nothing yet: the resumed line has to go first.
    held: AtomicBool,
}

impl Published {
    /// Counters starting at `checkpoints` (the restored checkpoint's number, or 0).
    pub fn new(checkpoints: u64) -> Self {
        Self {
            checkpoints: AtomicU64::new(checkpoints),
            inputs: AtomicU64::new(0),
            tty_bytes: AtomicU64::new(0),
            last_stall_ns: AtomicU64::new(0),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            held: AtomicBool::new(false),
        }
    }

    /// Keeps the stats thread quiet until [`Published::release`] (a restored game whose
    /// resumed line, the first line it writes, waits for its first frame).
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Lets the stats thread report.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// One checkpoint taken in `stall`, after which the state had consumed `inputs` and
    /// accounted for `tty_bytes`. A `full` checkpoint (the first a new spare gets, after a
    /// start or a failover) is counted but its stall is not: it is not a move's, and the
    /// stall figures are the steady state's.
    pub fn record(&self, stall: Duration, full: bool, inputs: u64, tty_bytes: u64) {
        if !full {
            let ns = u64::try_from(stall.as_nanos()).unwrap_or(u64::MAX);
            self.histogram[bucket(ns)].fetch_add(1, Ordering::Relaxed);
            self.last_stall_ns.store(ns, Ordering::Relaxed);
        }
        self.inputs.store(inputs, Ordering::Relaxed);
        self.tty_bytes.store(tty_bytes, Ordering::Relaxed);
        self.checkpoints.fetch_add(1, Ordering::Release);
    }

    /// The 99th percentile stall in nanoseconds (a bucket's top), 0 before any checkpoint.
    fn p99_ns(&self) -> u64 {
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = (99 * total).div_ceil(100);
        let mut seen = 0;
        for (b, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_top(b);
            }
        }
        0
    }
}

/// One stats line's content, `{"stats":{...}}`: the one definition of the line, written here
/// and read by the failover harness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsLine {
    /// This process's epoch.
    pub epoch: u64,
    /// Checkpoints, continuing from the restored checkpoint's number.
    pub checkpoints: u64,
    /// Inputs consumed at the last checkpoint.
    pub inputs: u64,
    /// Terminal bytes accounted for at the last checkpoint.
    pub tty_bytes: u64,
    /// The last checkpoint's stall, microseconds.
    pub stall_last_us: f64,
    /// The 99th percentile stall, microseconds.
    pub stall_p99_us: f64,
    /// The number of the last checkpoint written to the spare.
    pub last_written: u64,
    /// The last checkpoint the spare acknowledged.
    pub acked: u64,
    /// Sessions opened (one per spare that connected).
    pub sessions: u64,
    /// Whether a spare is connected.
    pub live: bool,
    /// Whether the connected spare holds a checkpoint.
    pub synced: bool,
}

impl StatsLine {
    /// The line, with its newline.
    pub fn to_line(&self) -> String {
        StatusLine::Stats(*self).to_line()
    }

    /// Checkpoints written that the spare has not acknowledged yet.
    pub fn lag(&self) -> u64 {
        self.last_written.saturating_sub(self.acked)
    }

    /// Takes the link's counters from `link`.
    pub fn with_link(self, link: &LinkStats) -> Self {
        Self {
            last_written: link.last_written,
            acked: link.acked,
            sessions: link.sessions,
            live: link.live,
            synced: link.synced,
            ..self
        }
    }
}

/// The stats thread; stops (and is joined) when dropped.
#[derive(Debug)]
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the stats thread needs from the environment: how often, and where.
fn stats_wanted() -> Option<(Duration, RawFd)> {
    let ms = std::env::var(STATS_MS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)?;
    Some((Duration::from_millis(ms), status_fd()?))
}

impl Reporter {
    /// The stats thread, started ahead of [`Reporter::start`] (a spare starts it while it
    /// waits, so a promoted game starts no thread before it draws) when `TETRIS_STATS_MS` and
    /// `TETRIS_STATUS_FD` ask for one; `None` otherwise, or if it cannot start (then
    /// [`Reporter::start`] starts its own).
    pub fn standby() -> Option<Standby> {
        stats_wanted()?;
        Standby::start("tetris-stats")
            .inspect_err(|e| tracing::warn!(error = %e, "no standby stats thread"))
            .ok()
    }

    /// Starts the stats thread (on `standby` if given) when `TETRIS_STATS_MS` and
    /// `TETRIS_STATUS_FD` ask for it; `None` otherwise.
    pub fn start(
        published: &Arc<Published>,
        probe: Option<LinkProbe>,
        epoch: u64,
        standby: Option<Standby>,
    ) -> anyhow::Result<Option<Reporter>> {
        let Some((every, fd)) = stats_wanted() else {
            return Ok(None);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::clone(published);
        let stopping = Arc::clone(&stop);
        let run = move || report(fd, every, &published, probe.as_ref(), epoch, &stopping);
        let thread = match standby {
            Some(standby) => standby.run(run).context("cannot start the stats thread")?,
            None => std::thread::Builder::new()
                .name("tetris-stats".to_owned())
                .spawn(run)
                .context("cannot start the stats thread")?,
        };
        Ok(Some(Reporter {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The longest the stats thread stays silent: a line goes out at least this often even when
/// nothing changed, so a supervisor can tell a game that waits for a key from a game that is
/// stopped or hung (`failover-harness`'s hang deadline is several of these).
pub const STATS_KEEPALIVE: Duration = Duration::from_millis(250);

/// The stats thread's loop: a line whenever what it would say changed, and at least every
/// [`STATS_KEEPALIVE`].
fn report(
    fd: RawFd,
    every: Duration,
    published: &Published,
    probe: Option<&LinkProbe>,
    epoch: u64,
    stop: &AtomicBool,
) {
    let mut last: Option<StatsLine> = None;
    let mut written = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if published.held.load(Ordering::Acquire) {
            std::thread::sleep(every.min(Duration::from_millis(1)));
            continue;
        }
        let link = probe.map(LinkProbe::stats).unwrap_or_default();
        let now = StatsLine {
            epoch,
            checkpoints: published.checkpoints.load(Ordering::Acquire),
            inputs: published.inputs.load(Ordering::Relaxed),
            tty_bytes: published.tty_bytes.load(Ordering::Relaxed),
            stall_last_us: published.last_stall_ns.load(Ordering::Relaxed) as f64 / 1000.0,
            stall_p99_us: published.p99_ns() as f64 / 1000.0,
            ..StatsLine::default()
        }
        .with_link(&link);
        if last != Some(now) || written.elapsed() >= STATS_KEEPALIVE {
            if write_line(fd, &now.to_line()).is_err() {
                // Nobody reads any more: stop looking.
                return;
            }
            last = Some(now);
            written = Instant::now();
        }
        let pause = if link.live && !link.synced {
            every.min(Duration::from_millis(1))
        } else {
            every
        };
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored() -> Restored {
        Restored {
            checkpoint: 17,
            from_epoch: 1,
            epoch: 2,
        }
    }

    #[test]
    fn the_line_has_the_documented_form() {
        assert_eq!(
            resumed_line(&restored(), 9, None),
            "{\"resumed\":{\"checkpoint\":17,\"inputs\":9,\"epoch\":2}}\n"
        );
    }

    #[test]
    fn a_game_on_a_terminal_adds_its_terminal_bytes() {
        assert_eq!(
            resumed_line(&restored(), 9, Some(12)),
            "{\"resumed\":{\"checkpoint\":17,\"inputs\":9,\"epoch\":2,\"tty_bytes\":12}}\n"
        );
    }

    #[test]
    fn buckets_are_exact_below_eight_then_eighths_of_octaves() {
        for ns in 0..8 {
            assert_eq!(bucket(ns), ns as usize);
            assert_eq!(bucket_top(bucket(ns)), ns);
        }
        // Every value lies in its bucket, whose top is within 1/8 above it.
        for ns in [
            8u64,
            9,
            15,
            16,
            17,
            1000,
            1023,
            1024,
            999_999,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let b = bucket(ns);
            assert!(b < BUCKETS, "{ns}");
            let top = bucket_top(b);
            assert!(top >= ns, "{ns}: top {top}");
            assert!(top - ns <= ns / 8, "{ns}: top {top}");
            if b > 0 {
                assert!(bucket_top(b - 1) < ns, "{ns}");
            }
        }
    }

    #[test]
    fn p99_is_the_bucket_of_the_99th_percentile() {
        let p = Published::new(5);
        for _ in 0..990 {
            p.record(Duration::from_nanos(2000), false, 1, 2);
        }
        for _ in 0..10 {
            p.record(Duration::from_millis(3), false, 3, 4);
        }
        assert_eq!(bucket(p.p99_ns()), bucket(2000));
        p.record(Duration::from_millis(3), false, 3, 4);
        assert_eq!(bucket(p.p99_ns()), bucket(3_000_000));
        assert_eq!(p.checkpoints.load(Ordering::Relaxed), 1006);
    }

    #[test]
    fn a_full_checkpoint_counts_but_its_stall_is_not_the_steady_states() {
        let p = Published::new(0);
        p.record(Duration::from_micros(2), false, 1, 1);
        p.record(Duration::from_millis(40), true, 2, 2);
        assert_eq!(p.last_stall_ns.load(Ordering::Relaxed), 2000);
        assert_eq!(bucket(p.p99_ns()), bucket(2000));
        assert_eq!(p.checkpoints.load(Ordering::Relaxed), 2);
        assert_eq!(p.inputs.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_stats_line_is_one_json_object_that_parses_back() {
        let line = StatsLine {
            epoch: 3,
            checkpoints: 10,
            inputs: 4,
            tty_bytes: 6,
            stall_last_us: 2.5,
            stall_p99_us: 7.0,
            ..StatsLine::default()
        }
        .with_link(&LinkStats {
            last_written: 9,
            acked: 8,
            sessions: 2,
            live: true,
            synced: true,
            ..LinkStats::default()
        });
        let text = line.to_line();
        assert_eq!(
            text,
            "{\"stats\":{\"epoch\":3,\"checkpoints\":10,\"inputs\":4,\"tty_bytes\":6,\
             \"stall_last_us\":2.5,\"stall_p99_us\":7.0,\"last_written\":9,\"acked\":8,\
             \"sessions\":2,\"live\":true,\"synced\":true}}\n"
        );
        assert_eq!(StatusLine::parse(&text), Some(StatusLine::Stats(line)));
        assert_eq!(line.lag(), 1);
    }

    #[test]
    fn resumed_lines_parse_back_and_other_lines_do_not_parse() {
        let text = resumed_line(&restored(), 9, Some(12));
        let Some(StatusLine::Resumed(r)) = StatusLine::parse(&text) else {
            panic!("a resumed line: {text}");
        };
        assert_eq!(
            (r.checkpoint, r.inputs, r.epoch, r.tty_bytes),
            (17, 9, 2, Some(12))
        );
        assert_eq!(StatusLine::parse("{\"other\":1}"), None);
        assert_eq!(StatusLine::parse("not json"), None);
    }
}
