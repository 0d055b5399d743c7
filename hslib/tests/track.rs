//! The trackers against the exactness oracle (see `common/oracle.rs`), per backend: region
//! sizes from 4 KiB to 64 MiB, transparent huge pages off and on, discarded pages, kernel
//! writes from `read(2)`, and a parent that forked a child between checkpoints.

mod common;

use common::oracle::Oracle;
use common::{fresh_id, global_lock};
use hslib::PAGE_SIZE;
use hslib::track::{self, FullTracker, MprotectTracker, UffdTracker};
use hslib::{Backend, Region, Tracker};
use nix::errno::Errno;
use std::hint::black_box;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn tracker(backend: Backend) -> Box<dyn Tracker> {
    match backend {
        Backend::Uffd => Box::new(UffdTracker::new().expect("uffd tracker")),
        Backend::Mprotect => Box::new(MprotectTracker::new().expect("mprotect tracker")),
        Backend::Full => Box::new(FullTracker::new()),
    }
}

/// Maps a region of `len` bytes with THP forbidden (`thp == false`) or requested.
fn region(len: usize, thp: bool) -> Region {
    let r = Region::map(fresh_id(), len).expect("map region");
    r.set_huge_pages(thp).expect("madvise");
    r
}

/// Bytes of the range backed by transparent huge pages, from /proc/self/smaps.
fn anon_huge_bytes(base: usize) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
    let mut in_range = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(_)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            in_range = lo == base;
            continue;
        }
        if in_range && let Some(v) = line.strip_prefix("AnonHugePages:") {
            let kb: usize = v.trim().trim_end_matches("kB").trim().parse().expect("kB");
            return kb * KIB;
        }
    }
    0
}

fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
}

/// The oracle over regions from 4 KiB to 1 MiB + 12 KiB (odd sizes, not huge-page multiples).
fn oracle_small_regions(backend: Backend) {
    let mut t = tracker(backend);
    for (i, len) in [4 * KIB, 64 * KIB, 2 * MIB, MIB + 12 * KIB]
        .into_iter()
        .enumerate()
    {
        let r = region(len, false);
        t.register(&r).expect("register");
        let mut o = Oracle::new(r, 1000 + i as u64);
        o.run(t.as_mut(), 6, 40, &format!("{backend} {len} bytes"));
        // A checkpoint with no writes reports nothing (everything, for full).
        let s = o.check(t.as_mut(), "no writes");
        assert_eq!(s.changed, 0);
        if backend != Backend::Full {
            assert_eq!(s.reported, 0, "{backend}: pages reported with no writes");
        }
        t.unregister(o.region.id()).expect("unregister");
    }
}

fn oracle_64m(backend: Backend, thp: bool) {
    let mut t = tracker(backend);
    let r = region(64 * MIB, thp);
    t.register(&r).expect("register");
    let mut o = Oracle::new(r, 64 + u64::from(thp));
    let stats = o.run(t.as_mut(), 3, 400, &format!("{backend} 64 MiB thp={thp}"));
    eprintln!(
        "{backend} 64 MiB thp={thp} (populated after register): AnonHugePages {} KiB; {stats:?}",
        anon_huge_bytes(o.region.base()) / KIB
    );
    t.unregister(o.region.id()).expect("unregister");
}

/// THP backing established before registration, so protection starts on huge pages.
fn oracle_thp_populated_first(backend: Backend) {
    let mut t = tracker(backend);
    let mut r = region(16 * MIB, true);
    for (i, page) in r.as_bytes_mut().chunks_exact_mut(PAGE_SIZE).enumerate() {
        page.fill(i as u8 | 1);
    }
    let huge_before = anon_huge_bytes(r.base());
    if thp_enabled() {
        assert!(
            huge_before > 0,
            "no transparent huge pages backed the region; test is moot"
        );
    }
    t.register(&r).expect("register");
    let huge_registered = anon_huge_bytes(r.base());
    let mut o = Oracle::new(r, 16);
    // Single pages in distinct huge pages first: the sharpest test of huge-page granularity.
    for hp in 0..8 {
        o.write_byte(hp * 2 * MIB + 4096 * (hp + 1) + 7, 0xEE);
    }
    let first = o.check(t.as_mut(), "one byte per huge page");
    assert_eq!(first.changed, 8);
    let stats = o.run(
        t.as_mut(),
        4,
        100,
        &format!("{backend} 16 MiB thp populated first"),
    );
    eprintln!(
        "{backend} THP populated before register: AnonHugePages before {} KiB, registered {} \
         KiB, after {} KiB; first check {first:?}; then {stats:?}",
        huge_before / KIB,
        huge_registered / KIB,
        anon_huge_bytes(o.region.base()) / KIB
    );
    t.unregister(o.region.id()).expect("unregister");
}

