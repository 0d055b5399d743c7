//! `hs-bench`: the paper's performance chapter on this machine.
//!
//! `hs-bench cbw-writes [--json]` measures what the `cbw` strategy moves onto the
//! application: the time to write every page of the dirty set right after `checkpoint()`
//! returns (the worst case), against the same writes after a `copy` checkpoint.
//!
//! `hs-bench paper [--json] [--out DIR] [--quick]` runs
//! (a) stall vs registered size, 64 KiB to 64 MiB, 10% of pages dirtied between checkpoints
//!     in sets of four contiguous pages, and
//! (b) stall vs dirty share, 1 to 95%, at 4 MiB,
//! for each strategy: `fork-full` (plain fork, every page shipped), `fork-incremental` (the
//! paper's cptfork), `copy-full` (a synchronous copy of everything to a pipe: the paper's
//! baseline), `copy-incremental`, `adaptive`, `cbw` (copy-before-write, uffd tracker),
//! `cbw-mprotect` (the same over the mprotect tracker), and `memcpy-limit` (copying just the dirty
//! bytes: the floor). The stall is the time inside `checkpoint()`; everything shipped is
//! drained by a reader on the other end of a socket pair, as the paper's pipe was.

mod bars;

use hs_bench::pages::{PAGE, PageBuf};
use hs_bench::{cold, floors};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hslib::track::Backend;
use hslib::{Context, HotSpare, LinkConfig, Mode, RegionId, Role, Strategy, WorkerResult};

#[derive(Debug, Parser)]
#[command(
    name = "hs-bench",
    version,
    about = "Checkpoint stall benchmarks (the paper's figures)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The paper's two experiments: stall vs registered size, and stall vs dirty share.
    Paper {
        /// One JSON object per measured point on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write results.csv and the two SVG charts into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Fewer checkpoints per point and sizes up to 4 MiB (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Only these strategies (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        strategies: Vec<String>,
        /// Microseconds the application idles between checkpoints (after the previous one
        /// is off the machine). 0 measures checkpoints back to back, with the link's thread
        /// and the reader still winding down on the other core.
        #[arg(long, value_name = "US", default_value_t = 1000)]
        gap_us: u64,
    },
    /// The floors every other figure is compared with, measured in this process: memcpy of
    /// the dirty bytes, the hand-off to a thread, the sync round trip, kill to end of file.
    Floors {
        /// One JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Microseconds between two measurements (50000: a person's pace, caches cold).
        #[arg(long, value_name = "US", default_value_t = 0)]
        gap_us: u64,
        /// Measurements per floor (the kill floor takes a tenth, at least 10).
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Region size for the memcpy floor, KiB.
        #[arg(long, value_name = "KIB", default_value_t = 4096)]
        region_kib: usize,
        /// Share of the region's pages dirty for the memcpy floor, percent.
        #[arg(long, value_name = "PCT", default_value_t = 10)]
        dirty_pct: usize,
    },
    /// What a short path pays for running cold, after the same pause as a checkpoint at a
    /// person's pace: a line of code, a page and a line of data, a 4 KiB copy (the bound of
    /// a lazy checkpoint, which makes no system call).
    Cold {
        /// One JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Microseconds before each measurement (50000: a person's pace).
        #[arg(long, value_name = "US", default_value_t = 50_000)]
        gap_us: u64,
        /// Measurements.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// A bar chart (SVG) of figures against their floors, from JSON lines
    /// `{"label":L,"p50":X,"p99":Y,"floor":F}` (p99 and floor optional).
    Bars {
        /// The JSON-lines file.
        input: PathBuf,
        /// The SVG file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "")]
        title: String,
        /// The unit of the figures, for the axis.
        #[arg(long, default_value = "us")]
        unit: String,
    },
    /// What cbw moves onto the application: every page of the dirty set written right
    /// after `checkpoint()` returns, timed, against the same after a copy checkpoint.
    CbwWrites {
        /// One JSON object per strategy on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Region size, KiB.
        #[arg(long, value_name = "KIB", default_value_t = 4096)]
        region_kib: usize,
        /// Share of the region's pages dirty, percent.
        #[arg(long, value_name = "PCT", default_value_t = 10)]
        dirty_pct: u32,
        /// Checkpoints per strategy.
        #[arg(long, default_value_t = 200)]
        checkpoints: usize,
        /// Microseconds the application idles between checkpoints.
        #[arg(long, value_name = "US", default_value_t = 1000)]
        gap_us: u64,
    },
    /// A peer process of `floors` (internal).
    #[command(hide = true)]
    FloorPeer {
        /// drain-ack or hold.
        mode: String,
    },
}

