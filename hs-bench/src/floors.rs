//! `hs-bench floors`: what the hardware allows, measured in this process, so every other figure
//! can be given as a ratio to its floor from the same run (the machines are shared; absolute
//! times drift 2-3x between days, ratios much less).
//!
//! - **memcpy**: copying the dirty bytes (a share of a region, in runs of four pages, as the
//!   paper's experiment dirties them) into a warm destination: the floor of a copy checkpoint.
//! - **hand-off**: copying 4 KiB and waking a thread asleep on a futex (a `Condvar`), timed on
//!   the waker's side: the floor of an async checkpoint of one page handed to a sender thread.
//! - **sync round trip**: `write(2)` of 4 KiB into a Unix socket that another process drains,
//!   and its 1-byte answer: the floor of a sync checkpoint.
//! - **kill to EOF**: `SIGKILL` of a child process until its peer reads end of file: the floor
//!   of a local failover's detection.
//!
//! The peer processes are this executable re-run as `hs-bench floor-peer MODE` (hidden); a
//! program that uses this module as a library answers `floor-peer MODE` with [`run_peer`]
//! (`failover-harness floor-peer`, for [`kill_to_eof`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pages::{PAGE, PageBuf};

/// Pages per dirty run (the paper's experiment dirties sets of four contiguous pages).
const RUN_PAGES: usize = 4;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct FloorOptions {
    /// Region size for the memcpy floor.
    pub region_bytes: usize,
    /// Share of its pages dirty, percent (1 to 100).
    pub dirty_pct: usize,
    /// Pause between two measurements (0: back to back; 50 ms: a person's pace, caches cold).
    pub gap: Duration,
    /// Measurements per floor (the kill floor takes a tenth, at least 10).
    pub samples: usize,
}

/// One floor's distribution.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Floor {
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Measurements taken.
    pub samples: usize,
}

/// All four floors of one run.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Floors {
    /// Copying the dirty bytes into a warm buffer.
    pub memcpy: Floor,
    /// Bytes copied per memcpy measurement.
    pub memcpy_bytes: usize,
    /// Copy 4 KiB and wake a sleeping thread.
    pub handoff: Floor,
    /// 4 KiB to a draining process and its 1-byte answer.
    pub sync_round_trip: Floor,
    /// SIGKILL of a child to its peer's end of file.
    pub kill_to_eof: Floor,
    /// The pause between measurements, microseconds.
    pub gap_us: u64,
}

/// Why a floor could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> FloorError {
    move |source| FloorError::Io { what, source }
}

/// Measures the four floors.
pub fn measure(opts: &FloorOptions) -> Result<Floors, FloorError> {
    if !(1..=100).contains(&opts.dirty_pct) {
        return Err(FloorError::Options(format!(
            "--dirty-pct {}: give 1 to 100",
            opts.dirty_pct
        )));
    }
    if opts.region_bytes < RUN_PAGES * PAGE || opts.samples == 0 {
        return Err(FloorError::Options(format!(
            "the region ({} bytes) must hold one run of {RUN_PAGES} pages, and --samples be > 0",
            opts.region_bytes
        )));
    }
    let (memcpy, memcpy_bytes) = memcpy_floor(opts);
    Ok(Floors {
        memcpy,
        memcpy_bytes,
        handoff: handoff_floor(opts)?,
        sync_round_trip: sync_floor(opts)?,
        kill_to_eof: kill_to_eof((opts.samples / 10).max(10), opts.gap)?,
        gap_us: u64::try_from(opts.gap.as_micros()).unwrap_or(u64::MAX),
    })
}

/// Runs of dirty pages: every run of [`RUN_PAGES`] pages whose turn comes at `pct` percent.
fn dirty_runs(region_bytes: usize, pct: usize) -> Vec<usize> {
    let runs = region_bytes / (RUN_PAGES * PAGE);
    // Bresenham-style spread: run k is dirty when the running share crosses a whole run.
    (0..runs)
        .filter(|k| (k + 1) * pct / 100 != k * pct / 100)
        .map(|k| k * RUN_PAGES * PAGE)
        .collect()
}

