//! Round trips checkpoint -> replica -> promote through the public API, with real processes:
//! a primary and a spare (this test binary re-executed in each role) over a Unix socket, for
//! the copy and fork strategies and every tracker. The primary's worker builds a linked list
//! of absolute pointers in a region, writes a file registered with refresh, registers a
//! signal handler by name, checkpoints after every step in sync mode, records what it expects
//! and waits to be killed; the test SIGKILLs it; the spare is promoted and its worker (the
//! same function, called directly) checks the list, the file offset and the handler.
//!
//! Also: a log written with `LinkConfig::File` resumes with `Role::Resume`.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hslib::meta::{Handler, SignalFlags};
use hslib::{Context, HotSpare, Outcome, RegionId, Role, WorkerResult};
use nix::sys::signal::Signal;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const LIST: RegionId = RegionId(900);
const BULK: RegionId = RegionId(901);
const BULK_LEN: usize = 1 << 20;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Root {
    head: u64,
    steps: u64,
    log_fd: i64,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Node {
    next: u64,
    value: u64,
}

static HANDLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    HANDLED.store(true, Ordering::SeqCst);
}

/// Walks the list through its absolute pointers; returns (length, sum of values).
fn walk(ctx: &Context) -> Result<(u64, u64), hslib::WorkerError> {
    let region = ctx.region(LIST)?;
    let mut at = region.get(region.root::<Root>()?)?.head;
    let (mut n, mut sum) = (0u64, 0u64);
    while at != 0 {
        let node = region.get(region.slot_at::<Node>(at as usize)?)?;
        n += 1;
        sum = sum.wrapping_mul(31).wrapping_add(node.value);
        at = node.next;
    }
    Ok((n, sum))
}

fn summary(ctx: &Context) -> Result<String, hslib::WorkerError> {
    let (n, sum) = walk(ctx)?;
    let root = *ctx.get(LIST, ctx.root::<Root>(LIST)?)?;
    let bulk = crc32c::crc32c(ctx.region(BULK)?.as_bytes());
    // SAFETY: lseek on a descriptor number has no memory-safety preconditions.
    let offset = unsafe { libc::lseek(root.log_fd as i32, 0, libc::SEEK_CUR) };
    Ok(format!(
        "steps={} nodes={n} sum={sum} bulk={bulk:08x} offset={offset}",
        root.steps
    ))
}

/// The log opened before `run()` (`RT_EARLY_FD`), so it holds a low descriptor number.
static EARLY_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn open_log() -> Result<i32, hslib::WorkerError> {
    let path = std::env::var("RT_LOG")?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let fd = file.as_raw_fd();
    std::mem::forget(file);
    Ok(fd)
}

fn init(ctx: &mut Context) -> WorkerResult {
    let early = EARLY_FD.load(Ordering::SeqCst);
    let fd = if early >= 0 { early } else { open_log()? };
    ctx.fds().register_file(fd, "log", true)?;
    ctx.signals()
        .register(Signal::SIGUSR1, "usr1", SignalFlags::default(), &[])?;
    ctx.place(
        LIST,
        Root {
            head: 0,
            steps: 0,
            log_fd: i64::from(fd),
        },
    )?;
    Ok(())
}

fn step(ctx: &mut Context, i: u64) -> WorkerResult {
    let region = ctx.region_mut(LIST)?;
    let root_slot = region.root::<Root>()?;
    let head = region.get(root_slot)?.head;
    let node = region.alloc(Node {
        next: head,
        value: i * 7 + 1,
    })?;
    let addr = region.addr_of(node) as u64;
    let root = region.get_mut(root_slot)?;
    root.head = addr;
    root.steps = i;
    let log_fd = root.log_fd as i32;
    // Scattered runs of 1 to 4 pages in the bulk region.
    let bulk = ctx.region_mut(BULK)?.as_bytes_mut();
    let pages = BULK_LEN / 4096;
    for k in 0..3u64 {
        let page = ((i * 37 + k * 101) as usize) % (pages - 4);
        let len = 4096 * (1 + (i + k) as usize % 4);
        bulk[page * 4096..page * 4096 + len].fill((i + k) as u8);
    }
    let line = format!("step {i}\n");
    // SAFETY: writing a buffer we own to a descriptor number.
    let n = unsafe { libc::write(log_fd, line.as_ptr().cast(), line.len()) };
    assert_eq!(n, line.len() as isize);
    ctx.checkpoint()?;
    Ok(())
}

