//! `failover-harness bench-failover`: how long a failover takes, from the SIGKILL of the
//! primary to the first byte of the promoted spare's screen reaching the user's side, and
//! whether any key was lost or doubled.
//!
//! No user terminal: the harness reads the games' terminals itself ([`Engine`], 24x80).
//! The game is paused first; then each trial types three `p` keys (while paused each is one
//! input that changes nothing else, and the fall timer stays frozen), SIGKILLs the primary at
//! once, without waiting for the keys to be read, and waits for the promoted spare to draw,
//! to take the keys the log says it has not seen, and for a new spare to be synchronised.
//! Lost (or doubled) inputs are counted from the game's own input count after the trial
//! against the count before plus the keys typed.
//!
//! The floor, measured in the same run before the trials ([`hs_bench::floors::kill_to_eof`]:
//! a small process SIGKILLed until its peer reads end of file, this executable as
//! `failover-harness floor-peer hold`), is what a failover cannot go below on this machine
//! now; the result gives the recovery time's median as a multiple of the floor's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use hslib::Mode;

use crate::engine::local::LocalLauncher;
use crate::engine::{Axe, Engine, Event, InputPolicy};
use crate::game::{Io, Setup};
use crate::link::{Link, Transport};

/// The engine on local games on pseudo-terminals.
type Session = Engine<LocalLauncher>;

/// Keys typed just before each kill.
const KEYS_PER_TRIAL: u64 = 3;
/// The bound on any one step of a trial.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// Stats lines every millisecond: the bench learns of syncs and consumed keys at once.
const STATS_MS: u64 = 1;
/// Kills measured for the kill-to-EOF floor.
const FLOOR_SAMPLES: usize = 100;

/// What `bench-failover` was asked for.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Failovers to time.
    pub trials: u32,
    /// async or sync checkpoints.
    pub mode: Mode,
    /// unix or tcp.
    pub transport: Transport,
}

/// One failover, in milliseconds from the SIGKILL.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trial {
    /// The harness saw the primary dead (its pidfd).
    pub dead_ms: f64,
    /// The promoted spare's first byte (the recovery time).
    pub rto_ms: f64,
    /// The promoted spare's resumed line.
    pub resumed_ms: f64,
    /// The new spare held a checkpoint.
    pub protected_ms: f64,
}

/// The bench's result.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    /// Each failover.
    pub trials: Vec<Trial>,
    /// Inputs lost or applied twice, over all trials.
    pub lost_inputs: u64,
    /// The kill-to-EOF floor's median in this run, milliseconds (0: not measured).
    pub floor_kill_to_eof_ms: f64,
}

/// Nearest-rank percentile `p` of `values` (unsorted); 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

impl BenchResult {
    fn column(&self, f: impl Fn(&Trial) -> f64) -> Vec<f64> {
        self.trials.iter().map(f).collect()
    }

    /// The recovery time's median as a multiple of the floor's (0 without a floor).
    pub fn x_floor(&self) -> f64 {
        if self.floor_kill_to_eof_ms > 0.0 {
            percentile(&self.column(|t| t.rto_ms), 50.0) / self.floor_kill_to_eof_ms
        } else {
            0.0
        }
    }

    /// `{"trials":N,"rto_ms_p50":F,"rto_ms_p99":F,"rto_ms_max":F,"lost_inputs":N,
    /// "floor_kill_to_eof_ms":F,"x_floor":F}` (x_floor: rto_ms_p50 / the floor's p50).
    pub fn to_json(&self) -> String {
        let rto = self.column(|t| t.rto_ms);
        format!(
            "{{\"trials\":{},\"rto_ms_p50\":{:.3},\"rto_ms_p99\":{:.3},\"rto_ms_max\":{:.3},\"lost_inputs\":{},\"floor_kill_to_eof_ms\":{:.3},\"x_floor\":{:.2}}}",
            self.trials.len(),
            percentile(&rto, 50.0),
            percentile(&rto, 99.0),
            percentile(&rto, 100.0),
            self.lost_inputs,
            self.floor_kill_to_eof_ms,
            self.x_floor()
        )
    }

    /// A few lines for people: the recovery time and where it goes.
    pub fn report(&self) -> String {
        let mut out = format!(
            "{} failovers, {} inputs lost\n",
            self.trials.len(),
            self.lost_inputs
        );
        let rows: [(&str, Vec<f64>); 4] = [
            ("primary seen dead", self.column(|t| t.dead_ms)),
            ("first byte of the spare (RTO)", self.column(|t| t.rto_ms)),
            ("its resumed line", self.column(|t| t.resumed_ms)),
            ("a new spare synced", self.column(|t| t.protected_ms)),
        ];
        out.push_str("ms after the SIGKILL          p50      p99      max\n");
        for (name, v) in rows {
            out.push_str(&format!(
                "{name:<30}{:>7.3}  {:>7.3}  {:>7.3}\n",
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                percentile(&v, 100.0)
            ));
        }
        out.push_str(&format!(
            "floor (kill to EOF, this run)  {:>6.3} ms p50: RTO p50 = {:.2}x the floor\n",
            self.floor_kill_to_eof_ms,
            self.x_floor()
        ));
        out
    }
}

/// The `TERM` of the bench's games: a terminal the game can draw on, whatever the caller's.
pub const BENCH_TERM: &str = "xterm-256color";