/// Discarding pages (`MADV_DONTNEED`) through the tracker, or with a raw madvise where the
/// backend sees that (`raw`), reports them, and writes after a discard are tracked.
fn discard_reports_zeroed_pages_and_later_writes(backend: Backend, raw: bool) {
    let mut t = tracker(backend);
    let r = region(4 * MIB, false);
    t.register(&r).expect("register");
    let mut o = Oracle::new(r, 7);
    o.run(t.as_mut(), 2, 200, "before discard");
    for round in 0..4 {
        // Make sure the discarded pages held data, so the zeroing is a change.
        let (first, count) = o.random_run(64);
        o.fill_pages(first, count, 0x5A);
        o.check(t.as_mut(), "fill before discard");
        let (first, count) = (first + count / 4, count - count / 4);
        if raw {
            o.region
                .discard_untracked(first * PAGE_SIZE, count * PAGE_SIZE)
                .expect("madvise");
        } else {
            t.discard(&mut o.region, first * PAGE_SIZE, count * PAGE_SIZE)
                .expect("discard");
        }
        o.note_written(first, count);
        assert!(
            o.region.as_bytes()[first * PAGE_SIZE..(first + count) * PAGE_SIZE]
                .iter()
                .all(|&b| b == 0)
        );
        let s = o.check(t.as_mut(), &format!("after discard {round}"));
        assert_eq!(s.changed, count);
        // Writes into just-discarded pages, and elsewhere, are tracked.
        o.write_byte(first * PAGE_SIZE + 1, 9);
        o.random_writes(50);
        o.check(t.as_mut(), &format!("writes after discard {round}"));
    }
    t.unregister(o.region.id()).expect("unregister");
}

/// Reads `data` from a pipe into the region at byte `offset`.
fn read_from_pipe(o: &mut Oracle, offset: usize, data: &[u8]) -> Result<usize, Errno> {
    let (rx, tx) = nix::unistd::pipe().expect("pipe");
    assert_eq!(
        nix::unistd::write(&tx, data).expect("write to pipe"),
        data.len()
    );
    drop(tx);
    let dst = &mut o.region.as_bytes_mut()[offset..offset + data.len()];
    nix::unistd::read(&rx, dst)
}

/// `read(2)` into a region: tracked for uffd and full as is; for mprotect it fails with
/// EFAULT on a protected page unless `prepare_kernel_write` is called first.
fn kernel_write_from_pipe(backend: Backend) {
    let mut t = tracker(backend);
    let r = region(256 * KIB, false);
    t.register(&r).expect("register");
    let id = r.id();
    let mut o = Oracle::new(r, 3);
    let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8 + 1).collect();
    // Unaligned destination spanning four pages (5..=8), none written since the checkpoint.
    let offset = 5 * PAGE_SIZE + 100;
    let first = read_from_pipe(&mut o, offset, &data);
    if backend == Backend::Mprotect {
        assert_eq!(first, Err(Errno::EFAULT), "the documented mprotect limit");
        assert_eq!(o.check(t.as_mut(), "failed read").changed, 0);
        t.prepare_kernel_write(id, 5 * PAGE_SIZE, 4 * PAGE_SIZE)
            .expect("prepare_kernel_write");
        o.note_written(5, 4);
        assert_eq!(read_from_pipe(&mut o, offset, &data), Ok(data.len()));
    } else {
        t.prepare_kernel_write(id, 5 * PAGE_SIZE, 4 * PAGE_SIZE)
            .expect("prepare_kernel_write is accepted (a no-op)");
        assert_eq!(first, Ok(data.len()));
    }
    o.note_written(5, 4);
    assert_eq!(&o.region.as_bytes()[offset..offset + data.len()], &data[..]);
    let s = o.check(t.as_mut(), "read(2) from a pipe");
    assert_eq!(s.changed, 4);
    if backend != Backend::Full {
        assert_eq!(s.reported, 4, "exactly the four destination pages");
    }
    // Tracking goes on as before afterwards.
    o.run(t.as_mut(), 2, 30, "after read(2)");
    t.unregister(id).expect("unregister");
}