fn worker(ctx: &mut Context) -> WorkerResult {
    let steps: u64 = std::env::var("RT_STEPS")?.parse()?;
    let out = std::env::var("RT_OUT")?;
    if ctx.restored().is_some() {
        // Promoted: the library's own descriptors survived the restore (a checkpoint works),
        // then report what was restored, and that the handler came back by name.
        ctx.checkpoint()?;
        HANDLED.store(false, Ordering::SeqCst);
        nix::sys::signal::raise(Signal::SIGUSR1)?;
        let s = format!(
            "{} handler={}",
            summary(ctx)?,
            HANDLED.load(Ordering::SeqCst)
        );
        std::fs::write(out, s)?;
        return Ok(());
    }
    if std::env::var_os("RT_WAIT_SPARE").is_some() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctx.link_stats().synced {
            assert!(Instant::now() < deadline, "no spare synced");
            std::thread::sleep(Duration::from_millis(1));
            ctx.checkpoint()?;
        }
    }
    for i in 1..=steps {
        step(ctx, i)?;
    }
    if std::env::var_os("RT_SETTLE").is_some() {
        // Lazy mode: the spare converges to the last checkpoint on the sender's schedule,
        // with no call from the worker; the test kills the primary only once it has.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = ctx.link_stats();
            if s.synced && s.pending == 0 && s.acked == s.last_written {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the spare never caught up: {s:?}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    std::fs::write(&out, summary(ctx)?)?;
    if std::env::var_os("RT_HANG").is_some() {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(())
}

fn hot_spare() -> HotSpare {
    let hs = HotSpare::new("roundtrip")
        .region(LIST, 64 << 10)
        .region(BULK, BULK_LEN)
        .init(init)
        .worker(worker);
    // SAFETY: the handler only stores to an atomic.
    unsafe { hs.signal_handler("usr1", Handler::plain(on_usr1)) }.expect("define handler")
}

/// Runs one role from the environment (the test binary re-executed by the tests below).
#[test]
#[ignore = "runs only as a child of the round-trip tests"]
fn child_role() {
    if !common::in_child() {
        return;
    }
    if std::env::var_os("RT_TRACE").is_some() {
        let role = std::env::var("HS_ROLE").unwrap_or_default();
        let sub = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        tracing::info!(role, "child starting");
    }
    if std::env::var_os("RT_EARLY_FD").is_some()
        && std::env::var("HS_ROLE").as_deref() == Ok("primary")
    {
        EARLY_FD.store(open_log().expect("open the log early"), Ordering::SeqCst);
    }
    let mut hs = hot_spare().from_env().expect("environment");
    if let Ok(log) = std::env::var("RT_RESUME") {
        hs = hs.role(Role::Resume(log.into()));
    }
    match hs.run().expect("run") {
        Outcome::Finished { .. } => {}
        Outcome::PrimaryFinished { checkpoint } => {
            let out = std::env::var("RT_GOODBYE").expect("a spare expecting a goodbye");
            std::fs::write(out, format!("{checkpoint:?}")).expect("write");
        }
        Outcome::Dropped { checkpoint } => {
            panic!("dropped at {checkpoint:?}, but no spare here misses a deadline")
        }
        Outcome::Dismissed { checkpoint } => {
            panic!("dismissed at {checkpoint:?}, but no promote descriptor was given")
        }
    }
}

fn spawn_role(envs: &[(&str, &str)]) -> Child {
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
    cmd.spawn().expect("spawning a role")
}

fn wait_for_file(path: &Path, child: &mut Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return s;
        }
        if let Ok(Some(status)) = child.try_wait() {
            // One last look: it may have written and exited.
            if let Ok(s) = std::fs::read_to_string(path)
                && !s.is_empty()
            {
                return s;
            }
            panic!("{what} exited with {status} before writing {path:?}");
        }
        assert!(Instant::now() < deadline, "{what} never wrote {path:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn round_trip(strategy: &str, tracker: &str) {
    round_trip_with(strategy, tracker, &[]);
}

fn round_trip_with(strategy: &str, tracker: &str, extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let log = dir.path().join("app.log");
    let expect = dir.path().join("expect");
    let actual = dir.path().join("actual");
    let sock_s = sock.to_str().expect("utf-8 path");
    let log_s = log.to_str().expect("utf-8 path");
    let common_env = [
        ("HS_TRANSPORT", "unix"),
        ("HS_SOCKET_DIR", sock_s),
        ("HS_SOCKET_NAME", "rt"),
        ("HS_MODE", "sync"),
        ("HS_STRATEGY", strategy),
        ("HS_TRACKER", tracker),
        ("RT_LOG", log_s),
        ("RT_STEPS", "40"),
    ];
    let mut common_env = common_env.to_vec();
    common_env.extend_from_slice(extra);
    let mut primary_env = common_env.clone();
    primary_env.extend([
        ("HS_ROLE", "primary"),
        ("RT_OUT", expect.to_str().expect("utf-8")),
        ("RT_HANG", "1"),
    ]);
    let mut primary = spawn_role(&primary_env);
    let mut spare_env = common_env.clone();
    spare_env.extend([
        ("HS_ROLE", "spare"),
        ("RT_OUT", actual.to_str().expect("utf-8")),
    ]);
    let mut spare = spawn_role(&spare_env);
    let expected = wait_for_file(&expect, &mut primary, "primary");
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap the primary");
    let got = wait_for_file(&actual, &mut spare, "spare");
    let status = spare.wait().expect("reap the spare");
    assert!(status.success(), "spare: {status}");
    assert_eq!(
        got,
        format!("{expected} handler=true"),
        "{strategy}/{tracker}: the promoted spare's state differs from the primary's last checkpoint"
    );
    assert!(expected.starts_with("steps=40 nodes=40 "), "{expected}");
    // The file offset was restored: the log holds 40 lines and the offset is at its end.
    let len = std::fs::metadata(&log).expect("log").len();
    assert!(
        got.contains(&format!("offset={len}")),
        "{got} vs length {len}"
    );
}

/// The primary's log holds the lowest free descriptor (opened before `run()`); in the spare
/// that number is free until the restore, which must not land on a descriptor the library
/// opened for itself (the tracker's userfaultfd, say): the promoted spare checkpoints on.
#[test]
fn a_restored_descriptor_never_lands_on_one_of_the_librarys() {
    round_trip_with("copy", "uffd", &[("RT_EARLY_FD", "1")]);
}

#[test]
fn copy_round_trip_with_uffd() {
    round_trip("copy", "uffd");
}

#[test]
fn copy_round_trip_with_mprotect() {
    round_trip("copy", "mprotect");
}

#[test]
fn copy_round_trip_with_full() {
    round_trip("copy", "full");
}

/// Lazy mode: the checkpoints go out on the sender's schedule (within 2 ms); once the spare
/// has converged, a killed primary's spare resumes with exactly its last checkpoint.
#[test]
fn lazy_copy_round_trip_with_uffd() {
    round_trip_with(
        "copy",
        "uffd",
        &[
            ("HS_MODE", "lazy"),
            ("HS_MAX_LAG_US", "2000"),
            ("RT_WAIT_SPARE", "1"),
            ("RT_SETTLE", "1"),
        ],
    );
}

/// Lazy mode with the `full` tracker, the game's: the report made once stands for every
/// checkpoint, and the snapshots come from a stocked pool.
#[test]
fn lazy_copy_round_trip_with_full() {
    round_trip_with(
        "copy",
        "full",
        &[
            ("HS_MODE", "lazy"),
            ("HS_MAX_LAG_US", "2000"),
            ("RT_WAIT_SPARE", "1"),
            ("RT_SETTLE", "1"),
        ],
    );
}

#[test]
fn cbw_round_trip_with_uffd() {
    round_trip("cbw", "uffd");
}

#[test]
fn cbw_round_trip_with_mprotect() {
    round_trip("cbw", "mprotect");
}

#[test]
fn cbw_round_trip_with_full() {
    round_trip("cbw", "full");
}

#[test]
fn fork_round_trip_with_uffd() {
    round_trip("fork", "uffd");
}

#[test]
fn fork_round_trip_with_mprotect() {
    round_trip("fork", "mprotect");
}

#[test]
fn fork_round_trip_with_full() {
    round_trip("fork", "full");
}

#[test]
fn a_checkpoint_log_resumes_where_the_primary_died() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cpt = dir.path().join("cpt.log");
    let log = dir.path().join("app.log");
    let expect = dir.path().join("expect");
    let actual = dir.path().join("actual");
    let env = [
        ("HS_ROLE", "standalone"),
        ("HS_TRANSPORT", "file"),
        ("HS_LOG_FILE", cpt.to_str().expect("utf-8")),
        ("HS_MODE", "sync"),
        ("RT_LOG", log.to_str().expect("utf-8")),
        ("RT_STEPS", "25"),
        ("RT_OUT", expect.to_str().expect("utf-8")),
        ("RT_HANG", "1"),
    ];
    let mut first = spawn_role(&env);
    let expected = wait_for_file(&expect, &mut first, "first run");
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let mut resume_env: Vec<_> = env
        .iter()
        .copied()
        .filter(|(k, _)| !matches!(*k, "HS_ROLE" | "HS_TRANSPORT" | "RT_HANG" | "RT_OUT"))
        .collect();
    resume_env.push(("RT_RESUME", cpt.to_str().expect("utf-8")));
    resume_env.push(("RT_OUT", actual.to_str().expect("utf-8")));
    let mut resumed = spawn_role(&resume_env);
    let got = wait_for_file(&actual, &mut resumed, "resumed run");
    assert!(resumed.wait().expect("reap").success());
    assert_eq!(got, format!("{expected} handler=true"));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("log");
    f.write_all(b"").expect("log still writable");
}

/// A primary that finishes on purpose says goodbye: its spare exits instead of taking over,
/// in async mode too, where the spare's acks may meet a closed socket before it has read
/// the goodbye.
#[test]
fn a_spare_whose_primary_finishes_exits_instead_of_taking_over() {
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("sock");
        let log = dir.path().join("app.log");
        let expect = dir.path().join("expect");
        let goodbye = dir.path().join("goodbye");
        let base = [
            ("HS_TRANSPORT", "unix"),
            ("HS_SOCKET_DIR", sock.to_str().expect("utf-8")),
            ("HS_SOCKET_NAME", "bye"),
            ("HS_MODE", "async"),
            ("RT_LOG", log.to_str().expect("utf-8")),
            ("RT_STEPS", "400"),
            ("RT_OUT", expect.to_str().expect("utf-8")),
            ("RT_GOODBYE", goodbye.to_str().expect("utf-8")),
        ];
        let mut spare_env = base.to_vec();
        spare_env.push(("HS_ROLE", "spare"));
        let mut spare = spawn_role(&spare_env);
        let mut primary_env = base.to_vec();
        primary_env.extend([("HS_ROLE", "primary"), ("RT_WAIT_SPARE", "1")]);
        let mut primary = spawn_role(&primary_env);
        assert!(primary.wait().expect("primary").success());
        let status = spare.wait().expect("spare");
        assert!(
            status.success(),
            "round {round}: the spare failed: {status}"
        );
        let said = std::fs::read_to_string(&goodbye).unwrap_or_default();
        assert!(
            said.starts_with("Some("),
            "round {round}: the spare did not end on the primary's goodbye ({said:?})"
        );
    }
}

