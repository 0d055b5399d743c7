//! Choosing a backend: probing, the `HS_TRACKER` override, the log line, the fallback to
//! mprotect when userfaultfd is unavailable (blocked with seccomp in a child process), and
//! userfaultfd in an unprivileged process.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::oracle::Oracle;
use common::{fresh_id, in_child, run_child};
use hslib::internals::Source;
use hslib::track::{self, TrackError, UffdTracker};
use hslib::{Backend, Region, Tracker};

/// A `tracing` writer collecting everything into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Runs `f` with a subscriber that records INFO and above; returns `f`'s result and the log.
fn with_log<R>(f: impl FnOnce() -> R) -> (R, String) {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    (r, buf.text())
}

/// The oracle over 4 KiB, 1 MiB and 64 MiB regions with `tracker`.
fn oracle_sizes(tracker: &mut dyn Tracker) {
    for len in [4096, 1 << 20, 64 << 20] {
        let r = Region::map(fresh_id(), len).expect("map");
        r.set_huge_pages(false).expect("madvise");
        tracker.register(&r).expect("register");
        let mut o = Oracle::new(r, len as u64);
        let what = format!("{} {len} bytes", tracker.backend());
        o.run(tracker, 3, 100, &what);
        tracker.unregister(o.region.id()).expect("unregister");
    }
}

#[test]
fn probing_here_selects_uffd_and_logs_the_choice() {
    let (t, log) = with_log(track::probe);
    assert_eq!(t.backend(), Backend::Uffd);
    assert!(log.contains("dirty-page tracker selected"), "log: {log}");
    assert!(
        log.contains("backend=\"uffd\"") || log.contains("backend=uffd"),
        "log: {log}"
    );
    assert!(log.contains("INFO"), "log: {log}");
}

#[test]
fn hs_tracker_selects_each_backend_and_the_log_says_so() {
    for name in ["uffd", "mprotect", "full"] {
        let out = run_child(
            "child_select_follows_hs_tracker",
            &[("HS_TRACKER", name), ("EXPECT_BACKEND", name)],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("selected={name}")), "{stdout}");
    }
}

#[test]
#[ignore = "runs only as a child of hs_tracker_selects_each_backend_and_the_log_says_so"]
fn child_select_follows_hs_tracker() {
    if !in_child() {
        return;
    }
    let want: Backend = std::env::var("EXPECT_BACKEND")
        .expect("EXPECT_BACKEND")
        .parse()
        .expect("backend name");
    let (t, log) = with_log(track::select);
    let t = t.expect("select");
    assert_eq!(t.backend(), want);
    assert!(log.contains(&format!("backend={want}")), "log: {log}");
    assert!(log.contains("HS_TRACKER"), "log: {log}");
    println!("selected={}", t.backend());
}

#[test]
fn hs_tracker_naming_no_backend_is_an_error() {
    run_child(
        "child_select_rejects_unknown_hs_tracker",
        &[("HS_TRACKER", "sparse")],
    );
}

#[test]
#[ignore = "runs only as a child of hs_tracker_naming_no_backend_is_an_error"]
fn child_select_rejects_unknown_hs_tracker() {
    if !in_child() {
        return;
    }
    let err = track::select().expect_err("an unknown name must fail");
    assert!(
        matches!(&err, TrackError::BadOverride { value } if value == "sparse"),
        "{err}"
    );
}

/// Installs a seccomp filter on every thread that makes `userfaultfd(2)` fail with EPERM,
/// and with `device` also the `USERFAULTFD_IOC_NEW` ioctl (on /dev/userfaultfd).
fn block_userfaultfd(device: bool) {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const USERFAULTFD_IOC_NEW: u32 = 0xAA00;
    let ld = |k: u32| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // struct seccomp_data: nr at 0, arch at 4, ip at 8, args[i] at 16 + 8 * i (low half
    // first on little-endian).
    let prog = [
        ld(4),
        jeq(AUDIT_ARCH_X86_64, 0, 5),
        ld(0),
        jeq(libc::SYS_userfaultfd as u32, 4, 0),
        jeq(libc::SYS_ioctl as u32, 0, 2),
        ld(16 + 8),
        jeq(
            if device {
                USERFAULTFD_IOC_NEW
            } else {
                u32::MAX
            },
            1,
            0,
        ),
        ret(libc::SECCOMP_RET_ALLOW),
        ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PR_SET_NO_NEW_PRIVS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &raw const fprog,
        )
    };
    assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
}

#[test]
fn without_userfaultfd_mprotect_is_chosen_and_passes_the_oracle() {
    run_child("child_fallback_to_mprotect", &[]);
}

#[test]
#[ignore = "runs only as a child of without_userfaultfd_mprotect_is_chosen_and_passes_the_oracle"]
fn child_fallback_to_mprotect() {
    if !in_child() {
        return;
    }
    block_userfaultfd(true);
    let err = UffdTracker::new().expect_err("uffd must be unavailable");
    assert!(
        matches!(
            err,
            TrackError::Unavailable {
                backend: Backend::Uffd,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("EPERM"), "{err}");
    let (t, log) = with_log(track::select);
    let mut t = t.expect("select");
    assert_eq!(t.backend(), Backend::Mprotect);
    assert!(log.contains("backend=\"mprotect\""), "log: {log}");
    assert!(log.contains("uffd_error"), "log: {log}");
    oracle_sizes(t.as_mut());
}

#[test]
fn an_unprivileged_process_gets_uffd_through_user_mode_only() {
    run_child("child_unprivileged_uffd", &[]);
}

#[test]
#[ignore = "runs only as a child of an_unprivileged_process_gets_uffd_through_user_mode_only"]
fn child_unprivileged_uffd() {
    if !in_child() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: an empty group list; the pointer is unused for size 0.
        let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
        assert_eq!(rc, 0, "setgroups");
        // SAFETY: integer argument only; glibc applies it to every thread.
        assert_eq!(unsafe { libc::setgid(65534) }, 0, "setgid");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setuid(65534) }, 0, "setuid");
        // Changing credentials makes the process non-dumpable, which hands /proc/self/* to
        // root; make it dumpable again so it can open its own pagemap.
        // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        assert_eq!(rc, 0);
    }
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0);
    let unpriv =
        std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").expect("read sysctl");
    eprintln!("vm.unprivileged_userfaultfd = {}", unpriv.trim());
    let t = UffdTracker::new().expect("uffd tracker as an unprivileged user");
    assert_eq!(t.uffd_source(), Source::Syscall);
    let mut t = track::probe();
    assert_eq!(t.backend(), Backend::Uffd);
    oracle_sizes(t.as_mut());
}

#[test]
fn with_the_syscall_refused_uffd_comes_from_dev_userfaultfd_when_permitted() {
    run_child("child_device_fallback", &[]);
}

#[test]
#[ignore = "runs only as a child of \
            with_the_syscall_refused_uffd_comes_from_dev_userfaultfd_when_permitted"]
fn child_device_fallback() {
    if !in_child() {
        return;
    }
    block_userfaultfd(false);
    let device_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .is_ok();
    match UffdTracker::new() {
        Ok(t) => {
            assert!(device_usable);
            assert_eq!(t.uffd_source(), Source::Device);
            let mut t: Box<dyn Tracker> = Box::new(t);
            oracle_sizes(t.as_mut());
        }
        Err(err) => {
            assert!(!device_usable, "/dev/userfaultfd opens, yet: {err}");
            assert!(err.to_string().contains("EPERM"), "{err}");
        }
    }
}
