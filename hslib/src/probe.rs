//! Where a checkpoint's time goes, step by step: with the `probe` feature,
//! [`crate::Context::checkpoint`] stamps the processor's counter at each of its steps
//! ([`Mark`]), the first [`ROWS`] checkpoints of the process are kept, and at the end of a
//! primary's run each step's median and 90th percentile, in microseconds, are written to the
//! file `HS_PROBE_FILE` names ([`ENV_PROBE_FILE`]). Without the feature every function here
//! is empty and compiles to nothing.
//!
//! A checkpoint at a person's pace meets cold code and data at every step, and no sampling
//! profile resolves a 15 us call made every 50 ms; this does. The stamps are `rdtsc` (no
//! memory touched but this module's own slots), so a step's figure is what the step costs
//! cold, plus ~25 cycles.
//!
//! ```sh
//! HS_PROBE_FILE=/tmp/steps.txt cargo bench -p tetris --features probe --bench stall -- \
//!     --gap-us 50000 --trials 1 --modes lazy
//! ```

/// The environment variable naming the report file.
pub const ENV_PROBE_FILE: &str = "HS_PROBE_FILE";

/// Checkpoints kept (the report covers these, less the first [`SKIPPED`]).
pub const ROWS: usize = 1024;

/// Checkpoints left out of the report: the first ones are full and fault their buffers in.
pub const SKIPPED: usize = 10;

/// The steps of a checkpoint, in order; each mark ends the step named after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// `checkpoint()` entered.
    Enter,
    /// The last copy-before-write snapshot settled.
    Settled,
    /// The tracker's scan reported the dirty pages.
    Scanned,
    /// The link checked (listener, checkpoint-wanted flag, log compaction).
    LinkChecked,
    /// The checkpoint planned (session, full or not).
    Planned,
    /// The metadata ready (captured and encoded only if it may have changed).
    Metadata,
    /// The runs to copy and the strategy chosen.
    Strategy,
    /// A staging buffer taken (with the buffers the sender handed back).
    Staged,
    /// The run and metadata vectors filled.
    Vectors,
    /// The snapshot taken (the copy).
    Taken,
    /// Handed to the link (async, lazy) or written and acked (sync).
    Submitted,
    /// `checkpoint()` returns.
    Leave,
}

/// Every mark, in order.
pub const MARKS: [Mark; 12] = [
    Mark::Enter,
    Mark::Settled,
    Mark::Scanned,
    Mark::LinkChecked,
    Mark::Planned,
    Mark::Metadata,
    Mark::Strategy,
    Mark::Staged,
    Mark::Vectors,
    Mark::Taken,
    Mark::Submitted,
    Mark::Leave,
];

#[cfg(feature = "probe")]
mod on {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    use super::{MARKS, Mark, ROWS, SKIPPED};

    const N: usize = MARKS.len();

    static CURRENT: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
    static TABLE: [[AtomicU64; N]; ROWS] = [const { [const { AtomicU64::new(0) }; N] }; ROWS];
    static ROW: AtomicUsize = AtomicUsize::new(0);

    #[inline(always)]
    pub fn mark(m: Mark) {
        CURRENT[m as usize].store(crate::sys::cycles::now(), Relaxed);
    }

    pub fn end() {
        let row = ROW.fetch_add(1, Relaxed);
        if let Some(slots) = TABLE.get(row) {
            for (slot, now) in slots.iter().zip(&CURRENT) {
                slot.store(now.swap(0, Relaxed), Relaxed);
            }
        }
    }