/// Pages `[first, first + count)` of a 16 MiB region, filled before registration, zeroed by
/// a raw `MADV_DONTNEED` (not through `Tracker::discard`): the pages reported at the next
/// two checkpoints, and at one after a write into the first zeroed page.
fn raw_madvise_dontneed(backend: Backend, first: usize, count: usize) -> [usize; 3] {
    let mut t = tracker(backend);
    let mut r = region(16 * MIB, false);
    r.as_bytes_mut().fill(1);
    t.register(&r).expect("register");
    assert_eq!(t.collect_dirty().expect("collect").page_count(), 0);
    r.discard_untracked(first * PAGE_SIZE, count * PAGE_SIZE)
        .expect("madvise");
    assert_eq!(r.as_bytes()[first * PAGE_SIZE], 0, "the page was zeroed");
    let after = t.collect_dirty().expect("collect");
    if let Some(runs) = after.runs(r.id()).filter(|runs| !runs.is_empty()) {
        assert_eq!(
            runs.as_slice(),
            &[hslib::PageRun {
                start: first,
                count
            }]
        );
    }
    let again = t.collect_dirty().expect("collect").page_count();
    r.as_bytes_mut()[first * PAGE_SIZE + 5] = 2;
    let d = t.collect_dirty().expect("collect");
    let write = d.runs(r.id()).expect("runs").pages().collect::<Vec<_>>();
    assert_eq!(write, vec![first], "{backend}: a write after a raw discard");
    t.unregister(r.id()).expect("unregister");
    [after.page_count(), again, write.len()]
}

/// The kernel (6.18) reports pages zapped by a raw `MADV_DONTNEED` in a uffd-wp region as
/// written, once, whether single pages or whole page tables (2 MiB, 8 MiB) are zapped.
#[test]
fn uffd_reports_pages_zeroed_by_a_raw_madvise_dontneed() {
    assert_eq!(raw_madvise_dontneed(Backend::Uffd, 3, 1), [1, 0, 1]);
    assert_eq!(raw_madvise_dontneed(Backend::Uffd, 512, 512), [512, 0, 1]);
    assert_eq!(
        raw_madvise_dontneed(Backend::Uffd, 1024, 2048),
        [2048, 0, 1]
    );
}

/// Under mprotect a raw `MADV_DONTNEED` zeroes pages unseen: the documented reason for
/// `Tracker::discard`. Later writes are still tracked.
#[test]
fn mprotect_misses_pages_zeroed_by_a_raw_madvise_dontneed() {
    assert_eq!(raw_madvise_dontneed(Backend::Mprotect, 3, 1), [0, 0, 1]);
    assert_eq!(raw_madvise_dontneed(Backend::Mprotect, 512, 512), [0, 0, 1]);
}

#[test]
fn uffd_oracle_exact_after_raw_madvise_dontneed() {
    discard_reports_zeroed_pages_and_later_writes(Backend::Uffd, true);
}

#[test]
fn full_oracle_exact_after_raw_madvise_dontneed() {
    discard_reports_zeroed_pages_and_later_writes(Backend::Full, true);
}

/// The parent writes, forks a child that writes to the region (its own copy) while the
/// parent writes and checkpoints, and exits; the parent's reports hold exactly the parent's
/// changes, before and after the child is gone.
fn forked_child_does_not_disturb_parent_tracking(backend: Backend) {
    let _g = global_lock();
    let mut t = tracker(backend);
    let r = region(4 * MIB, false);
    t.register(&r).expect("register");
    let mut o = Oracle::new(r, 11);
    o.run(t.as_mut(), 1, 200, "before fork");
    o.random_writes(100);
    // Child writes: pages the parent wrote this interval, pages it did not, pages it never
    // touched; all chosen before fork, so the child only stores to memory and exits.
    let child_offsets: Vec<usize> = (0..200)
        .map(|i| (i * 4 * MIB / 200 + i * 13) % (4 * MIB))
        .collect();
    let (done_rx, done_tx) = nix::unistd::pipe().expect("pipe");
    let (go_rx, go_tx) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only stores bytes into its copy of the region (a fault there runs the
    // async-signal-safe mprotect handler), uses write/read on pipes and `_exit`: all
    // async-signal-safe, as required after fork in a threaded process.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let bytes = o.region.as_bytes_mut();
            for (i, &off) in child_offsets.iter().enumerate() {
                bytes[off] = black_box(0xC0 ^ i as u8);
            }
            let _ = nix::unistd::write(&done_tx, b"x");
            let mut b = [0u8];
            let _ = nix::unistd::read(&go_rx, &mut b);
            for &off in &child_offsets {
                bytes[off + 1] = black_box(0x77);
            }
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let mut b = [0u8];
            assert_eq!(nix::unistd::read(&done_rx, &mut b), Ok(1));
            // The child is alive and shares (COW) every page with us.
            o.random_writes(100);
            o.check(
                t.as_mut(),
                "child alive, parent wrote before and after fork",
            );
            o.random_writes(100);
            assert_eq!(nix::unistd::write(&go_tx, b"g"), Ok(1));
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            o.check(t.as_mut(), "child exited");
            let stats = o.run(t.as_mut(), 3, 150, "after the child is gone");
            for &off in &child_offsets {
                assert_ne!(
                    o.region.as_bytes()[off + 1],
                    0x77,
                    "the child's write leaked"
                );
            }
            eprintln!("{backend} fork: {stats:?}");
        }
    }
    t.unregister(o.region.id()).expect("unregister");
}

