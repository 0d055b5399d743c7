//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use failover_harness::cluster::bench_hosts::Fault;
use failover_harness::link::Transport;
use hslib::Mode;

/// Primary and spare Tetris: axe the primary, keep playing.
#[derive(Debug, Parser)]
#[command(name = "failover-harness", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A headless game with a primary and a spare, killed at chosen inputs; prints what
    /// `tetris --headless` prints for the same game.
    Run(RunArgs),
    /// Plays on this terminal with a primary and a spare; the axe key (^X) kills the
    /// primary, and the game goes on.
    Play(PlayArgs),
    /// SIGKILLs the primary of the running `play` session.
    Axe(SessionArgs),
    /// Shows the running `play` session's primary, spare, epoch, failovers and checkpoints.
    Status(StatusArgs),
    /// Times failovers: SIGKILL of the primary to the promoted spare's first output.
    BenchFailover(BenchArgs),
    /// Cluster mode, one per host: runs this host's game (primary or spare) as etcd decides,
    /// and serves the session's client (see docs/CLUSTER.md).
    Agent(AgentArgs),
    /// Cluster mode: plays a session whose game runs on whichever host leads (see
    /// docs/CLUSTER.md); headless with --headless --script FILE.
    Client(ClientArgs),
    /// Runs a game process (`tetris ARGS`); the harness starts its games this way.
    #[command(hide = true)]
    Game {
        /// The `tetris` arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A peer process of `bench-failover`'s kill-to-EOF floor (`hs-bench floor-peer`).
    #[command(hide = true)]
    FloorPeer {
        /// hold (or drain-ack).
        mode: String,
    },
}

/// `--async` / `--sync`.
#[derive(Debug, Args, Clone, Copy)]
#[group(multiple = false)]
pub struct ModeArgs {
    /// Checkpoints return once taken (the default).
    #[arg(long = "async")]
    pub async_mode: bool,
    /// Checkpoints return once the spare acknowledged them.
    #[arg(long = "sync")]
    pub sync_mode: bool,
}

impl ModeArgs {
    /// The mode asked for.
    pub fn mode(self) -> Mode {
        if self.sync_mode {
            Mode::Sync
        } else {
            Mode::Async
        }
    }
}

/// `run`'s options.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct RunArgs {
    /// The game's seed.
    #[arg(long, value_name = "N")]
    pub seed: u64,
    /// The level, 1 to 9.
    #[arg(short = 'l', value_name = "L")]
    pub level: Option<OsString>,
    /// The command keys (`tetris -k`).
    #[arg(short = 'k', value_name = "KEYS", allow_hyphen_values = true)]
    pub keys: Option<OsString>,
    /// The inputs: one per byte, `.` the fall timer, newlines skipped.
    #[arg(long, value_name = "FILE")]
    pub script: PathBuf,
    /// SIGKILL the primary right after the Nth input was sent (0: before the first).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub kill_after: Vec<u64>,
    /// SIGKILL the primary at K points drawn from the script's inputs.
    #[arg(long, value_name = "K", requires = "kill_seed")]
    pub kill_random: Option<u64>,
    /// The seed the random kill points are drawn from.
    #[arg(long, value_name = "S", requires = "kill_random")]
    pub kill_seed: Option<u64>,
    /// How primary and spare reach each other.
    #[arg(long, value_enum, default_value = "unix")]
    pub transport: Transport,
    /// Write the game's stats plus "failovers" and "rto_ms" here (one JSON line).
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// async or sync checkpoints.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// Kill a primary that writes no status line for MS milliseconds (stopped, hung) and
    /// fail over, when its spare holds a checkpoint; 0: never.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub hang_ms: u64,
}

/// A `--hang-ms` value as the engine takes it (0: never).
pub fn hang_deadline(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// `play`'s options. As with tetris, an option given twice takes its last value.
#[derive(Debug, Args)]
#[command(args_override_self = true, after_help = STATUS_ROW_HELP)]
pub struct PlayArgs {
    /// The game's seed (default: from the OS).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// async or sync checkpoints.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// How primary and spare reach each other.
    #[arg(long, value_enum, default_value = "unix")]
    pub transport: Transport,
    /// Axe the primary every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub chaos: Option<f64>,
    /// tetris -b: black and white.
    #[arg(short = 'b')]
    pub black_and_white: bool,
    /// tetris -p: show the next piece.
    #[arg(short = 'p')]
    pub preview: bool,
    /// tetris -k: the command keys.
    #[arg(short = 'k', value_name = "KEYS", allow_hyphen_values = true)]
    pub keys: Option<OsString>,
    /// tetris -l: the level, 1 to 9.
    #[arg(short = 'l', value_name = "L")]
    pub level: Option<OsString>,
    /// tetris --scores-file.
    #[arg(long, value_name = "PATH")]
    pub scores_file: Option<PathBuf>,
    /// Write the session's events (start, syncs, axes, deaths, promotions, recovery
    /// times) to FILE as they happen.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Kill a primary that writes no status line for MS milliseconds (stopped, hung) and
    /// fail over, when its spare holds a checkpoint; 0: never.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub hang_ms: u64,
    /// Cluster mode on this machine (root): etcd, two agent hosts and a client host in
    /// network namespaces; the client plays on this terminal, ^X axes the primary's game,
    /// the host-axe key its whole host (healed and restarted after a moment). The game's
    /// options apply; the single-machine ones (mode, transport, chaos, scores file, events,
    /// hang deadline) do not, and are refused with it.
    #[arg(
        long,
        conflicts_with_all = [
            "async_mode", "sync_mode", "transport", "chaos", "scores_file", "events", "hang_ms",
        ]
    )]
    pub hosts: bool,
}