/// How one series is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    ForkFull,
    ForkIncremental,
    CopyFull,
    CopyIncremental,
    Adaptive,
    Cbw,
    CbwMprotect,
    MemcpyLimit,
}

const SERIES: [Series; 8] = [
    Series::ForkFull,
    Series::ForkIncremental,
    Series::CopyFull,
    Series::CopyIncremental,
    Series::Adaptive,
    Series::Cbw,
    Series::CbwMprotect,
    Series::MemcpyLimit,
];

impl Series {
    fn name(self) -> &'static str {
        match self {
            Series::ForkFull => "fork-full",
            Series::ForkIncremental => "fork-incremental",
            Series::CopyFull => "copy-full",
            Series::CopyIncremental => "copy-incremental",
            Series::Adaptive => "adaptive",
            Series::Cbw => "cbw",
            Series::CbwMprotect => "cbw-mprotect",
            Series::MemcpyLimit => "memcpy-limit",
        }
    }

    /// Strategy, mode and tracker (`None`: not through hslib).
    fn setup(self) -> Option<(Strategy, Mode, Backend)> {
        match self {
            Series::ForkFull => Some((Strategy::Fork, Mode::Async, Backend::Full)),
            Series::ForkIncremental => Some((Strategy::Fork, Mode::Async, Backend::Uffd)),
            // Sync over a sink without acks returns once everything is written to the pipe.
            Series::CopyFull => Some((Strategy::Copy, Mode::Sync, Backend::Full)),
            Series::CopyIncremental => Some((Strategy::Copy, Mode::Async, Backend::Uffd)),
            Series::Adaptive => Some((Strategy::Adaptive, Mode::Async, Backend::Uffd)),
            Series::Cbw => Some((Strategy::Cbw, Mode::Async, Backend::Uffd)),
            Series::CbwMprotect => Some((Strategy::Cbw, Mode::Async, Backend::Mprotect)),
            Series::MemcpyLimit => None,
        }
    }
}

/// One measured point.
#[derive(Debug, Clone, serde::Serialize)]
struct Point {
    experiment: &'static str,
    strategy: &'static str,
    region_bytes: u64,
    dirty_pct: u32,
    stall_us_p50: f64,
    stall_us_p99: f64,
    bytes_shipped: u64,
    /// p50 as a multiple of memcpy-limit's p50 at the same point, measured in the same
    /// rounds (when memcpy-limit is among the series).
    x_floor: Option<f64>,
}

