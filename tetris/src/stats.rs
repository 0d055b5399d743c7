//! `--stats FILE`: how long the game stood still inside its checkpoints.
//!
//! The stall of one checkpoint is the time [`hslib::Context::checkpoint`] took as the game
//! sees it (from the call to its return), which is what a player could feel: in async mode the
//! snapshot, in sync mode the snapshot plus the spare's acknowledgement.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// The stalls of the checkpoints a game took, in the order taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    nanos: Vec<u64>,
}

impl Stalls {
    /// Room for `n` samples, so recording does not allocate in the game loop until then.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            nanos: Vec::with_capacity(n),
        }
    }

    /// Records one checkpoint's stall.
    pub fn record(&mut self, stall: Duration) {
        self.nanos
            .push(u64::try_from(stall.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Checkpoints recorded.
    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    /// True when none was recorded.
    pub fn is_empty(&self) -> bool {
        self.nanos.is_empty()
    }

    /// The summary written to the stats file; `bytes` is the page bytes the link shipped.
    pub fn summary(&self, bytes: u64) -> Summary {
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        Summary {
            checkpoints: sorted.len() as u64,
            bytes,
            stall_us: Percentiles {
                p50: micros(percentile(&sorted, 50)),
                p99: micros(percentile(&sorted, 99)),
                max: micros(sorted.last().copied().unwrap_or(0)),
            },
        }
    }
}

/// Nearest-rank percentile `p` (1..=100) of ascending `sorted`; 0 when empty.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

/// The stats file's one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Checkpoints the game took.
    pub checkpoints: u64,
    /// Page bytes the link shipped (including the first, full checkpoint).
    pub bytes: u64,
    /// Stall percentiles in microseconds.
    pub stall_us: Percentiles,
}

/// Stall percentiles in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest.
    pub max: f64,
}

impl Summary {
    /// `{"checkpoints":N,"bytes":N,"stall_us":{"p50":F,"p99":F,"max":F}}`.
    pub fn to_json(&self) -> anyhow::Result<String> {
        serde_json::to_string(self).context("cannot encode the stats")
    }

    /// Writes the JSON line (with a newline) to `path`, replacing it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut line = self.to_json()?;
        line.push('\n');
        std::fs::write(path, line)
            .with_context(|| format!("cannot write the stats to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_microseconds() {
        let mut s = Stalls::default();
        for us in (1..=100).rev() {
            s.record(Duration::from_micros(us));
        }
        s.record(Duration::from_nanos(1_000_500));
        let sum = s.summary(8192);
        assert_eq!(sum.checkpoints, 101);
        assert_eq!(sum.stall_us.p50, 51.0);
        assert_eq!(sum.stall_us.p99, 100.0);
        assert_eq!(sum.stall_us.max, 1000.5);
        assert_eq!(
            sum.to_json().unwrap(),
            r#"{"checkpoints":101,"bytes":8192,"stall_us":{"p50":51.0,"p99":100.0,"max":1000.5}}"#
        );
    }

    #[test]
    fn no_checkpoints_give_zeros() {
        let sum = Stalls::default().summary(0);
        assert_eq!(
            sum.to_json().unwrap(),
            r#"{"checkpoints":0,"bytes":0,"stall_us":{"p50":0.0,"p99":0.0,"max":0.0}}"#
        );
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut s = Stalls::default();
        s.record(Duration::from_nanos(3217));
        let p = s.summary(0).stall_us;
        assert_eq!((p.p50, p.p99, p.max), (3.217, 3.217, 3.217));
    }
}
