//! Keeping a checkpoint log bounded: when the log grows past its limit, the sender starts a
//! new session in a fresh file beside it (its first checkpoint is full, as every new
//! session's is) and, once that checkpoint is whole in the new file, renames the new file
//! over the old log. Until the rename the old log stays as it was, complete up to its last
//! checkpoint, so a crash at any moment leaves a log that resumes; after it, the log holds the
//! latest checkpoint as a full one and what followed.

use std::path::{Path, PathBuf};

use crate::transport::{Endpoint, FileLog};

/// The compaction of one checkpoint log.
#[derive(Debug)]
pub(super) struct Compaction {
    /// The log's path.
    path: PathBuf,
    /// Its size limit.
    max: u64,
    /// A new log being written: its path and its session's generation.
    pending: Option<(PathBuf, u64)>,
}

impl Compaction {
    pub(super) fn new(path: &Path, max: u64) -> Self {
        Self {
            path: path.to_owned(),
            max,
            pending: None,
        }
    }

    /// A fresh file to start the compacted log in, if the log has outgrown its limit and no
    /// compaction is under way.
    pub(super) fn due(&mut self) -> Option<FileLog> {
        if self.pending.is_some() || !Self::outgrown(&self.path, self.max) {
            return None;
        }
        let mut name = self.path.file_name()?.to_owned();
        name.push(".compacting");
        let next = self.path.with_file_name(name);
        match FileLog::create(&next) {
            Ok(log) => {
                self.pending = Some((next, 0));
                Some(log)
            }
            Err(e) => {
                tracing::warn!(log = %self.path.display(), error = %e, "cannot start a compacted log; the log grows on");
                self.max = u64::MAX;
                None
            }
        }
    }

    /// Whether the log at `path` has outgrown `max` bytes (checked by the link's handle).
    pub(super) fn outgrown(path: &Path, max: u64) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.len() > max)
    }

    /// The compacted log's session opened with `generation`.
    pub(super) fn started(&mut self, generation: u64) {
        if let Some((_, g)) = &mut self.pending {
            *g = generation;
        }
    }

    /// A full checkpoint is whole in session `generation`, written through `log`: if that is
    /// the compacted log's, it takes the old log's place.
    pub(super) fn finish(&mut self, generation: u64, log: &dyn Endpoint) {
        let Some((next, g)) = &self.pending else {
            return;
        };
        if *g != generation {
            return;
        }
        // Durable before it replaces a log that is.
        if let Err(e) = log.sync() {
            tracing::warn!(log = %next.display(), error = %e, "syncing the compacted log failed");
        }
        match std::fs::rename(next, &self.path) {
            Ok(()) => {
                if let Some(dir) = self.path.parent()
                    && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    })
                {
                    // The rename itself made durable; a failure leaves it to the kernel.
                    let _ = d.sync_all();
                }
                tracing::info!(log = %self.path.display(), "checkpoint log compacted");
            }
            Err(e) => {
                // The session goes on in the new file under its temporary name; the old log
                // keeps its last checkpoint. No further compaction.
                tracing::warn!(log = %self.path.display(), from = %next.display(), error = %e, "putting the compacted log in place failed");
                self.max = u64::MAX;
            }
        }
        self.pending = None;
    }

    /// The log is closed: a compacted log that never got its full checkpoint is removed (the
    /// old log, whole up to its last checkpoint, stays in place).
    pub(super) fn abandon(&mut self) {
        if let Some((next, _)) = self.pending.take()
            && let Err(e) = std::fs::remove_file(&next)
        {
            tracing::warn!(log = %next.display(), error = %e, "removing an unfinished compacted log failed");
        }
    }
}
