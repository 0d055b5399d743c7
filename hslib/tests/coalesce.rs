//! A primary whose spare reads slowly takes 300,000 async checkpoints: the snapshots the
//! sender has no time for are merged into the one waiting for it instead of queueing, so the
//! process's memory stays within a fixed bound (it grew by a staging buffer per checkpoint
//! before), the spare ends with the primary's last state, and once the primary stops the
//! stream catches up within about one write (it used to replay the whole backlog).

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use hslib::replica::{Replica, ReplicaConfig};
use hslib::session::serve_spare;
use hslib::transport::{Endpoint, UnixEndpoint, unix};
use hslib::{Backend, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role};

const REGION: RegionId = RegionId(4);
const CHECKPOINTS: u32 = 300_000;
/// What the slow spare waits before each read.
const READ_DELAY: Duration = Duration::from_micros(500);
/// The most the process may grow by over the run: the region is one page, so this is the
/// pool, the queue and the allocator's slack, many times over.
const GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// A spare's end that waits before every read, as a slow network would.
struct Slow(UnixEndpoint);

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(READ_DELAY);
        self.0.read(buf)
    }
}

impl Write for Slow {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Endpoint for Slow {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }

    fn try_clone_endpoint(&self) -> io::Result<Box<dyn Endpoint>> {
        self.0.try_clone_endpoint()
    }

    fn shutdown(&self) -> io::Result<()> {
        self.0.shutdown()
    }

    fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.as_fd()
    }
}

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[test]
fn a_slow_spare_costs_bounded_memory_and_catches_up_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("socks");
    let spare_dir = socks.clone();
    let measured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = std::sync::Arc::clone(&measured);
    let spare = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ep = loop {
            match unix::connect(&spare_dir, "c") {
                Ok(ep) => break ep,
                Err(e) if Instant::now() > deadline => panic!("the spare cannot connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let mut slow = Slow(ep);
        let mut replica = Replica::new(ReplicaConfig::default());
        let _ = serve_spare(&mut replica, &mut slow, Duration::from_secs(5));
        let first = replica.image()?.region(REGION.0)?.get(..4)?;
        Some(u32::from_le_bytes(first.try_into().ok()?))
    });
    let outcome = HotSpare::new("coalesce")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .mode(Mode::Async)
        .spare_wait(Duration::ZERO)
        .link(LinkConfig::Unix {
            dir: socks,
            name: "c".to_owned(),
        })
        .worker(move |ctx| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ctx.link_stats().live {
                assert!(Instant::now() < deadline, "the spare never connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            let before = status_kib("VmHWM");
            let start = Instant::now();
            let mut max_pending = 0;
            for i in 0..CHECKPOINTS {
                let bytes = ctx.region_mut(REGION)?.as_bytes_mut();
                bytes[..4].copy_from_slice(&i.to_le_bytes());
                ctx.checkpoint()?;
                max_pending = max_pending.max(ctx.link_stats().pending);
            }
            let took = start.elapsed();
            let flush = Instant::now();
            ctx.flush()?;
            let catch_up = flush.elapsed();
            let grown = status_kib("VmHWM").saturating_sub(before);
            let stats = ctx.link_stats();
            *out.lock().map_err(|_| "poisoned")? =
                Some((grown, took, catch_up, stats, max_pending));
            Ok(())
        })
        .run()
        .expect("the primary's run");
    assert!(matches!(outcome, Outcome::Finished { .. }), "{outcome:?}");
    let last = spare.join().expect("the spare thread");
    assert_eq!(
        last,
        Some(CHECKPOINTS - 1),
        "the spare's image is the last checkpoint's"
    );
    let (grown, took, catch_up, stats, max_pending) = measured
        .lock()
        .expect("lock")
        .take()
        .expect("the worker measured");
    eprintln!(
        "grew {grown} KiB over {CHECKPOINTS} checkpoints in {took:?}; caught up in {catch_up:?}; \
         {stats:?}; at most {max_pending} pending"
    );
    assert!(
        grown < GROWTH_BOUND_KIB,
        "the peak RSS grew by {grown} KiB over {CHECKPOINTS} checkpoints"
    );
    assert!(
        stats.coalesced > 0,
        "the slow spare never made the sender fall behind: {stats:?}"
    );
    // Every checkpoint was accounted for: written, or merged into one that was.
    assert_eq!(stats.pending, 0, "{stats:?}");
    // The backlog is one merged snapshot, not every checkpoint the sender had no time for.
    assert!(
        catch_up < took / 4,
        "catching up took {catch_up:?} after {took:?} of checkpoints"
    );
}
