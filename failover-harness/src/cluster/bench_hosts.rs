//! `failover-harness bench-failover --hosts`: failovers across hosts, timed on the namespace
//! rig ([`HostsRig`]): the time from the fault (a SIGKILL of the primary's game, the axe of
//! its host, or a SIGSTOP of its game) to the promoted game's first byte at the client (the
//! client's `first_output` event; both are CLOCK_MONOTONIC), whether any input was lost or
//! doubled (each game's final line against `tetris --headless` for the same arguments), and
//! whether the events show a split brain ([`hosts_events::violations`]).
//!
//! Each game is a headless client on a long script paced by `--pace-us`; faults are spaced
//! so that the spare is synchronised again (and the client hears the new primary) before the
//! next one, then a random 50 to 300 ms more, so that faults fall anywhere in the game's
//! cycle. A game carries as many trials as fit in its script; then a new session starts.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tetris::rng::SplitMix64;

use crate::bench::percentile;
use crate::cluster::hosts::{AGENT_HOSTS, CLIENT_HOST, HostsOptions, HostsRig, wait_for};
use crate::cluster::hosts_events::{self, Event, Outside};

/// What a trial does to the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL of the primary's game (its agent revokes the lease).
    Kill,
    /// The primary's host cut off, then everything in it killed (fast path or lease expiry).
    Axe,
    /// SIGSTOP of the primary's game (fast path), SIGCONT after the failover.
    Stop,
}

impl Fault {
    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Axe => "axe",
            Self::Stop => "stop",
        }
    }
}

/// What `bench-failover --hosts` was asked for.
#[derive(Clone, Debug)]
pub struct HostsBenchOptions {
    /// The rig (executable, agent hosts, suspicion, lease).
    pub hosts: HostsOptions,
    /// Failovers to time.
    pub trials: u32,
    /// Which fault.
    pub fault: Fault,
    /// Microseconds between the client's inputs.
    pub pace_us: u64,
    /// Inputs in each game's script.
    pub inputs_per_game: usize,
    /// The seed of the scripts and the random spacing.
    pub seed: u64,
}

/// How long a failover may take before the trial counts as unrecovered.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// How long the session may take to be whole again (a primary, a synced spare, the client
/// hearing the primary) after a fault.
pub const SETTLE_WAIT: Duration = Duration::from_secs(40);

/// The bench's result.
#[derive(Clone, Debug, Default)]
pub struct HostsBenchResult {
    /// The fault's name.
    pub fault: &'static str,
    /// Each failover's time, ms from the fault to the promoted game's first byte.
    pub rto_ms: Vec<f64>,
    /// Inputs lost or applied twice, over all games.
    pub lost_inputs: u64,
    /// Safety violations in the events.
    pub split_brain: u64,
    /// Games played.
    pub games: u64,
    /// Games whose client did not print a final line (counted in `lost_inputs` in full).
    pub failed_games: u64,
    /// Faults after which no new epoch reached the client in [`RECOVERY_WAIT`].
    pub unrecovered: u64,
    /// What went wrong, one line each (violations, failed games).
    pub problems: Vec<String>,
    /// The floor measured in the same run: the median TCP round trip of one byte from an
    /// agent host to the client host and back, ms.
    pub floor_rtt_ms: f64,
}

