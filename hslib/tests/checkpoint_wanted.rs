//! An idle primary learns that a newly connected spare holds nothing of it yet: the
//! context's checkpoint-wanted descriptor becomes readable when a spare connects and is
//! cleared by the next checkpoint, which brings the spare up to date.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use hslib::replica::{Replica, ReplicaConfig};
use hslib::session::serve_spare;
use hslib::transport::unix;
use hslib::{Backend, HotSpare, LinkConfig, Outcome, RegionId, Role};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

const REGION: RegionId = RegionId(5);
const DEADLINE: Duration = Duration::from_secs(20);

fn readable(fd: &OwnedFd, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).expect("poll") == 1
}

/// A spare in a thread: connects, replicates until the stream ends, returns its checkpoint.
fn spare(dir: std::path::PathBuf) -> std::thread::JoinHandle<Option<u64>> {
    std::thread::spawn(move || {
        let mut ep = unix::connect(&dir, "w").expect("connect to the primary");
        let mut replica = Replica::new(ReplicaConfig::default());
        let _ = serve_spare(&mut replica, &mut ep, Duration::from_secs(5));
        replica.checkpoint()
    })
}

fn wait_synced(ctx: &hslib::Context) {
    let deadline = Instant::now() + DEADLINE;
    while !ctx.link_stats().synced {
        assert!(Instant::now() < deadline, "the spare never synced");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_connecting_spare_raises_checkpoint_wanted_until_the_next_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("socks");
    let outcome = HotSpare::new("wanted")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .link(LinkConfig::Unix {
            dir: socks.clone(),
            name: "w".to_owned(),
        })
        .worker(move |ctx| {
            let fd = ctx
                .checkpoint_wanted_fd()
                .ok_or("no checkpoint-wanted descriptor")?
                .try_clone_to_owned()?;
            assert!(!readable(&fd, 0), "no spare yet");
            let first = spare(socks.clone());
            assert!(readable(&fd, 20_000), "a spare connected");
            // Idle: the spare holds nothing until the primary checkpoints.
            std::thread::sleep(Duration::from_millis(20));
            assert!(!ctx.link_stats().synced);
            assert!(readable(&fd, 0), "still wanted while idle");
            ctx.region_mut(REGION)?.as_bytes_mut()[0] = 1;
            ctx.checkpoint()?;
            assert!(!readable(&fd, 0), "cleared by the checkpoint");
            wait_synced(ctx);
            // A second spare takes the first one's place: wanted again.
            let second = spare(socks.clone());
            assert!(readable(&fd, 20_000), "the second spare connected");
            ctx.checkpoint()?;
            assert!(!readable(&fd, 0));
            wait_synced(ctx);
            // The first spare's stream ended when the second one connected, after it had
            // applied the checkpoint that synced it (the first one shipped: number 1).
            assert_eq!(first.join().map_err(|_| "first spare panicked")?, Some(1));
            // The second ends on the goodbye of the finishing primary.
            drop(second);
            Ok(())
        })
        .run()
        .expect("the run");
    assert!(matches!(outcome, Outcome::Finished { .. }), "{outcome:?}");
}