    /// Counter ticks per microsecond, measured over 20 ms.
    fn ticks_per_us() -> f64 {
        let (t0, c0) = (std::time::Instant::now(), crate::sys::cycles::now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (us, c1) = (t0.elapsed().as_secs_f64() * 1e6, crate::sys::cycles::now());
        c1.wrapping_sub(c0) as f64 / us.max(1.0)
    }

    pub fn recorded() -> usize {
        ROW.load(Relaxed)
    }

    pub fn report() -> String {
        let rows = ROW.load(Relaxed).min(ROWS);
        let per_us = ticks_per_us();
        // A checkpoint that skipped a step (no session, a fork) is left out.
        let kept: Vec<Vec<u64>> = TABLE[..rows]
            .iter()
            .skip(SKIPPED)
            .map(|r| r.iter().map(|s| s.load(Relaxed)).collect::<Vec<u64>>())
            .filter(|r| r.iter().all(|&t| t != 0))
            .collect();
        let mut out = format!(
            "# {} checkpoints (of {rows} recorded, the first {SKIPPED} left out); microseconds\n\
             # step                     p50      p90\n",
            kept.len()
        );
        let mut line = |name: String, mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q) as usize).copied();
            if let (Some(p50), Some(p90)) = (at(0.5), at(0.9)) {
                out.push_str(&format!("{name:<24} {p50:8.2} {p90:8.2}\n"));
            }
        };
        for i in 1..N {
            let v = kept
                .iter()
                .map(|r| r[i].wrapping_sub(r[i - 1]) as f64 / per_us)
                .collect();
            line(format!("{:?}", MARKS[i]), v);
        }
        let total = kept
            .iter()
            .map(|r| r[N - 1].wrapping_sub(r[0]) as f64 / per_us)
            .collect();
        line("total".to_owned(), total);
        out
    }
}

/// Stamps the end of step `m` of the checkpoint in progress.
#[inline(always)]
pub fn mark(m: Mark) {
    #[cfg(feature = "probe")]
    on::mark(m);
    #[cfg(not(feature = "probe"))]
    let _ = m;
}

/// Stamps the ends of `steps` together: steps the checkpoint in progress had nothing to do
/// for (its steady lazy path plans nothing).
#[inline(always)]
pub fn mark_skipped(steps: &[Mark]) {
    #[cfg(feature = "probe")]
    for &m in steps {
        on::mark(m);
    }
    #[cfg(not(feature = "probe"))]
    let _ = steps;
}

/// Ends the checkpoint in progress: its stamps are kept (the first [`ROWS`]).
#[inline(always)]
pub fn end() {
    #[cfg(feature = "probe")]
    on::end();
}

/// The report of the checkpoints kept, or `None` without the `probe` feature or before any
/// checkpoint.
pub fn report() -> Option<String> {
    #[cfg(feature = "probe")]
    return (on::recorded() > 0).then(on::report);
    #[cfg(not(feature = "probe"))]
    None
}

/// Writes the report to the file [`ENV_PROBE_FILE`] names, if the feature is on and the
/// variable set; a failure is logged, never the caller's.
pub fn report_to_env_file() {
    let Some(path) = std::env::var_os(ENV_PROBE_FILE) else {
        return;
    };
    if !cfg!(feature = "probe") {
        tracing::warn!("{ENV_PROBE_FILE} is set but hslib was built without the probe feature");
        return;
    }
    // A process that took no checkpoint (a spare that never took over) leaves the file to
    // the one that did.
    let Some(text) = report() else {
        return;
    };
    if let Err(e) = std::fs::write(&path, text) {
        tracing::warn!(path = %path.to_string_lossy(), error = %e, "cannot write the probe's report");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the feature, every step after the first gets a line, in order, and the total;
    /// without it nothing is recorded.
    #[test]
    fn the_report_has_a_line_per_step_with_the_feature_and_is_none_without() {
        for _ in 0..SKIPPED + 5 {
            for m in MARKS {
                mark(m);
            }
            end();
        }
        let report = report();
        if !cfg!(feature = "probe") {
            assert_eq!(report, None);
            return;
        }
        let text = report.expect("a report");
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut want: Vec<String> = MARKS[1..].iter().map(|m| format!("{m:?}")).collect();
        want.push("total".to_owned());
        assert_eq!(names, want, "{text}");
        // Other tests of the crate may checkpoint meanwhile: at least these five are in.
        let kept: usize = text
            .trim_start_matches("# ")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("the count of checkpoints");
        assert!(kept >= 5, "{text}");
    }
}
