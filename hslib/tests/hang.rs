//! Hang detection with real processes: an idle primary's stream carries heartbeats; a spare
//! whose primary is SIGSTOPped reports the silence on its report descriptor (and that it
//! hears again after SIGCONT) without taking over; a sync primary whose spare is SIGSTOPped
//! gets its checkpoint back within the ack deadline, unacked, drops that spare (which exits
//! on SIGCONT instead of taking over) and syncs a fresh one.
//!
//! The other role of each pair is this test binary re-executed (`child_role`).

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hslib::link::{Link, StreamParams};
use hslib::replica::Replica;
use hslib::transport::Endpoint;
use hslib::wire::{self, Body, FrameKind, Hello};
use hslib::{Backend, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The silence test's application (primary: a child; spare: in this process).
const SILENCE_APP: &str = "hang-silence";
const SILENCE_REGION: RegionId = RegionId(960);
/// The sync deadline test's application (primary: in this process; spares: children).
const SYNC_APP: &str = "hang-sync";
const SYNC_REGION: RegionId = RegionId(961);
const DEADLINE: Duration = Duration::from_millis(300);
/// Far longer than anything here takes on a loaded machine; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

fn app(name: &str, region: RegionId) -> HotSpare<bool> {
    HotSpare::new(name)
        .region(region, 4096)
        .tracker(Backend::Full)
        .init(move |ctx| {
            ctx.place(region, 0u64)?;
            Ok(())
        })
        .worker(move |ctx| {
            if ctx.restored().is_some() {
                return Ok(true);
            }
            // A primary child: sync its spare, say so, then idle without checkpoints
            // until it is killed.
            let deadline = Instant::now() + PATIENCE;
            while !ctx.link_stats().synced {
                assert!(Instant::now() < deadline, "no spare synced");
                std::thread::sleep(Duration::from_millis(2));
                ctx.checkpoint()?;
            }
            std::fs::write(std::env::var("HANG_SYNCED")?, "synced")?;
            loop {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
}

/// Runs one role from the environment (the test binary re-executed by the tests below).
#[test]
#[ignore = "runs only as a child of the hang tests"]
fn child_role() {
    if !common::in_child() {
        return;
    }
    let hs = match std::env::var("HANG_APP").as_deref() {
        Ok(SYNC_APP) => app(SYNC_APP, SYNC_REGION),
        _ => app(SILENCE_APP, SILENCE_REGION),
    };
    match hs.from_env().expect("environment").run().expect("run") {
        Outcome::Finished { .. } => {
            if let Ok(out) = std::env::var("HANG_PROMOTED") {
                std::fs::write(out, "promoted").expect("write");
            }
        }
        Outcome::PrimaryFinished { checkpoint } => {
            let out = std::env::var("HANG_GOODBYE").expect("a spare expecting a goodbye");
            std::fs::write(out, format!("finished {checkpoint:?}")).expect("write");
        }
        Outcome::Dropped { checkpoint } => {
            let out = std::env::var("HANG_GOODBYE").expect("a spare expecting a goodbye");
            std::fs::write(out, format!("dropped {checkpoint:?}")).expect("write");
        }
        Outcome::Dismissed { checkpoint } => {
            panic!("dismissed at {checkpoint:?}, but no promote descriptor was given")
        }
    }
}

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn spawn<K: AsRef<OsStr>, V: AsRef<OsStr>>(&mut self, envs: &[(K, V)]) -> usize {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args([
            "child_role",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(common::CHILD_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.0.push(cmd.spawn().expect("spawning a role"));
        self.0.len() - 1
    }

    fn pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.0[i].id() as i32)
    }

    fn signal(&self, i: usize, sig: Signal) {
        kill(self.pid(i), sig).unwrap_or_else(|e| panic!("{sig} to child {i}: {e}"));
    }

    /// Waits for child `i` to exit; panics past `PATIENCE`.
    fn wait(&mut self, i: usize) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.0[i].try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {i} did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGSTOPs `pid` and waits until it is stopped (the signal is delivered asynchronously: a
/// process running on another CPU goes on for a moment).
fn stop(pid: Pid) {
    kill(pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP to {pid}: {e}"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state == Some('T') {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never stopped: {stat:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{path:?} never written");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn unix_link(dir: &Path, name: &str) -> LinkConfig {
    LinkConfig::Unix {
        dir: dir.to_owned(),
        name: name.to_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// A spare's stream on which the primary writes nothing after the hello still carries
/// frames: heartbeats, numbered in the session, one per heartbeat interval.
#[test]
fn an_idle_stream_carries_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let params = StreamParams {
        epoch: 3,
        first_checkpoint: 1,
        hello: Hello {
            page_size: 4096,
            regions: Vec::new(),
        },
        sync_sink: false,
        heartbeat: Some(Duration::from_millis(20)),
        log_max_bytes: None,
        delivery: hslib::link::Delivery::Woken,
        ack_spin: hslib::transport::spin::DEFAULT_SPIN,
    };
    let link = Link::open(&unix_link(&sock, "hb"), params).expect("link");
    let mut ep = hslib::transport::unix::connect(&sock, "hb").expect("connect");
    ep.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut replica = Replica::default();
    let hello = wire::read_frame(&mut ep).expect("read").expect("the hello");
    let ack = replica.accept(hello).expect("hello").expect("its ack");
    let (epoch, seq) = replica.take_ack_slot().expect("a session");
    wire::write_ack(&mut ep, epoch, seq, &ack).expect("ack the hello");
    let mut heard = Vec::new();
    for sequence in 1..=5 {
        let f = wire::read_frame(&mut ep)
            .expect("a frame within the read timeout: an idle stream is not silent")
            .expect("the stream is open");
        assert_eq!(
            (f.header.kind, f.header.epoch, f.header.sequence),
            (FrameKind::Heartbeat, 3, sequence)
        );
        assert_eq!(f.body, Body::Heartbeat);
        replica.accept(f).expect("the replica accepts it");
        heard.push(replica.last_heard().expect("heard"));
    }
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "{heard:?}");
    drop(ep);
    link.finish().expect("finish");
}

/// A spare whose primary is SIGSTOPped writes `{"silent_ms":N}` (N at least the suspect
/// time) on its report descriptor, and `{"heard":true}` once the primary continues; while
/// the primary is merely idle (heartbeats) it reports nothing, and silence never promotes
/// it: it takes over only when the primary is killed.
#[test]
fn a_stopped_primarys_silence_is_reported_and_cleared() {
    // Twenty heartbeat intervals: a loaded machine does not make a live primary look silent.
    let suspect = Duration::from_millis(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let synced = dir.path().join("synced");
    let mut kids = Children::default();
    let primary = kids.spawn(&[
        ("HANG_APP", SILENCE_APP),
        ("HS_ROLE", "primary"),
        ("HS_TRANSPORT", "unix"),
        ("HS_SOCKET_DIR", s(&sock)),
        ("HS_SOCKET_NAME", "silence"),
        ("HS_HEARTBEAT_MS", "20"),
        ("HANG_SYNCED", s(&synced)),
    ]);
    let (read, write) = nix::unistd::pipe().expect("pipe");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(read)).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let report_fd = write.as_raw_fd();
    let link = unix_link(&sock, "silence");
    let spare = std::thread::spawn(move || {
        app(SILENCE_APP, SILENCE_REGION)
            .role(Role::Spare)
            .link(link)
            .suspect(suspect)
            .silence_fd(Some(report_fd))
            .spare_wait(PATIENCE)
            .run()
            .map_err(|e| e.to_string())
    });
    wait_for_file(&synced);
    // The spare says once that it holds the session's first whole checkpoint...
    let line = lines.recv_timeout(PATIENCE).expect("the holding line");
    assert!(
        line.starts_with("{\"holding\":") && line.ends_with(",\"epoch\":1}"),
        "not a holding line: {line:?}"
    );
    // ... and then, idle, heartbeating: no report over several suspect times.
    if let Ok(line) = lines.recv_timeout(suspect * 4) {
        panic!("a spare of an idle but live primary reported {line:?}");
    }
    stop(kids.pid(primary));
    let line = lines.recv_timeout(PATIENCE).expect("a silence report");
    let ms: u64 = line
        .strip_prefix("{\"silent_ms\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a silence report: {line:?}"));
    assert!(ms >= suspect.as_millis() as u64, "{line}");
    eprintln!("silence reported after {ms} ms (suspect {suspect:?})");
    assert!(!spare.is_finished(), "a silent primary made the spare stop");
    kids.signal(primary, Signal::SIGCONT);
    let line = lines.recv_timeout(PATIENCE).expect("a recovery report");
    assert_eq!(line, "{\"heard\":true}");
    assert!(
        !spare.is_finished(),
        "the spare stopped after its primary came back"
    );
    kids.0[primary].kill().expect("SIGKILL the primary");
    kids.wait(primary);
    let deadline = Instant::now() + PATIENCE;
    while !spare.is_finished() {
        assert!(Instant::now() < deadline, "the spare never took over");
        std::thread::sleep(Duration::from_millis(5));
    }
    match spare.join().expect("the spare's thread") {
        Ok(Outcome::Finished { value: true, .. }) => {}
        other => panic!("the spare did not take over: {other:?}"),
    }
    drop(write);
}

/// What the sync primary's worker saw.
#[derive(Debug)]
struct SyncReport {
    /// The checkpoint taken while the spare was stopped, and how long it took.
    stalled: hslib::Checkpoint,
    took: Duration,
    /// Checkpoints taken after it before the spare continued, none acked.
    after: u64,
    /// The first spare's exit and what it wrote.
    first_status: std::process::ExitStatus,
    /// The fresh spare's checkpoint, acked.
    fresh: hslib::Checkpoint,
}

/// In sync mode a checkpoint whose spare is SIGSTOPped returns once the ack deadline passes
/// (not acked, the spare reported dropped), later checkpoints go on without a spare; the
/// stopped spare, continued, exits on the goodbye it was sent instead of taking over; a
/// fresh spare then joins and acks.
#[test]
fn a_sync_checkpoint_drops_a_stopped_spare_at_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let first_bye = dir.path().join("first-goodbye");
    let first_promoted = dir.path().join("first-promoted");
    let second_bye = dir.path().join("second-goodbye");
    let spare_env = |bye: &Path, promoted: &Path| -> Vec<(String, String)> {
        [
            ("HANG_APP", SYNC_APP),
            ("HS_ROLE", "spare"),
            ("HS_TRANSPORT", "unix"),
            ("HS_SOCKET_DIR", s(&sock)),
            ("HS_SOCKET_NAME", "sync"),
            ("HANG_GOODBYE", s(bye)),
            ("HANG_PROMOTED", s(promoted)),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    };
    let second_env = spare_env(&second_bye, &dir.path().join("second-promoted"));
    let mut kids = Children::default();
    let first = kids.spawn(&spare_env(&first_bye, &first_promoted));
    let first_pid = kids.pid(first);
    let kids = std::sync::Arc::new(std::sync::Mutex::new(kids));
    let in_worker = std::sync::Arc::clone(&kids);
    let outcome = HotSpare::new(SYNC_APP)
        .region(SYNC_REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .mode(Mode::Sync)
        .link(unix_link(&sock, "sync"))
        .ack_deadline(Some(DEADLINE))
        .spare_wait(PATIENCE)
        .init(|ctx| {
            ctx.place(SYNC_REGION, 0u64)?;
            Ok(())
        })
        .worker(move |ctx| {
            let count = ctx.root::<u64>(SYNC_REGION)?;
            let step = |ctx: &mut hslib::Context| -> Result<hslib::Checkpoint, hslib::HsError> {
                *ctx.get_mut(SYNC_REGION, count)? += 1;
                ctx.checkpoint()
            };
            let deadline = Instant::now() + PATIENCE;
            while !step(ctx)?.acked {
                assert!(Instant::now() < deadline, "the first spare never acked");
            }
            stop(first_pid);
            // Without a deadline the checkpoint below would wait for ever: a watchdog kills
            // the stopped spare after PATIENCE, so such a failure shows as a slow checkpoint.
            let (done, watchdog) = mpsc::channel::<()>();
            std::thread::spawn(move || {
                if watchdog.recv_timeout(PATIENCE) == Err(mpsc::RecvTimeoutError::Timeout) {
                    let _ = kill(first_pid, Signal::SIGKILL);
                }
            });
            let started = Instant::now();
            let stalled = step(ctx)?;
            let took = started.elapsed();
            let _ = done.send(());
            let mut after = 0;
            for _ in 0..50 {
                let c = step(ctx)?;
                assert!(!c.acked, "a checkpoint was acked with no spare");
                after += 1;
            }
            kill(first_pid, Signal::SIGCONT)?;
            let mut kids = in_worker.lock().unwrap_or_else(|e| e.into_inner());
            let first_status = kids.wait(first);
            kids.spawn(&second_env);
            drop(kids);
            let deadline = Instant::now() + PATIENCE;
            let fresh = loop {
                let c = step(ctx)?;
                if c.acked {
                    break c;
                }
                assert!(Instant::now() < deadline, "the fresh spare never acked");
                std::thread::sleep(Duration::from_millis(2));
            };
            Ok(SyncReport {
                stalled,
                took,
                after,
                first_status,
                fresh,
            })
        })
        .run()
        .expect("the primary's run");
    let Outcome::Finished { value: report, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    eprintln!(
        "the checkpoint with a stopped spare returned after {:?} (deadline {DEADLINE:?})",
        report.took
    );
    assert!(
        !report.stalled.acked && report.stalled.spare_dropped,
        "{report:?}"
    );
    assert!(
        report.took >= DEADLINE && report.took < DEADLINE * 10,
        "the checkpoint with a stopped spare took {:?} (deadline {DEADLINE:?})",
        report.took
    );
    assert_eq!(report.after, 50);
    assert!(report.first_status.success(), "{report:?}");
    let said = std::fs::read_to_string(&first_bye).unwrap_or_default();
    assert!(
        said.starts_with("dropped Some("),
        "the dropped spare did not end on a goodbye saying it was dropped ({said:?})"
    );
    assert!(!first_promoted.exists(), "the dropped spare took over");
    assert!(report.fresh.acked && !report.fresh.spare_dropped);
    // The primary finished: its fresh spare was told goodbye too.
    let mut kids = kids.lock().unwrap_or_else(|e| e.into_inner());
    let status = kids.wait(1);
    assert!(status.success(), "the fresh spare: {status}");
    let said = wait_for_file(&second_bye);
    assert!(
        said.starts_with("finished Some("),
        "the fresh spare was not told the primary finished, or held no checkpoint ({said:?})"
    );
}
