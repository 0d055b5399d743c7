//! Test support shared by hslib's integration tests: the global lock for process-global
//! state, child processes of the test binary, and the exactness oracle.

#![allow(dead_code)]

pub mod oracle;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use hslib::RegionId;

/// Serialises tests that fork or change signal dispositions, as nix's test suite does.
static GLOBAL: Mutex<()> = Mutex::new(());

/// Takes the process-global lock (a panicking holder does not poison it for the others).
pub fn global_lock() -> MutexGuard<'static, ()> {
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicU32 = AtomicU32::new(100);

/// A region id no other test in this binary uses.
pub fn fresh_id() -> RegionId {
    RegionId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Set in the environment of a test binary re-executed by [`run_child`].
pub const CHILD_ENV: &str = "HSLIB_TEST_CHILD";

/// Whether this process was started by [`run_child`]; child-only tests return at once
/// otherwise, so `cargo test -- --ignored` cannot run their process-altering steps in the
/// test runner itself.
pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the `#[ignore]`d test `name` of this test binary in a fresh process with `envs`,
/// and asserts that exactly that test ran and passed.
pub fn run_child(name: &str, envs: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("HS_TRACKER");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawning the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child test {name} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    out
}

/// A spare's end of a connection that waits before every read, or before every write, as a
/// slow spare or network would.
pub struct Delayed<E> {
    /// The endpoint.
    pub inner: E,
    /// Waited before each read.
    pub before_read: std::time::Duration,
    /// Waited before each write (the spare's answers).
    pub before_write: std::time::Duration,
}

impl<E: hslib::transport::Endpoint> std::io::Read for Delayed<E> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.before_read);
        self.inner.read(buf)
    }
}

impl<E: hslib::transport::Endpoint> std::io::Write for Delayed<E> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.before_write);
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        std::thread::sleep(self.before_write);
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<E: hslib::transport::Endpoint> hslib::transport::Endpoint for Delayed<E> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }

    fn try_clone_endpoint(&self) -> std::io::Result<Box<dyn hslib::transport::Endpoint>> {
        self.inner.try_clone_endpoint()
    }

    fn shutdown(&self) -> std::io::Result<()> {
        self.inner.shutdown()
    }

    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.as_fd()
    }
}

/// A spare's connection to the primary listening as `name` in `dir`, retried while the
/// primary starts (at most 20 s).
pub fn connect_spare(dir: &std::path::Path, name: &str) -> hslib::transport::UnixEndpoint {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match hslib::transport::unix::connect(dir, name) {
            Ok(ep) => return ep,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the spare never reached the primary: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}