/// Several threads write between checkpoints, with neighbours sharing the pages at their
/// borders, so first writes to one page can fault in two threads at once.
fn concurrent_writers_are_all_tracked(backend: Backend) {
    let mut t = tracker(backend);
    let r = region(MIB, false);
    t.register(&r).expect("register");
    let mut o = Oracle::new(r, 21);
    for round in 0..4u8 {
        let chunk = 64 * KIB + 2 * KIB + 100;
        std::thread::scope(|s| {
            for (i, part) in o.region.as_bytes_mut().chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    // Both ends of each chunk, then a stride through it.
                    let last = part.len() - 1;
                    part[0] = black_box(round ^ 0x80 ^ i as u8);
                    part[last] = black_box(round ^ 0x40 ^ i as u8);
                    for off in (0..part.len()).step_by(3 * PAGE_SIZE + 17) {
                        part[off] = black_box(round.wrapping_add(off as u8) | 1);
                    }
                });
            }
        });
        // The same offsets the threads wrote, so over-reporting is held to the usual rule.
        let len = o.region.len();
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let offs = (start..end).step_by(3 * PAGE_SIZE + 17).chain([end - 1]);
            for off in offs {
                o.note_written(off / PAGE_SIZE, 1);
            }
        }
        let s = o.check(
            t.as_mut(),
            &format!("{backend} concurrent writers, round {round}"),
        );
        assert!(s.changed > 0);
    }
    t.unregister(o.region.id()).expect("unregister");
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn oracle_exact_on_regions_from_4k_to_2m_without_thp() {
                oracle_small_regions($backend);
            }

            #[test]
            fn oracle_exact_on_64m_without_thp() {
                oracle_64m($backend, false);
            }

            #[test]
            fn oracle_exact_on_64m_with_thp_requested() {
                oracle_64m($backend, true);
            }

            #[test]
            fn oracle_exact_when_huge_pages_are_populated_before_registration() {
                oracle_thp_populated_first($backend);
            }

            #[test]
            fn discard_reports_zeroed_pages_and_later_writes() {
                super::discard_reports_zeroed_pages_and_later_writes($backend, false);
            }

            #[test]
            fn read_from_pipe_into_region() {
                kernel_write_from_pipe($backend);
            }

            #[test]
            fn concurrent_writers_are_all_tracked() {
                super::concurrent_writers_are_all_tracked($backend);
            }

            #[test]
            fn forked_child_does_not_disturb_parent_tracking() {
                super::forked_child_does_not_disturb_parent_tracking($backend);
            }
        }
    };
}

backend_tests!(uffd, Backend::Uffd);
backend_tests!(mprotect, Backend::Mprotect);
backend_tests!(full, Backend::Full);

/// More runs than one `PAGEMAP_SCAN` output vector holds (512): the scan continues from
/// `walk_end` and loses none.
#[test]
fn uffd_reports_more_runs_than_one_scan_vector_holds() {
    let mut t = tracker(Backend::Uffd);
    let mut r = region(16 * MIB, false);
    t.register(&r).expect("register");
    for p in (0..r.pages()).step_by(2) {
        r.as_bytes_mut()[p * PAGE_SIZE] = 1;
    }
    let d = t.collect_dirty().expect("collect");
    let runs = d.runs(r.id()).expect("runs");
    assert_eq!(runs.as_slice().len(), r.pages() / 2);
    assert!(
        runs.iter()
            .enumerate()
            .all(|(i, run)| run.start == 2 * i && run.count == 1)
    );
    assert_eq!(t.collect_dirty().expect("collect").page_count(), 0);
    t.unregister(r.id()).expect("unregister");
}