/// `play --help`'s explanation of the status row.
const STATUS_ROW_HELP: &str = "\
The last row is the harness's; on narrow terminals the least important fields go first
(the stall's p99, the stall, the checkpoints, the lag and spare deaths, the epoch):
  ^X axe        Ctrl-X SIGKILLs the primary; its spare takes over
  failovers N   failovers so far (the last one's recovery time: SIGKILL to the promoted
                game's first byte on the screen)
  P / primary   the primary's pid
  S / spare     the spare's pid (`syncing` until it holds a checkpoint, `-` when none)
  ep / epoch    the primary's epoch (one more at each failover)
  ckpt          checkpoints taken in the session
  stall         the time the game stood still in its last checkpoint, and the p99
  lag           checkpoints the spare has not acknowledged
  sd            spares that died without taking over (each replaced)
`failover-harness status [--json|--events]` shows the same from another terminal.
^C ends the session (also during a failover); ^Z suspends it until `fg`.";

impl PlayArgs {
    /// The `tetris` arguments these options make.
    pub fn tetris_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(s) = self.seed {
            a.extend(["--seed".into(), s.to_string().into()]);
        }
        if self.black_and_white {
            a.push("-b".into());
        }
        if self.preview {
            a.push("-p".into());
        }
        if let Some(k) = &self.keys {
            a.extend(["-k".into(), k.clone()]);
        }
        if let Some(l) = &self.level {
            a.extend(["-l".into(), l.clone()]);
        }
        if let Some(f) = &self.scores_file {
            a.extend(["--scores-file".into(), f.clone().into_os_string()]);
        }
        a
    }
}

/// Which session.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The session's harness pid, when several run.
    #[arg(long, value_name = "PID")]
    pub session: Option<u32>,
}

/// `status`'s options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON line: {"primary_pid":N,"spare_pid":N,"epoch":N,"failovers":N,"checkpoints":N,
    /// "spare_deaths":N,"last_rto_ms":F,"lag":N,"stall_last_us":F,"stall_p99_us":F,
    /// "mode":S,"transport":S}; with --etcd: {"epoch":E,"primary":"NODE"|null,
    /// "spare":"NODE"|null,"failovers":N}.
    #[arg(long, conflicts_with = "events")]
    pub json: bool,
    /// The session's history: start, syncs, axes, deaths, promotions, recovery times.
    #[arg(long, conflicts_with = "etcd")]
    pub events: bool,
    /// A cluster session's status, read from etcd at these client URLs
    /// (http://IP:PORT[,...]); --session names it.
    #[arg(long, value_name = "URL", requires = "session")]
    pub etcd: Option<String>,
    /// Which session: the running `play` session's harness pid (when several run), or with
    /// --etcd the cluster session's name.
    #[arg(long, value_name = "PID|NAME")]
    pub session: Option<String>,
}

/// `agent`'s options.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// etcd's client URLs (http://IP:PORT[,...]).
    #[arg(long, value_name = "URL")]
    pub etcd: String,
    /// The session's name.
    #[arg(long, value_name = "S")]
    pub session: String,
    /// This node's name (unique in the session).
    #[arg(long, value_name = "N")]
    pub name: String,
    /// Where clients reach this agent; its game's stream listens on the next port.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: std::net::SocketAddr,
    /// The cluster's shared key (32 bytes or more, mode 600).
    #[arg(long, value_name = "F")]
    pub key_file: PathBuf,
    /// A spare that hears nothing from its primary this long, and whose client suspects it
    /// too, takes over before the lease expires (at least 10).
    #[arg(long, value_name = "MS", default_value_t = 150, value_parser = clap::value_parser!(u64).range(10..))]
    pub suspect_ms: u64,
    /// The lease's time to live, in seconds.
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl_s: i64,
    /// Write the agent's events (JSON lines, CLOCK_MONOTONIC microseconds) to FILE.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// The executable run as the game (`PATH game -- ARGS`); default: this one.
    #[arg(long, value_name = "PATH")]
    pub tetris: Option<PathBuf>,
}