const REGION: RegionId = RegionId(3000);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as one JSON line, or `report` (its table for people).
fn print(
    json: bool,
    value: &impl serde::Serialize,
    report: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string(value)?)?;
    } else {
        write!(stdout, "{report}")?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let (json, out, quick, strategies, gap_us) = match cli.command {
        Command::Paper {
            json,
            out,
            quick,
            strategies,
            gap_us,
        } => (json, out, quick, strategies, gap_us),
        Command::Floors {
            json,
            gap_us,
            samples,
            region_kib,
            dirty_pct,
        } => {
            let floors = floors::measure(&floors::FloorOptions {
                region_bytes: region_kib.saturating_mul(1024),
                dirty_pct,
                gap: Duration::from_micros(gap_us),
                samples,
            })?;
            return print(json, &floors, floors.report());
        }
        Command::Cold {
            json,
            gap_us,
            samples,
        } => {
            let cold = cold::measure(&cold::ColdOptions {
                gap: Duration::from_micros(gap_us),
                samples,
            })?;
            return print(json, &cold, cold.report());
        }
        Command::FloorPeer { mode } => return Ok(floors::run_peer(&mode)?),
        Command::Bars {
            input,
            out,
            title,
            unit,
        } => {
            let text =
                std::fs::read_to_string(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let bars = bars::parse(&text).map_err(|e| format!("{}: {e}", input.display()))?;
            return bars::draw(&out, &bars, &title, &unit);
        }
        Command::CbwWrites {
            json,
            region_kib,
            dirty_pct,
            checkpoints,
            gap_us,
        } => {
            let load = Load {
                size: region_kib.saturating_mul(1024).max(16 * PAGE),
                pct: dirty_pct,
                n: checkpoints,
                gap: Duration::from_micros(gap_us),
                seed: 0x9e37_79b9_7f4a_7c15,
            };
            let copy = rewrites(Strategy::Copy, &load)?;
            let cbw = rewrites(Strategy::Cbw, &load)?;
            let mut stdout = std::io::stdout().lock();
            for r in [&copy, &cbw] {
                if json {
                    writeln!(stdout, "{}", serde_json::to_string(r)?)?;
                } else {
                    writeln!(
                        stdout,
                        "{:<5} {:>6} KiB {:>3}%  stall p50 {:>7.1} us  rewrite p50 {:>7.1} us p99 {:>7.1} us  fault copies/checkpoint {:>6.1}  pages/checkpoint {:>5}",
                        r.strategy,
                        r.region_bytes / 1024,
                        r.dirty_pct,
                        r.stall_us_p50,
                        r.rewrite_us_p50,
                        r.rewrite_us_p99,
                        r.fault_copies_per_checkpoint,
                        r.pages_per_checkpoint
                    )?;
                }
            }
            let extra = cbw.rewrite_us_p50 - copy.rewrite_us_p50;
            if !json && cbw.fault_copies_per_checkpoint > 0.0 {
                writeln!(
                    stdout,
                    "cbw moves {extra:.1} us (p50) onto the rewrite: {:.2} us per faulting write; \
                     stall saved {:.1} us",
                    extra / cbw.fault_copies_per_checkpoint,
                    copy.stall_us_p50 - cbw.stall_us_p50
                )?;
            }
            return Ok(());
        }
    };
    let gap = Duration::from_micros(gap_us);
    let series: Vec<Series> = if strategies.is_empty() {
        SERIES.to_vec()
    } else {
        strategies
            .iter()
            .map(|n| {
                SERIES
                    .iter()
                    .copied()
                    .find(|s| s.name() == n)
                    .ok_or_else(|| {
                        let names: Vec<&str> = SERIES.iter().map(|s| s.name()).collect();
                        format!("unknown strategy {n:?}: choose from {}", names.join(", "))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    // The output directory is made (or found writable) before minutes of measuring.
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                let probe = dir.join(".hs-bench-write-test");
                std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe))
            })
            .map_err(|e| format!("--out {}: {e}", dir.display()))?;
    }
    let sizes: &[usize] = if quick {
        &[64 << 10, 256 << 10, 1 << 20, 4 << 20]
    } else {
        &[64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    };
    let shares = [1, 5, 10, 25, 50, 75, 95];
    let mut points = Vec::new();
    let mut emit = |p: Point| -> Result<(), Box<dyn std::error::Error>> {
        let mut stdout = std::io::stdout().lock();
        if json {
            writeln!(stdout, "{}", serde_json::to_string(&p)?)?;
        } else {
            writeln!(
                stdout,
                "{:<6} {:<17} {:>9} KiB {:>3}%  p50 {:>9.1} us  p99 {:>9.1} us  shipped {:>9} B{}",
                p.experiment,
                p.strategy,
                p.region_bytes / 1024,
                p.dirty_pct,
                p.stall_us_p50,
                p.stall_us_p99,
                p.bytes_shipped,
                p.x_floor
                    .map(|x| format!("  {x:>6.2}x memcpy-limit"))
                    .unwrap_or_default()
            )?;
        }
        points.push(p);
        Ok(())
    };
    for &size in sizes {
        for p in measure("size", &series, size, 10, quick, gap)? {
            emit(p)?;
        }
    }
    for &pct in &shares {
        for p in measure("dirty", &series, 4 << 20, pct, quick, gap)? {
            emit(p)?;
        }
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        write_csv(&dir.join("results.csv"), &points)?;
        chart(
            &dir.join("stall-vs-size.svg"),
            &points,
            "size",
            "Checkpoint stall vs registered size (10% dirty)",
            "registered size (KiB)",
        )?;
        chart(
            &dir.join("stall-vs-dirty.svg"),
            &points,
            "dirty",
            "Checkpoint stall vs dirty share (4 MiB)",
            "dirty pages (%)",
        )?;
    }
    Ok(())
}

/// Checkpoints per point: enough for a stable p99 where they are cheap.
fn iterations(size: usize, quick: bool) -> usize {
    match (quick, size) {
        (true, _) => 10,
        (false, s) if s <= 4 << 20 => 300,
        (false, s) if s <= 16 << 20 => 100,
        _ => 40,
    }
}

/// The dirty sets of one interval: `pct` percent of the pages, in sets of four contiguous
/// pages at random set positions (at least one set).
fn dirty_sets(pages: usize, pct: u32, rng: &mut u64) -> Vec<usize> {
    let sets = pages / 4;
    let want = ((pages as u64 * u64::from(pct)).div_ceil(400) as usize).clamp(1, sets);
    let mut all: Vec<usize> = (0..sets).collect();
    // Partial Fisher-Yates with xorshift: the first `want` entries are a random choice.
    for i in 0..want {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let j = i + (*rng as usize) % (sets - i);
        all.swap(i, j);
    }
    all.truncate(want);
    all.sort_unstable();
    all
}

fn touch(bytes: &mut [u8], sets: &[usize], stamp: u8) {
    for &set in sets {
        for p in 0..4 {
            bytes[(set * 4 + p) * PAGE] = stamp;
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Rounds per point: the strategies take turns, a slice of the checkpoints each, so that
/// the machine's slow and fast moments fall on all of them alike (the comparison is between
/// strategies, measured in the same stretch of time).
const ROUNDS: usize = 5;

/// Measures every series at one point.
fn measure(
    experiment: &'static str,
    series: &[Series],
    size: usize,
    pct: u32,
    quick: bool,
    gap: Duration,
) -> Result<Vec<Point>, Box<dyn std::error::Error>> {
    let per_round = iterations(size, quick).div_ceil(ROUNDS);
    let mut samples: Vec<(Vec<Duration>, u64)> = vec![(Vec::new(), 0); series.len()];
    for round in 0..ROUNDS {
        for (i, s) in series.iter().enumerate() {
            let load = Load {
                size,
                pct,
                n: per_round,
                gap,
                seed: 0x9e37_79b9_7f4a_7c15u64 ^ (round as u64 + 1),
            };
            let (stalls, shipped) = match s.setup() {
                None => memcpy_limit(&load),
                Some(setup) => through_hslib(setup, &load)?,
            };
            samples[i].0.extend(stalls);
            samples[i].1 = shipped;
        }
    }
    let mut points: Vec<Point> = series
        .iter()
        .zip(samples)
        .map(|(s, (mut stalls, shipped))| {
            stalls.sort_unstable();
            Point {
                experiment,
                strategy: s.name(),
                region_bytes: size as u64,
                dirty_pct: pct,
                stall_us_p50: percentile(&stalls, 0.5),
                stall_us_p99: percentile(&stalls, 0.99),
                bytes_shipped: shipped,
                x_floor: None,
            }
        })
        .collect();
    let floor = points
        .iter()
        .find(|p| p.strategy == Series::MemcpyLimit.name())
        .map(|p| p.stall_us_p50)
        .filter(|&f| f > 0.0);
    if let Some(floor) = floor {
        for p in &mut points {
            p.x_floor = Some(p.stall_us_p50 / floor);
        }
    }
    Ok(points)
}

/// One series' share of a point: the region size, the dirty share, how many checkpoints,
/// the idle time between them, and the dirty pattern's seed.
#[derive(Debug, Clone, Copy)]
struct Load {
    size: usize,
    pct: u32,
    n: usize,
    gap: Duration,
    seed: u64,
}

/// The floor: copying exactly the dirty pages into a reused buffer.
fn memcpy_limit(load: &Load) -> (Vec<Duration>, u64) {
    let Load {
        size,
        pct,
        n,
        gap,
        seed,
    } = *load;
    // Both start on a page, like a region and hslib's staging: two `malloc`ed buffers can
    // fall at a distance that makes `memcpy` 20x slower (see `hs_bench::pages`).
    let mut src = PageBuf::filled(size, 1);
    // Warm: every page of the destination written before the first measurement, and the
    // same destination re-used, so no copy pays a page fault.
    let mut dst = PageBuf::filled(size, 2);
    let mut rng = seed;
    let mut stalls = Vec::with_capacity(n);
    let mut shipped = 0;
    for i in 0..n + 1 {
        let sets = dirty_sets(size / PAGE, pct, &mut rng);
        touch(&mut src, &sets, i as u8);
        let t = Instant::now();
        for (j, &set) in sets.iter().enumerate() {
            dst[j * 4 * PAGE..(j + 1) * 4 * PAGE]
                .copy_from_slice(&src[set * 4 * PAGE..(set * 4 + 4) * PAGE]);
        }
        std::hint::black_box(&mut dst);
        let spent = t.elapsed();
        if i > 0 {
            stalls.push(spent);
            shipped = (sets.len() * 4 * PAGE) as u64;
        }
        idle(gap);
    }
    (stalls, shipped)
}

fn through_hslib(
    (strategy, mode, backend): (Strategy, Mode, Backend),
    load: &Load,
) -> Result<(Vec<Duration>, u64), Box<dyn std::error::Error>> {
    let Load {
        size,
        pct,
        n,
        gap,
        seed,
    } = *load;
    let outcome = HotSpare::new("hs-bench")
        .region(REGION, size)
        .strategy(strategy)
        .mode(mode)
        .tracker(backend)
        .role(Role::Standalone)
        .link(LinkConfig::Drain)
        .init(move |ctx: &mut Context| -> WorkerResult {
            // Populate every page, as an application's state would be.
            ctx.region_mut(REGION)?.as_bytes_mut().fill(1);
            Ok(())
        })
        .worker(
            move |ctx: &mut Context| -> WorkerResult<(Vec<Duration>, u64)> {
                ctx.flush()?;
                if strategy == Strategy::Adaptive {
                    ctx.calibrate();
                }
                let mut rng = seed;
                let mut stalls = Vec::with_capacity(n);
                let before = ctx.link_stats().bytes;
                for i in 0..n {
                    let sets = dirty_sets(size / PAGE, pct, &mut rng);
                    touch(ctx.region_mut(REGION)?.as_bytes_mut(), &sets, i as u8);
                    let t = Instant::now();
                    ctx.checkpoint()?;
                    stalls.push(t.elapsed());
                    // Each checkpoint is measured alone: the previous one is off the machine.
                    ctx.flush()?;
                    idle(gap);
                }
                let shipped = (ctx.link_stats().bytes - before) / n.max(1) as u64;
                Ok((stalls, shipped))
            },
        )
        .run()?;
    match outcome {
        hslib::Outcome::Finished { value, .. } => Ok(value),
        other => Err(format!("a standalone run ended as {other:?}").into()),
    }
}

/// What one strategy costs the application around a checkpoint when it rewrites the dirty
/// set at once.
#[derive(Debug, Clone, serde::Serialize)]
struct Rewrites {
    strategy: &'static str,
    region_bytes: u64,
    dirty_pct: u32,
    pages_per_checkpoint: usize,
    stall_us_p50: f64,
    rewrite_us_p50: f64,
    rewrite_us_p99: f64,
    /// Pages the fault handler copied (a write reached them before the sender), per
    /// checkpoint.
    fault_copies_per_checkpoint: f64,
}

/// Checkpoints `load.n` times with `strategy` (async, uffd tracker, drained link), each time
/// writing every page of the dirty set again right after `checkpoint()` returns.
fn rewrites(strategy: Strategy, load: &Load) -> Result<Rewrites, Box<dyn std::error::Error>> {
    let Load {
        size,
        pct,
        n,
        gap,
        seed,
    } = *load;
    let outcome = HotSpare::new("hs-bench")
        .region(REGION, size)
        .strategy(strategy)
        .mode(Mode::Async)
        .tracker(Backend::Uffd)
        .role(Role::Standalone)
        .link(LinkConfig::Drain)
        .init(move |ctx: &mut Context| -> WorkerResult {
            ctx.region_mut(REGION)?.as_bytes_mut().fill(1);
            Ok(())
        })
        .worker(move |ctx: &mut Context| -> WorkerResult<Rewrites> {
            ctx.flush()?;
            let mut rng = seed;
            let (mut stalls, mut writes) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let before = hslib::snapshot::cbw::stats().fault_copies;
            let mut pages = 0;
            for i in 0..n {
                let sets = dirty_sets(size / PAGE, pct, &mut rng);
                pages = sets.len() * 4;
                touch(ctx.region_mut(REGION)?.as_bytes_mut(), &sets, i as u8);
                let t = Instant::now();
                ctx.checkpoint()?;
                stalls.push(t.elapsed());
                let t = Instant::now();
                touch(ctx.region_mut(REGION)?.as_bytes_mut(), &sets, !(i as u8));
                writes.push(t.elapsed());
                ctx.flush()?;
                idle(gap);
            }
            let faults = hslib::snapshot::cbw::stats().fault_copies - before;
            stalls.sort_unstable();
            writes.sort_unstable();
            Ok(Rewrites {
                strategy: strategy.name(),
                region_bytes: size as u64,
                dirty_pct: pct,
                pages_per_checkpoint: pages,
                stall_us_p50: percentile(&stalls, 0.5),
                rewrite_us_p50: percentile(&writes, 0.5),
                rewrite_us_p99: percentile(&writes, 0.99),
                fault_copies_per_checkpoint: faults as f64 / n.max(1) as f64,
            })
        })
        .run()?;
    match outcome {
        hslib::Outcome::Finished { value, .. } => Ok(value),
        other => Err(format!("a standalone run ended as {other:?}").into()),
    }
}

/// The application's time between checkpoints.
fn idle(gap: Duration) {
    if !gap.is_zero() {
        std::thread::sleep(gap);
    }
}

fn write_csv(path: &Path, points: &[Point]) -> std::io::Result<()> {
    let mut s = String::from(
        "experiment,strategy,region_bytes,dirty_pct,stall_us_p50,stall_us_p99,bytes_shipped,x_floor\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.2},{:.2},{},{}",
            p.experiment,
            p.strategy,
            p.region_bytes,
            p.dirty_pct,
            p.stall_us_p50,
            p.stall_us_p99,
            p.bytes_shipped,
            p.x_floor.map(|x| format!("{x:.3}")).unwrap_or_default()
        );
    }
    std::fs::write(path, s)
}

/// A log-log (size) or log-linear (dirty share) chart of p50 stall per strategy, one line
/// each, drawn like the paper's figures.
fn chart(
    path: &Path,
    points: &[Point],
    experiment: &str,
    title: &str,
    x_label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let pts: Vec<&Point> = points
        .iter()
        .filter(|p| p.experiment == experiment)
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let x_of = |p: &Point| {
        if experiment == "size" {
            p.region_bytes as f64 / 1024.0
        } else {
            f64::from(p.dirty_pct)
        }
    };
    let (xmin, xmax) = pts
        .iter()
        .map(|p| x_of(p))
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = pts
        .iter()
        .map(|p| p.stall_us_p50.max(0.1))
        .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    let colours = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc("stall p50 (us, log)")
                .draw()?;
            for (i, s) in SERIES.iter().enumerate() {
                let line: Vec<(f64, f64)> = pts
                    .iter()
                    .filter(|p| p.strategy == s.name())
                    .map(|p| (x_of(p), p.stall_us_p50.max(0.1)))
                    .collect();
                if line.is_empty() {
                    continue;
                }
                let c = colours[i % colours.len()];
                chart
                    .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))?
                    .label(s.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
                chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    let y = (ymin / 2.0..ymax * 2.0).log_scale();
    if experiment == "size" {
        draw!(builder.build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), y)?);
    } else {
        draw!(builder.build_cartesian_2d(0.0..100.0, y)?);
    }
    root.present()?;
    Ok(())
}