impl HostsBenchResult {
    /// `{"fault":F,"trials":N,"p50_ms":F,"p99_ms":F,"max_ms":F,"lost_inputs":N,
    /// "split_brain":N,"games":N,"failed_games":N,"unrecovered":N}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"fault\":\"{}\",\"trials\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\
             \"lost_inputs\":{},\"split_brain\":{},\"games\":{},\"failed_games\":{},\
             \"unrecovered\":{},\"floor_rtt_ms\":{:.4},\"x_floor\":{:.1}}}",
            self.fault,
            self.rto_ms.len(),
            percentile(&self.rto_ms, 50.0),
            percentile(&self.rto_ms, 99.0),
            percentile(&self.rto_ms, 100.0),
            self.lost_inputs,
            self.split_brain,
            self.games,
            self.failed_games,
            self.unrecovered,
            self.floor_rtt_ms,
            self.x_floor()
        )
    }

    /// The p50 as a multiple of the floor (0 without a floor).
    pub fn x_floor(&self) -> f64 {
        if self.floor_rtt_ms > 0.0 {
            percentile(&self.rto_ms, 50.0) / self.floor_rtt_ms
        } else {
            0.0
        }
    }

    /// A few lines for people.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} {} failovers over {} games: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             (fault to the promoted game's first byte at the client)\n\
             lost or doubled inputs {}, split brains {}, unrecovered {}, failed games {}\n\
             floor (TCP round trip agent host -> client host): {:.3} ms; p50 = {:.0} x floor\n",
            self.rto_ms.len(),
            self.fault,
            self.games,
            percentile(&self.rto_ms, 50.0),
            percentile(&self.rto_ms, 99.0),
            percentile(&self.rto_ms, 100.0),
            self.lost_inputs,
            self.split_brain,
            self.unrecovered,
            self.failed_games,
            self.floor_rtt_ms,
            self.x_floor()
        );
        for p in &self.problems {
            s.push_str(p);
            s.push('\n');
        }
        s
    }
}

/// A long headless script: mostly `p` (pause, which a headless game counts as an input that
/// changes nothing), moves and rotations, a fall-timer tick in about one input of 40: a game
/// lasts tens of thousands of inputs, and any input lost or applied twice shows in its count.
pub fn long_script(seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"pppppppppppppppppppppppppjjjkkkllll";
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| {
            if rng.below(40) == 0 {
                b'.'
            } else {
                ALPHABET[usize::try_from(rng.below(ALPHABET.len() as u64)).unwrap_or(0)]
            }
        })
        .collect()
}

/// A headless client game in the rig: the client process, its stdout collected, its events.
#[derive(Debug)]
pub struct HeadlessGame {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    /// The client's events file.
    pub events: PathBuf,
    /// The client's stderr file.
    pub stderr: PathBuf,
    /// The game's tetris arguments (without `--headless` and the script).
    pub args: Vec<OsString>,
    /// The script file.
    pub script: PathBuf,
}

/// How a headless game ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GameEnd {
    /// The client's final line (empty if none).
    pub output: String,
    /// `tetris --headless`'s line for the same arguments and script.
    pub reference: String,
    /// Whether the client exited 0.
    pub success: bool,
    /// The inputs lost or applied twice (0 when the lines are equal).
    pub lost_inputs: u64,
}

impl HeadlessGame {
    /// Starts a headless client in `rig`'s current session: seed `seed`, level 1, `script`,
    /// one input every `pace_us`.
    pub fn start(
        rig: &HostsRig,
        name: &str,
        seed: u64,
        script: &[u8],
        pace_us: u64,
    ) -> anyhow::Result<Self> {
        let path = rig.dir().join(format!("{}.{name}.script", rig.session()));
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        let args: Vec<OsString> = vec![
            "--seed".into(),
            seed.to_string().into(),
            "-l".into(),
            "1".into(),
        ];
        let mut client_args = args.clone();
        client_args.extend([
            "--headless".into(),
            "--script".into(),
            path.clone().into_os_string(),
            "--pace-us".into(),
            pace_us.to_string().into(),
        ]);
        let (mut cmd, events) = rig.client_command(&client_args)?;
        let stderr = rig.dir().join(format!("{}.{name}.stderr", rig.session()));
        let err_file = std::fs::File::create(&stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .context("starting the client")?;
        let mut out = child.stdout.take().context("the client's stdout")?;
        let stdout = std::thread::spawn(move || {
            let mut v = Vec::new();
            // A read error ends the output; the comparison shows it.
            let _ = out.read_to_end(&mut v);
            v
        });
        Ok(Self {
            child,
            stdout: Some(stdout),
            events,
            stderr,
            args,
            script: path,
        })
    }

    /// The client's events so far.
    pub fn client_events(&self) -> Vec<Event> {
        hosts_events::read(&self.events)
    }

    /// Whether the client still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the client's end (at most `wait`, then it is killed) and compares its line
    /// with `tetris --headless`.
    pub fn finish(&mut self, rig: &HostsRig, wait: Duration) -> anyhow::Result<GameEnd> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().context("waiting for the client")? {
                break Some(s);
            }
            if start.elapsed() >= wait {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let output = String::from_utf8_lossy(&out).trim().to_owned();
        let reference = rig.reference(&self.args, &self.script)?;
        let lost_inputs = lost_inputs(&output, &reference);
        Ok(GameEnd {
            output,
            reference,
            success: status.is_some_and(|s| s.success()),
            lost_inputs,
        })
    }

    /// The end of the client's stderr, for reports.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }
}

impl Drop for HeadlessGame {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Inputs lost or doubled, from two headless lines: 0 when equal; else the difference of
/// their input counts (at least 1: equal counts with another state is an input misapplied);
/// the whole reference count when `got` is no game line at all.
pub fn lost_inputs(got: &str, reference: &str) -> u64 {
    if got == reference {
        return 0;
    }
    let inputs = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| v.get("inputs").and_then(serde_json::Value::as_u64))
    };
    let want = inputs(reference).unwrap_or(0);
    match inputs(got) {
        Some(n) => n.abs_diff(want).max(1),
        None => want.max(1),
    }
}

