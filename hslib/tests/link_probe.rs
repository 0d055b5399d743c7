//! A `LinkProbe` taken from the worker's context reads the same counters from another thread
//! as `Context::link_stats` does, including the number of the last checkpoint written and
//! how many checkpoints were merged into later ones.

use std::sync::{Arc, Mutex};

use hslib::{Backend, HotSpare, LinkConfig, LinkStats, Outcome, RegionId};

const REGION: RegionId = RegionId(3);

#[test]
fn a_probe_reads_the_link_counters_from_another_thread() {
    let seen: Arc<Mutex<Option<(LinkStats, LinkStats, LinkStats)>>> = Arc::default();
    let out = Arc::clone(&seen);
    let outcome = HotSpare::new("probe")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .link(LinkConfig::Null)
        .worker(move |ctx| {
            let probe = ctx.link_probe().ok_or("no link in the worker")?;
            ctx.flush()?;
            let before = probe.stats();
            for i in 0..5u8 {
                ctx.region_mut(REGION)?.as_bytes_mut()[0] = i;
                ctx.checkpoint()?;
            }
            ctx.flush()?;
            let remote = std::thread::spawn(move || probe.stats())
                .join()
                .map_err(|_| "the probing thread panicked")?;
            *out.lock().map_err(|_| "poisoned")? = Some((before, remote, ctx.link_stats()));
            Ok(())
        })
        .run()
        .expect("the run");
    assert!(matches!(outcome, Outcome::Finished { .. }), "{outcome:?}");
    let (before, remote, local) = seen.lock().unwrap().take().expect("the worker ran");
    // The first, full checkpoint is taken before the worker starts.
    assert_eq!((before.written, before.last_written), (1, 1));
    assert_eq!(remote, local);
    // Six checkpoints, each written or merged into a later one the sender had no time for
    // (which then takes the number of the last it stands for).
    assert_eq!(remote.written + remote.coalesced, 6, "{remote:?}");
    assert_eq!(remote.pending, 0, "flushed: {remote:?}");
    assert_eq!(remote.last_written, 6);
    assert_eq!(remote.acked, 6, "a sink acks what is written");
    assert!(remote.live && remote.synced);
}