/// When unprotecting a single page fails (ENOMEM: the split would exceed
/// vm.max_map_count), the handler counts the whole region as written and unprotects all of
/// it, leaving errno untouched; tracking resumes once mappings are available again. Runs in
/// a child process, which uses up its own map count.
#[test]
fn mprotect_handler_degrades_to_whole_region_when_mappings_run_out() {
    common::run_child("child_mprotect_map_count_exhausted", &[]);
}

#[test]
#[ignore = "runs only as a child of \
            mprotect_handler_degrades_to_whole_region_when_mappings_run_out"]
fn child_mprotect_map_count_exhausted() {
    if !common::in_child() {
        return;
    }
    let mut t = tracker(Backend::Mprotect);
    let mut r = region(64 * PAGE_SIZE, false);
    t.register(&r).expect("register");
    // Fill the map count with one-page mappings of alternating protection (so none merge).
    let mut fillers = Vec::new();
    loop {
        let prot = if fillers.len() % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_NONE
        };
        // SAFETY: a fresh anonymous mapping wherever the kernel likes; nothing existing moves.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            assert_eq!(Errno::last(), Errno::ENOMEM);
            break;
        }
        fillers.push(p as usize);
        assert!(fillers.len() < 1 << 22, "vm.max_map_count never reached");
    }
    // One free mapping: splitting a page out of the middle of the region needs two.
    let freed = fillers.pop().expect("at least one filler");
    // SAFETY: `freed` is a filler mapped above and referenced by nothing.
    let rc = unsafe { libc::munmap(freed as *mut libc::c_void, PAGE_SIZE) };
    assert_eq!(rc, 0);

    Errno::set_raw(Errno::EAGAIN as i32);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    r.as_bytes_mut()[20 * PAGE_SIZE + 3] = black_box(0x33);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(Errno::last(), Errno::EAGAIN, "the handler changed errno");
    assert_eq!(r.as_bytes()[20 * PAGE_SIZE + 3], 0x33);
    // The whole region is writable now: no more faults, all pages count as written.
    r.as_bytes_mut()[40 * PAGE_SIZE] = black_box(0x44);
    let d = t
        .collect_dirty()
        .expect("collect re-protects the whole region in one call");
    assert_eq!(d.page_count(), 64);

    for p in fillers {
        // SAFETY: each filler was mapped above and is referenced by nothing.
        let rc = unsafe { libc::munmap(p as *mut libc::c_void, PAGE_SIZE) };
        assert_eq!(rc, 0);
    }
    r.as_bytes_mut()[50 * PAGE_SIZE] = black_box(0x55);
    let d = t.collect_dirty().expect("collect");
    let pages: Vec<usize> = d.runs(r.id()).expect("runs").pages().collect();
    assert_eq!(pages, vec![50], "exact tracking resumes");
    t.unregister(r.id()).expect("unregister");
}

#[test]
fn each_backend_reports_its_name() {
    for b in [Backend::Uffd, Backend::Mprotect, Backend::Full] {
        assert_eq!(track::create(b).expect("create").backend(), b);
        assert_eq!(b.name().parse::<Backend>().expect("parse"), b);
    }
}

#[test]
fn registering_twice_or_unknown_regions_is_an_error() {
    for b in [Backend::Uffd, Backend::Mprotect, Backend::Full] {
        let mut t = tracker(b);
        let r = region(PAGE_SIZE, false);
        t.register(&r).expect("register");
        assert!(matches!(
            t.register(&r),
            Err(track::TrackError::AlreadyRegistered(_))
        ));
        let other = fresh_id();
        assert!(matches!(
            t.unregister(other),
            Err(track::TrackError::NotRegistered(_))
        ));
        assert!(matches!(
            t.prepare_kernel_write(r.id(), 0, 2 * PAGE_SIZE),
            Err(track::TrackError::BadRange { .. })
        ));
        t.unregister(r.id()).expect("unregister");
    }
}

#[test]
fn a_write_outside_every_region_still_kills_with_sigsegv() {
    let _g = global_lock();
    let _t = tracker(Backend::Mprotect);
    let r = region(PAGE_SIZE, false);
    let addr = r.base();
    drop(r); // unmapped: a store there is a genuine segfault.
    // SAFETY: the child does one store and, if it survived, _exit; both async-signal-safe.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // SAFETY: deliberately invalid; the point is that the fault is not swallowed.
            unsafe { (addr as *mut u8).write_volatile(1) };
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert!(
                matches!(
                    status,
                    nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSEGV, _)
                ),
                "{status:?}"
            );
        }
    }
}