/// A session that is whole: who leads, with which epoch, and who stands by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Whole {
    /// The primary's node.
    pub primary: String,
    /// Its epoch.
    pub epoch: u64,
    /// The node whose spare holds a checkpoint.
    pub spare: String,
}

/// Waits until the session is whole: a leader, a spare of another node holding a
/// checkpoint, and the client hearing the leader's epoch. `None` when the client ended
/// first.
pub fn settle(
    rig: &HostsRig,
    game: &mut HeadlessGame,
    wait: Duration,
) -> anyhow::Result<Option<Whole>> {
    let start = Instant::now();
    loop {
        if !game.running() {
            return Ok(None);
        }
        let (leader, spare) = rig.leader_and_synced_spare().unwrap_or((None, None));
        if let Some(l) = leader
            && let Some(spare) = spare
            && hosts_events::client_epoch(&game.client_events()) == l.epoch
        {
            return Ok(Some(Whole {
                primary: l.node.name,
                epoch: l.epoch,
                spare,
            }));
        }
        if start.elapsed() >= wait {
            bail!(
                "the session is not whole within {wait:?} (status {:?}); client: {}; {}",
                rig.status().ok(),
                game.stderr_tail(),
                rig.agent_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every agent event of the current session.
pub fn agent_events(rig: &HostsRig) -> Vec<Event> {
    rig.agents()
        .iter()
        .flat_map(|a| a.events.iter())
        .flat_map(|p| hosts_events::read(p))
        .collect()
}

/// Runs the bench.
pub fn bench_hosts(opts: &HostsBenchOptions) -> anyhow::Result<HostsBenchResult> {
    let mut rig = HostsRig::new(opts.hosts.clone())?;
    let mut rng = SplitMix64::new(opts.seed);
    let mut result = HostsBenchResult {
        fault: opts.fault.name(),
        floor_rtt_ms: rig.rtt_floor_ms(CLIENT_HOST, AGENT_HOSTS[0], 200)?,
        ..HostsBenchResult::default()
    };
    while result.rto_ms.len() + usize::try_from(result.unrecovered).unwrap_or(0)
        < opts.trials as usize
    {
        rig.start_session()?;
        let game_no = result.games;
        result.games += 1;
        let script = long_script(opts.seed ^ game_no, opts.inputs_per_game);
        let mut game =
            HeadlessGame::start(&rig, "bench", opts.seed + game_no, &script, opts.pace_us)?;
        let mut outside = Vec::new();
        let done = |r: &HostsBenchResult| {
            r.rto_ms.len() + usize::try_from(r.unrecovered).unwrap_or(0) >= opts.trials as usize
        };
        while !done(&result) {
            let Some(Whole {
                primary: node,
                epoch,
                ..
            }) = settle(&rig, &mut game, SETTLE_WAIT)?
            else {
                break;
            };
            match fault_and_recover(&mut rig, &mut game, opts.fault, &node, epoch, &mut outside)? {
                Recovery::Took(ms) => result.rto_ms.push(ms),
                Recovery::GameEnded => {}
                Recovery::TimedOut => {
                    result.unrecovered += 1;
                    result
                        .problems
                        .push(format!("no failover within {RECOVERY_WAIT:?} after the {} of {node}'s game (epoch {epoch})", opts.fault.name()));
                }
            }
            let pause = 50 + rng.below(250);
            std::thread::sleep(Duration::from_millis(pause));
        }
        let left = opts.inputs_per_game as u64 * opts.pace_us;
        let events = game.events.clone();
        let stderr = game.stderr_tail();
        let end = game.finish(&rig, Duration::from_micros(left) + Duration::from_secs(120))?;
        if !end.success || end.output.is_empty() {
            result.failed_games += 1;
            result
                .problems
                .push(format!("game {game_no}: the client failed: {stderr}"));
        }
        if end.lost_inputs > 0 {
            result.problems.push(format!(
                "game {game_no}: {} inputs lost or doubled: got {} want {}",
                end.lost_inputs, end.output, end.reference
            ));
        }
        result.lost_inputs += end.lost_inputs;
        let client = hosts_events::read(&events);
        let v = hosts_events::violations(&agent_events(&rig), &client, &outside);
        result.split_brain += v.len() as u64;
        result.problems.extend(v);
    }
    Ok(result)
}

/// How a fault ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recovery {
    /// The client had output of a newer epoch this many ms after the fault.
    Took(f64),
    /// None within [`RECOVERY_WAIT`].
    TimedOut,
    /// The client ended first (its game was over).
    GameEnded,
}

/// One fault on `node` (leading `epoch`) and the failover (see [`Recovery`]). The host or game is restored afterwards (heal and restart; SIGCONT once
/// its agent had a moment to kill it). What was done from outside goes to `outside`.
pub fn fault_and_recover(
    rig: &mut HostsRig,
    game: &mut HeadlessGame,
    fault: Fault,
    node: &str,
    epoch: u64,
    outside: &mut Vec<Outside>,
) -> anyhow::Result<Recovery> {
    let mut stopped = None;
    let t0 = match fault {
        Fault::Kill => {
            let (t, pid) = rig.kill_game(node)?;
            outside.push(Outside::Killed { pid, t_us: t });
            t
        }
        Fault::Axe => {
            let t = rig.axe(node)?;
            outside.push(Outside::Axed {
                node: node.to_owned(),
                t_us: t,
            });
            t
        }
        Fault::Stop => {
            let (t, pid) = rig.stop_game(node)?;
            outside.push(Outside::Stopped { pid, t_us: t });
            stopped = Some(pid);
            t
        }
    };
    let recovered = wait_for("a new epoch at the client", RECOVERY_WAIT, || {
        Ok(
            hosts_events::first_output_above(&game.client_events(), epoch)
                .map(|(t, _)| Recovery::Took(t.saturating_sub(t0) as f64 / 1000.0))
                .or_else(|| (!game.running()).then_some(Recovery::GameEnded)),
        )
    })
    .unwrap_or(Recovery::TimedOut);
    match fault {
        Fault::Kill => {}
        Fault::Axe => {
            rig.heal()?;
            rig.restart_dead()?;
        }
        Fault::Stop => {
            if let Some(pid) = stopped {
                // Its agent kills it when deposed; give it that moment before continuing.
                let _ = wait_for("the stopped game's end", Duration::from_secs(3), || {
                    Ok(
                        (!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid))
                            .then_some(()),
                    )
                });
                let t = rig.cont(pid);
                outside.push(Outside::Continued { pid, t_us: t });
            }
        }
    }
    Ok(recovered)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.starts_with(" Z")))
}