fn memcpy_floor(opts: &FloorOptions) -> (Floor, usize) {
    let mut src = PageBuf::filled(opts.region_bytes, 1);
    let runs = dirty_runs(opts.region_bytes, opts.dirty_pct);
    let run_bytes = RUN_PAGES * PAGE;
    let bytes = runs.len() * run_bytes;
    // Warm: allocated, written once, and re-used by every measurement; both buffers start
    // on a page, as a checkpoint's region and staging do (see `pages`).
    let mut dst = PageBuf::filled(bytes.max(1), 2);
    let mut times = Vec::with_capacity(opts.samples);
    for i in 0..opts.samples + 1 {
        // The application writes its pages between checkpoints.
        for &off in &runs {
            for p in 0..RUN_PAGES {
                src[off + p * PAGE] = i as u8;
            }
        }
        pause(opts.gap);
        let t = Instant::now();
        for (j, &off) in runs.iter().enumerate() {
            dst[j * run_bytes..(j + 1) * run_bytes].copy_from_slice(&src[off..off + run_bytes]);
        }
        std::hint::black_box(&mut dst);
        let spent = t.elapsed();
        // The first pass warms the caches' view of the code; not counted.
        if i > 0 {
            times.push(spent);
        }
    }
    (summarise(&mut times), bytes)
}

struct Mailbox {
    page: PageBuf,
    full: bool,
    quit: bool,
}

/// The hand-off floor alone (`opts.samples` measurements, `opts.gap` apart).
pub fn handoff_floor(opts: &FloorOptions) -> Result<Floor, FloorError> {
    let shared = Arc::new((
        Mutex::new(Mailbox {
            page: PageBuf::filled(PAGE, 0),
            full: false,
            quit: false,
        }),
        Condvar::new(),
        Condvar::new(),
    ));
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let (lock, wake, done) = &*shared;
            let mut m = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                while !m.full && !m.quit {
                    m = wake
                        .wait(m)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if m.quit {
                    return;
                }
                std::hint::black_box(&m.page);
                m.full = false;
                done.notify_one();
            }
        })
    };
    let src = PageBuf::filled(PAGE, 7);
    let mut times = Vec::with_capacity(opts.samples);
    let (lock, wake, done) = &*shared;
    for i in 0..opts.samples + 1 {
        // Let the worker fall asleep in its wait.
        pause(opts.gap.max(Duration::from_micros(200)));
        let t = Instant::now();
        {
            let mut m = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.page.copy_from_slice(&src);
            m.full = true;
        }
        wake.notify_one();
        let spent = t.elapsed();
        if i > 0 {
            times.push(spent);
        }
        let mut m = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while m.full {
            m = done
                .wait(m)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .quit = true;
    wake.notify_one();
    // A panicked worker has nothing more to say.
    let _ = worker.join();
    Ok(summarise(&mut times))
}

/// A peer process: this executable as `floor-peer MODE`, its stdin one end of a socket pair.
fn peer(mode: &str) -> Result<(Child, UnixStream), FloorError> {
    let exe = std::env::current_exe().map_err(io("finding hs-bench's own executable"))?;
    let (ours, theirs) = UnixStream::pair().map_err(io("making a socket pair"))?;
    let child = Command::new(exe)
        .args(["floor-peer", mode])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .map_err(io("starting a peer process"))?;
    Ok((child, ours))
}

/// The sync round-trip floor alone (`opts.samples` measurements, `opts.gap` apart); the
/// peer is this executable as `floor-peer drain-ack` (see [`run_peer`]).
pub fn sync_floor(opts: &FloorOptions) -> Result<Floor, FloorError> {
    let (mut child, mut sock) = peer("drain-ack")?;
    let page = PageBuf::filled(PAGE, 3);
    let mut ack = [0u8; 1];
    let mut times = Vec::with_capacity(opts.samples);
    let mut run = || -> Result<(), FloorError> {
        for i in 0..opts.samples + 1 {
            pause(opts.gap);
            let t = Instant::now();
            sock.write_all(&page).map_err(io("writing to the drain"))?;
            sock.read_exact(&mut ack)
                .map_err(io("reading the drain's ack"))?;
            let spent = t.elapsed();
            if i > 0 {
                times.push(spent);
            }
        }
        Ok(())
    };
    let result = run();
    drop(sock);
    // The peer ends at end of file; a kill covers one that does not.
    let _ = child.kill();
    let _ = child.wait();
    result?;
    Ok(summarise(&mut times))
}

/// The kill-to-EOF floor on its own: `n` times, a peer process (this executable as
/// `floor-peer hold`, its stdin one end of a socket pair) says it is ready, `gap` passes, and
/// it is SIGKILLed; the time until this end reads end of file is one measurement.
pub fn kill_to_eof(n: usize, gap: Duration) -> Result<Floor, FloorError> {
    let n = n.max(1);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut child, mut sock) = peer("hold")?;
        let mut ready = [0u8; 1];
        sock.read_exact(&mut ready)
            .map_err(io("waiting for the peer to start"))?;
        pause(gap);
        let t = Instant::now();
        child.kill().map_err(io("killing the peer"))?;
        let mut buf = [0u8; 16];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNRESET also says the peer is gone.
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        break;
                    }
                    return Err(FloorError::Io {
                        what: "reading from the killed peer",
                        source: e,
                    });
                }
            }
        }
        times.push(t.elapsed());
        child.wait().map_err(io("reaping the peer"))?;
    }
    Ok(summarise(&mut times))
}

