//! A checkpoint log stays within its size limit: past it, the log is compacted to its latest
//! checkpoint (a new log whose first checkpoint is full takes the old one's place once that
//! checkpoint is whole), and it always rebuilds to the primary's latest image.

mod common;

use hslib::replica::ReplicaConfig;
use hslib::transport::file;
use hslib::{Context, HotSpare, LinkConfig, Mode, PAGE_SIZE, Role, WorkerResult};

/// Runs 2000 checkpoints of a 16-page region (two pages changed each time) into a log
/// limited to `max`; returns the largest size the log reached, and whether it rebuilt to the
/// region's bytes after every 100th checkpoint.
fn run(max: Option<u64>) -> (u64, Vec<String>) {
    let _g = common::global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cpt.log");
    let id = common::fresh_id();
    let log_in = log.clone();
    let outcome = HotSpare::new("compaction")
        .region(id, 16 * PAGE_SIZE)
        .mode(Mode::Sync)
        .role(Role::Standalone)
        .log_max_bytes(max)
        .link(LinkConfig::File {
            path: log.clone(),
            append: false,
        })
        .worker(
            move |ctx: &mut Context| -> WorkerResult<(u64, Vec<String>)> {
                let mut largest = 0;
                let mut wrong = Vec::new();
                for i in 0..2000usize {
                    let bytes = ctx.region_mut(id)?.as_bytes_mut();
                    bytes[(i % 16) * PAGE_SIZE + i % 97] = (i % 251) as u8 + 1;
                    bytes[((i + 5) % 16) * PAGE_SIZE] = (i % 13) as u8;
                    ctx.checkpoint()?;
                    ctx.flush()?;
                    largest = largest.max(std::fs::metadata(&log_in)?.len());
                    if i % 100 == 99 {
                        let (replica, _) = file::rebuild(&log_in, ReplicaConfig::default())?;
                        let image = replica.image().ok_or("no complete checkpoint")?;
                        if image.region(id.0) != Some(ctx.region(id)?.as_bytes()) {
                            wrong.push(format!(
                                "after checkpoint {i} the log rebuilds another image"
                            ));
                        }
                    }
                }
                Ok((largest, wrong))
            },
        )
        .run()
        .expect("run");
    let hslib::Outcome::Finished { value, .. } = outcome else {
        panic!("not finished: {outcome:?}");
    };
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "cpt.log")
        .collect();
    assert!(
        leftovers.is_empty(),
        "files left beside the log: {leftovers:?}"
    );
    value
}

#[test]
fn a_log_past_its_limit_is_compacted_and_always_rebuilds_to_the_latest_image() {
    let max = 64 << 10;
    let (largest, wrong) = run(Some(max));
    assert!(wrong.is_empty(), "{wrong:?}");
    // The limit, plus the checkpoints between two looks at the log's size (every 16th
    // checkpoint; two pages, about 8.3 KiB, each) and the compacted log's full checkpoint
    // (the region, 64 KiB).
    let bound = max + 16 * 9 * 1024 + 68 * 1024;
    assert!(
        largest <= bound,
        "the log reached {largest} bytes with a limit of {max} (bound {bound})"
    );
}

#[test]
fn without_a_limit_the_log_keeps_every_checkpoint() {
    let (largest, wrong) = run(None);
    assert!(wrong.is_empty(), "{wrong:?}");
    // 2000 checkpoints of two pages each: far past any limit above.
    assert!(largest > 2000 * 2 * PAGE_SIZE as u64, "{largest}");
}
