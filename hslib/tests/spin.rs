//! A sync primary's wait for its ack spins while acks come quickly ([`HotSpare::spin`],
//! `HS_SPIN_US`): back to back, its checkpoints sleep no time; with the spinning off each
//! one sleeps once, in its one `read`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hslib::replica::Replica;
use hslib::{Backend, HotSpare, LinkConfig, Mode, Outcome, RegionId, Role};

const REGION: RegionId = RegionId(5);
const CHECKPOINTS: u64 = 50;

/// This thread's voluntary context switches so far (each sleep it woke from).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_else(|e| panic!("/proc/thread-self/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in {status}"))
}

/// A spare in a thread of this process (its own reads do not spin).
fn spare(dir: PathBuf, name: &'static str) -> std::thread::JoinHandle<Replica> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ep = loop {
            match hslib::transport::unix::connect(&dir, name) {
                Ok(ep) => break ep,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("the spare never reached the primary: {e}"),
            }
        };
        let mut replica = Replica::default();
        let _ =
            hslib::session::serve_spare(&mut replica, &mut ep, hslib::transport::HANDSHAKE_TIMEOUT);
        replica
    })
}

/// How many times the application's thread slept over [`CHECKPOINTS`] sync checkpoints
/// back to back, with the given spin.
fn sleeps_over_sync_checkpoints(spin: Duration, name: &'static str) -> u64 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("sock");
    let spare = spare(sock.clone(), name);
    let outcome = HotSpare::new(name)
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: sock,
            name: name.to_owned(),
        })
        .mode(Mode::Sync)
        .spin(spin)
        .worker(move |ctx| {
            // The first checkpoints are full; the spin learns from the first acks.
            for i in 0..5u8 {
                ctx.region_mut(REGION)?.as_bytes_mut()[0] = i;
                ctx.checkpoint()?;
            }
            let before = voluntary_switches();
            let mut acked = 0;
            for i in 0..CHECKPOINTS {
                ctx.region_mut(REGION)?.as_bytes_mut()[1] = i as u8;
                acked += u64::from(ctx.checkpoint()?.acked);
            }
            Ok((voluntary_switches() - before, acked))
        })
        .run()
        .unwrap_or_else(|e| panic!("the primary: {e}"));
    let Outcome::Finished { value, .. } = outcome else {
        panic!("the primary did not finish: {outcome:?}");
    };
    let _ = spare.join();
    let (slept, acked) = value;
    assert_eq!(acked, CHECKPOINTS, "every checkpoint was acked");
    slept
}

#[test]
fn a_sync_primary_spinning_for_its_acks_does_not_sleep_back_to_back() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return;
    }
    // A bound no ack of a spare in this process comes near.
    let spinning = sleeps_over_sync_checkpoints(Duration::from_secs(2), "spin-on");
    let sleeping = sleeps_over_sync_checkpoints(Duration::ZERO, "spin-off");
    assert!(
        spinning < CHECKPOINTS / 5,
        "spinning, {CHECKPOINTS} checkpoints slept {spinning} times"
    );
    assert!(
        sleeping >= CHECKPOINTS * 4 / 5,
        "not spinning, {CHECKPOINTS} checkpoints slept only {sleeping} times"
    );
}
