//! The agent's `--events FILE`: one JSON line per event, `{"t_us":T,"node":N,"event":E,...}`,
//! T in CLOCK_MONOTONIC microseconds (one clock for every namespace on the machine, so a
//! test lines up the events of several agents and of its client).

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde_json::{Map, Value, json};

/// CLOCK_MONOTONIC now, in microseconds.
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000
    })
}

/// Where the events go (nowhere without `--events`); cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    file: Option<Arc<Mutex<File>>>,
    node: String,
}

impl Events {
    /// Events of node `node`, appended to `path` if given.
    pub fn open(path: Option<&Path>, node: &str) -> anyhow::Result<Self> {
        let file = path
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open the events file {}", p.display()))
            })
            .transpose()?;
        Ok(Self {
            file: file.map(|f| Arc::new(Mutex::new(f))),
            node: node.to_owned(),
        })
    }

    /// Records `event` with the fields of `extra` (a JSON object).
    pub fn emit(&self, event: &str, extra: Value) {
        let t_us = monotonic_us();
        tracing::info!(event, %extra, "agent event");
        let Some(file) = &self.file else { return };
        let mut line = Map::new();
        line.insert("t_us".to_owned(), json!(t_us));
        line.insert("node".to_owned(), json!(self.node));
        line.insert("event".to_owned(), json!(event));
        if let Value::Object(fields) = extra {
            line.extend(fields);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut f = file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = f.write_all(text.as_bytes()) {
            tracing::warn!(error = %e, "cannot write an event");
        }
    }
}
