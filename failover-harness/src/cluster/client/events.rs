//! The client's `--events FILE`: one JSON line per event, `{"t_us":T,"event":E,...}`, T in
//! CLOCK_MONOTONIC microseconds (one clock for every namespace of the machine, so a test can
//! set the client's times against an agent's or its own).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::time::{ClockId, clock_gettime};
use serde_json::Value;

/// Now on CLOCK_MONOTONIC, in microseconds (0 if the clock cannot be read, which Linux never
/// does for this clock).
pub fn monotonic_us() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000
    })
}

/// The events file, if one was asked for.
#[derive(Debug, Default)]
pub struct EventLog {
    file: Option<(File, PathBuf)>,
}

impl EventLog {
    /// Writes to `path` (created or truncated), or nowhere.
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(p) => Some((
                File::create(p)
                    .with_context(|| format!("cannot write the events file {}", p.display()))?,
                p.to_owned(),
            )),
            None => None,
        };
        Ok(Self { file })
    }

    /// Writes `{"t_us":now,"event":event,<fields>}`. A failing file is reported once in the
    /// log and dropped: the game goes on.
    pub fn note(&mut self, event: &str, fields: &[(&str, Value)]) {
        self.note_at(monotonic_us(), event, fields);
    }

    /// As [`EventLog::note`], at time `t_us`.
    pub fn note_at(&mut self, t_us: u64, event: &str, fields: &[(&str, Value)]) {
        tracing::info!(event, ?fields, "client event");
        let Some((file, path)) = &mut self.file else {
            return;
        };
        let line = line(t_us, event, fields);
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, file = %path.display(), "cannot write the events file");
            self.file = None;
        }
    }
}

/// One event's line, newline included.
fn line(t_us: u64, event: &str, fields: &[(&str, Value)]) -> String {
    let mut s = format!("{{\"t_us\":{t_us},\"event\":{}", Value::from(event));
    for (k, v) in fields {
        s.push(',');
        s.push_str(&Value::from(*k).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_one_json_object_with_the_time_and_the_event_first() {
        let l = line(
            12,
            "leader",
            &[("epoch", Value::from(7)), ("node", Value::from("a\"b"))],
        );
        assert_eq!(
            l,
            "{\"t_us\":12,\"event\":\"leader\",\"epoch\":7,\"node\":\"a\\\"b\"}\n"
        );
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["node"], "a\"b");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_us() >= a + 2000);
    }
}