/// One spare at a time: a second spare that connects replaces the first, which is told
/// goodbye and exits instead of taking over from a live primary.
#[test]
fn a_replaced_spare_exits_instead_of_taking_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("sock");
    let log = dir.path().join("app.log");
    let expect = dir.path().join("expect");
    let first_bye = dir.path().join("first");
    let base = [
        ("HS_TRANSPORT", "unix"),
        ("HS_SOCKET_DIR", sock.to_str().expect("utf-8")),
        ("HS_SOCKET_NAME", "two"),
        ("HS_MODE", "sync"),
        ("RT_LOG", log.to_str().expect("utf-8")),
        ("RT_STEPS", "20"),
        ("RT_OUT", expect.to_str().expect("utf-8")),
    ];
    let mut primary_env = base.to_vec();
    primary_env.extend([("HS_ROLE", "primary"), ("RT_HANG", "1")]);
    let mut first_env = base.to_vec();
    first_env.extend([
        ("HS_ROLE", "spare"),
        ("RT_GOODBYE", first_bye.to_str().expect("utf-8")),
    ]);
    let mut first = spawn_role(&first_env);
    let mut primary = spawn_role(&primary_env);
    wait_for_file(&expect, &mut primary, "primary");
    // The second spare replaces the first while the primary idles.
    let second_bye = dir.path().join("second");
    let mut second_env = base.to_vec();
    second_env.extend([
        ("HS_ROLE", "spare"),
        ("RT_GOODBYE", second_bye.to_str().expect("utf-8")),
    ]);
    let mut second = spawn_role(&second_env);
    let status = first.wait().expect("first spare");
    assert!(status.success(), "the replaced spare failed: {status}");
    let said = std::fs::read_to_string(&first_bye).unwrap_or_default();
    assert!(
        said.starts_with("Some("),
        "the replaced spare did not end on a goodbye: {said:?}"
    );
    assert!(
        primary.try_wait().expect("primary").is_none(),
        "the primary must still run"
    );
    second.kill().expect("kill second spare");
    second.wait().expect("reap second spare");
    primary.kill().expect("kill primary");
    primary.wait().expect("reap primary");
}