/// The peer side (`hs-bench floor-peer MODE`): `drain-ack` reads 4 KiB and answers one byte
/// until end of file; `hold` says it is ready and waits to be killed.
pub fn run_peer(mode: &str) -> Result<(), FloorError> {
    use std::os::fd::AsFd as _;
    // stdin is our end of the socket pair.
    let mut sock = UnixStream::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating stdin"))?,
    );
    match mode {
        "drain-ack" => {
            let mut page = PageBuf::filled(PAGE, 0);
            loop {
                match sock.read_exact(&mut page) {
                    Ok(()) => sock.write_all(b"k").map_err(io("answering"))?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => {
                        return Err(FloorError::Io {
                            what: "draining",
                            source: e,
                        });
                    }
                }
            }
        }
        "hold" => {
            sock.write_all(b"r").map_err(io("saying ready"))?;
            let mut buf = [0u8; 1];
            // Blocks until killed (or the other end goes).
            let _ = sock.read(&mut buf);
            Ok(())
        }
        other => Err(FloorError::Options(format!(
            "floor-peer {other:?}: expected drain-ack or hold"
        ))),
    }
}

pub(crate) fn pause(gap: Duration) {
    if !gap.is_zero() {
        std::thread::sleep(gap);
    }
}

pub(crate) fn summarise(times: &mut [Duration]) -> Floor {
    times.sort_unstable();
    let at = |p: f64| {
        if times.is_empty() {
            return 0.0;
        }
        // Nearest rank.
        let i = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
        // Nanosecond resolution, no float noise in the JSON.
        (times[i].as_secs_f64() * 1e9).round() / 1e3
    };
    Floor {
        p50_us: at(0.5),
        p99_us: at(0.99),
        samples: times.len(),
    }
}

impl Floors {
    /// A table for people.
    pub fn report(&self) -> String {
        let row = |name: &str, f: &Floor, what: &str| {
            format!(
                "{name:<16} p50 {:>9.2} us  p99 {:>9.2} us  ({} samples; {what})\n",
                f.p50_us, f.p99_us, f.samples
            )
        };
        let mut s = format!("floors, {} us between measurements\n", self.gap_us);
        s += &row(
            "memcpy",
            &self.memcpy,
            &format!("{} dirty bytes into a warm buffer", self.memcpy_bytes),
        );
        s += &row(
            "hand-off",
            &self.handoff,
            "copy 4 KiB + wake a sleeping thread",
        );
        s += &row(
            "sync round trip",
            &self.sync_round_trip,
            "4 KiB to a draining process + 1-byte ack",
        );
        s += &row(
            "kill to EOF",
            &self.kill_to_eof,
            "SIGKILL to the peer's end of file",
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_runs_cover_the_share_in_runs_of_four_pages() {
        let region = 4 << 20;
        for pct in [1, 10, 25, 50, 100] {
            let runs = dirty_runs(region, pct);
            let share = runs.len() * RUN_PAGES * PAGE * 100 / region;
            assert!(share.abs_diff(pct) <= 1, "{pct}%: {share}%");
            assert!(runs.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut t: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let f = summarise(&mut t);
        assert_eq!(
            (f.p50_us.round(), f.p99_us.round(), f.samples),
            (50.0, 99.0, 100)
        );
    }
}