/// `bench-failover`'s options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Failovers to time (at least 1).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// One JSON line: {"trials":N,"rto_ms_p50":F,"rto_ms_p99":F,"rto_ms_max":F,"lost_inputs":N}.
    #[arg(long)]
    pub json: bool,
    /// async or sync checkpoints.
    #[command(flatten)]
    pub mode: ModeArgs,
    /// How primary and spare reach each other.
    #[arg(long, value_enum, default_value = "unix")]
    pub transport: Transport,
    /// Across hosts (root): builds the namespace rig (etcd, agent hosts, a client host) and
    /// times the fault to the promoted game's first byte at the client. With --json:
    /// {"fault":F,"trials":N,"p50_ms":F,"p99_ms":F,"max_ms":F,"lost_inputs":N,"split_brain":N,...}.
    #[arg(long)]
    pub hosts: bool,
    /// With --hosts: what each trial does to the primary.
    #[arg(long, value_enum, default_value = "kill", requires = "hosts")]
    pub fault: Fault,
    /// With --hosts: agent hosts, 2 or 3.
    #[arg(long, default_value_t = 2, requires = "hosts", value_parser = clap::value_parser!(u8).range(2..=3))]
    pub hosts_n: u8,
    /// With --hosts: the agents' and client's --suspect-ms (a large value leaves an axe to
    /// the lease's expiry).
    #[arg(long, value_name = "MS", default_value_t = 150, requires = "hosts", value_parser = clap::value_parser!(u64).range(10..))]
    pub suspect_ms: u64,
}

/// `client`'s options. As with tetris, an option given twice takes its last value.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct ClientArgs {
    /// etcd's client endpoints, comma-separated (http://IP:PORT[,...]).
    #[arg(long, value_name = "URL[,URL]")]
    pub etcd: String,
    /// The session's name (letters, digits, '-', '_', '.').
    #[arg(long, value_name = "S")]
    pub session: String,
    /// The shared key's file (at least 32 bytes, not readable by group or others).
    #[arg(long, value_name = "F")]
    pub key_file: PathBuf,
    /// Hearing nothing from the leader for MS milliseconds writes suspect/<epoch> (the
    /// client's half of the fast path; at least 10: the leader's agent relays to this
    /// client only within two thirds of it after an echoed heartbeat).
    #[arg(long, value_name = "MS", default_value_t = 150, value_parser = clap::value_parser!(u64).range(10..))]
    pub suspect_ms: u64,
    /// Write the client's events (leader, first_output, refused, suspect, ended) to FILE as
    /// JSON lines with CLOCK_MONOTONIC microseconds.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// The game's seed (default: from the OS).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// tetris -l: the level, 1 to 9.
    #[arg(short = 'l', value_name = "L")]
    pub level: Option<OsString>,
    /// tetris -k: the command keys.
    #[arg(short = 'k', value_name = "KEYS", allow_hyphen_values = true)]
    pub keys: Option<OsString>,
    /// tetris -p: show the next piece.
    #[arg(short = 'p')]
    pub preview: bool,
    /// tetris -b: black and white.
    #[arg(short = 'b')]
    pub black_and_white: bool,
    /// Play a script without a terminal and print what `tetris --headless` prints.
    #[arg(long, requires = "script")]
    pub headless: bool,
    /// The headless inputs: one per byte, `.` the fall timer, newlines skipped.
    #[arg(long, value_name = "FILE", requires = "headless")]
    pub script: Option<PathBuf>,
    /// Wait U microseconds between two inputs of the script.
    #[arg(long, value_name = "U", default_value_t = 0, requires = "headless")]
    pub pace_us: u64,
    /// The host-axe key (^B) writes the leader's node name and a newline to this fd.
    #[arg(long, value_name = "N", hide = true)]
    pub axe_host_fd: Option<i32>,
    /// Headless, for tests: axe the leader's game right after the Nth input was given.
    #[arg(long, value_name = "N,...", value_delimiter = ',', hide = true)]
    pub axe_after: Vec<u64>,
}

impl ClientArgs {
    /// The `tetris` arguments these options make (`--headless` aside).
    pub fn tetris_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(s) = self.seed {
            a.extend(["--seed".into(), s.to_string().into()]);
        }
        if let Some(l) = &self.level {
            a.extend(["-l".into(), l.clone()]);
        }
        if let Some(k) = &self.keys {
            a.extend(["-k".into(), k.clone()]);
        }
        if self.preview {
            a.push("-p".into());
        }
        if self.black_and_white {
            a.push("-b".into());
        }
        a
    }
}