/// Runs the trials.
pub fn bench(opts: &BenchOptions) -> anyhow::Result<BenchResult> {
    let floor = hs_bench::floors::kill_to_eof(FLOOR_SAMPLES, Duration::ZERO)
        .context("measuring the kill-to-EOF floor")?;
    let link = Link::new(opts.transport)?;
    let scores = link.path("scores");
    let args = vec![
        "--seed".into(),
        "1".into(),
        "-l".into(),
        "1".into(),
        "--scores-file".into(),
        scores.into_os_string(),
    ];
    let mut setup = Setup::new(args, link, opts.mode, STATS_MS)?;
    // The games draw on the harness's own ptys, not on the caller's terminal.
    setup.term = Some(BENCH_TERM);
    let (mut sup, _) = Engine::start(
        LocalLauncher::new(setup, Io::Pty(24, 80)),
        InputPolicy::Immediate,
    )?;
    let mut b = Bench { sup: &mut sup };
    b.until("the game on the screen and its spare synchronised", |s| {
        s.view().spare_synced && s.view().stats.checkpoints > 0
    })?;
    b.sup.type_bytes(b"p")?;
    let mut result = BenchResult {
        floor_kill_to_eof_ms: floor.p50_us / 1000.0,
        ..BenchResult::default()
    };
    for n in 0..opts.trials {
        let trial = b.trial().with_context(|| format!("trial {}", n + 1))?;
        result.lost_inputs += trial.1;
        result.trials.push(trial.0);
    }
    Ok(result)
}

struct Bench<'a> {
    sup: &'a mut Session,
}

impl Bench<'_> {
    /// Pumps the session until `done` holds.
    fn until(&mut self, what: &str, mut done: impl FnMut(&Session) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_DEADLINE;
        while !done(self.sup) {
            if Instant::now() >= deadline {
                bail!("timed out waiting for {what} ({:?})", self.sup.view());
            }
            let (_, events) = self.sup.poll(&[], Duration::from_millis(50))?;
            if let Some(Event::Ended(end)) =
                events.into_iter().find(|e| matches!(e, Event::Ended(_)))
            {
                bail!("the session ended while waiting for {what}: {end:?}");
            }
        }
        Ok(())
    }

    /// One failover: (its times, inputs lost or doubled).
    fn trial(&mut self) -> anyhow::Result<(Trial, u64)> {
        let log_len = self.sup.log().len() as u64;
        self.until("every key in the game and a synchronised spare", |s| {
            let v = s.view();
            v.spare_synced && !v.failing_over && v.stats.tty_bytes >= log_len
        })?;
        let before = self.sup.view().stats.inputs;
        self.sup.type_bytes(&b"p".repeat(KEYS_PER_TRIAL as usize))?;
        let mut events = Vec::new();
        let killed = Instant::now();
        match self.sup.axe(&mut events)? {
            Axe::Killed(_) => {}
            Axe::Pending => bail!("the spare was not synchronised"),
        }
        let ms = |at: Instant| at.duration_since(killed).as_secs_f64() * 1000.0;
        let mut t = Trial::default();
        let (mut dead, mut switched, mut resumed, mut protected) = (false, false, false, false);
        let deadline = Instant::now() + STEP_DEADLINE;
        while !(dead && switched && resumed && protected) {
            if Instant::now() >= deadline {
                bail!(
                    "the failover did not complete (dead {dead}, switched {switched}, resumed \
                     {resumed}, protected {protected})"
                );
            }
            let (_, events) = self.sup.poll(&[], Duration::from_millis(50))?;
            let now = Instant::now();
            for e in events {
                match e {
                    Event::PrimaryDied { .. } => {
                        dead = true;
                        t.dead_ms = ms(now);
                    }
                    Event::Switched { rto_ms } => {
                        switched = true;
                        t.rto_ms = rto_ms;
                    }
                    Event::Promoted { .. } => {
                        resumed = true;
                        t.resumed_ms = ms(now);
                    }
                    Event::SpareSynced { .. } if resumed => {
                        protected = true;
                        t.protected_ms = ms(now);
                    }
                    Event::Ended(end) => bail!("the session ended: {end:?}"),
                    _ => {}
                }
            }
        }
        let want_bytes = self.sup.log().len() as u64;
        let settled = self.until("the typed keys in the promoted game", |s| {
            s.view().stats.tty_bytes >= want_bytes
        });
        let v = self.sup.view().stats;
        let lost = match settled {
            Ok(()) => (v.inputs).abs_diff(before + KEYS_PER_TRIAL),
            Err(_) => want_bytes.saturating_sub(v.tty_bytes),
        };
        Ok((t, lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.5], 99.0), 3.5);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_json_line_has_the_documented_form() {
        let r = BenchResult {
            trials: vec![
                Trial {
                    rto_ms: 2.0,
                    ..Trial::default()
                },
                Trial {
                    rto_ms: 4.5,
                    ..Trial::default()
                },
            ],
            lost_inputs: 0,
            floor_kill_to_eof_ms: 0.5,
        };
        assert_eq!(
            r.to_json(),
            r#"{"trials":2,"rto_ms_p50":2.000,"rto_ms_p99":4.500,"rto_ms_max":4.500,"lost_inputs":0,"floor_kill_to_eof_ms":0.500,"x_floor":4.00}"#
        );
    }
}
