//! The open session, and sync mode's direct path: a sync checkpoint that finds the sender
//! idle is written by the application's own thread (the whole checkpoint gathered into one
//! buffer, one `write`) and its ack read by that thread too (one `read`, buffered), with no
//! thread hand-off out or back. The session's lock ([`super::SessionSlot`]) keeps the
//! sender's frames (heartbeats, a fork child's turn, a new spare's session) from
//! interleaving with it.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Shared, Shipped};
use crate::snapshot::Copied;
use crate::transport::Endpoint;
use crate::wire::{AckReader, Acked, CheckpointWriter, WireError};

/// The session the stream is written to.
pub(super) struct Open {
    pub(super) writer: CheckpointWriter<Box<dyn Endpoint>>,
    pub(super) generation: u64,
    /// Whether the peer acks (a spare; a sink does not).
    pub(super) acks: bool,
    /// Sync mode: the spare's acks, read by the thread that waits for them.
    pub(super) direct: Option<DirectAcks>,
}

/// The ack stream of a sync session.
pub(super) struct DirectAcks {
    stream: BufReader<Box<dyn Endpoint>>,
    reader: AckReader,
    /// The read timeout set on the stream (`None`: not set yet).
    timeout: Option<Option<Duration>>,
}

impl DirectAcks {
    pub(super) fn new(stream: Box<dyn Endpoint>, reader: AckReader) -> Self {
        Self {
            // An ack is 56 bytes; a few fit.
            stream: BufReader::with_capacity(1024, stream),
            reader,
            timeout: None,
        }
    }
}

/// What waiting for an ack came to.
pub(super) enum AckRead {
    /// The spare acked the checkpoint.
    Acked,
    /// The deadline passed first.
    Late,
    /// The ack stream failed or ended (the session is over).
    Broken(WireError),
}

impl Open {
    /// Reads acks until one for checkpoint `cp` (or a later one) arrives, at most `deadline`
    /// per read. The read timeout is set once per session and deadline (a `setsockopt`),
    /// not per checkpoint.
    pub(super) fn read_ack(&mut self, cp: u64, deadline: Option<Duration>) -> AckRead {
        let Some(d) = self.direct.as_mut() else {
            return AckRead::Broken(WireError::Misuse {
                what: "reading acks of a session without direct acks",
            });
        };
        if d.timeout != Some(deadline) {
            if let Err(e) = d.stream.get_ref().set_read_timeout(deadline) {
                return AckRead::Broken(WireError::Io(e));
            }
            d.timeout = Some(deadline);
        }
        loop {
            match d.reader.expect(&mut d.stream, Acked::Commit, None) {
                Ok(ack) if ack.checkpoint >= cp => return AckRead::Acked,
                // An older checkpoint's ack (its wait ended early): read on.
                Ok(_) => {}
                Err(WireError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return AckRead::Late;
                }
                Err(e) => return AckRead::Broken(e),
            }
        }
    }

    /// Writes `c` as the session's next checkpoint with one `write`: its frames are encoded
    /// into `buf` first (reused; no allocation once it is large enough). Returns its number
    /// and page bytes. A failed write leaves the session unusable (the caller ends it).
    pub(super) fn write_gathered(
        &mut self,
        c: &Copied,
        buf: &mut Vec<u8>,
    ) -> Result<(u64, u64), WireError> {
        buf.clear();
        let mut gather =
            CheckpointWriter::with_state(crate::memcopy::Gather(&mut *buf), self.writer.state());
        let cp = c.write(&mut gather)?;
        let state = gather.state();
        self.writer.get_mut().write_all(buf)?;
        self.writer.set_state(state);
        Ok((cp, c.data.len() as u64))
    }
}

/// Ends the session in `open` (if any): with `goodbye` first tells the spare not to take
/// over; shuts the socket down (after a goodbye only the sending side, so the spare's last
/// acks and the goodbye still arrive) and marks the session over.
pub(super) fn close(shared: &Shared, open: &mut Option<Open>, goodbye: bool) {
    let Some(mut o) = open.take() else {
        return;
    };
    if goodbye
        && shared.live.load(Ordering::Acquire)
        && let Err(e) = o.writer.goodbye(crate::wire::Farewell::Finished)
    {
        tracing::warn!(error = %e, "sending the goodbye failed");
    }
    // Shut the socket down, not just this descriptor: the ack reader holds a duplicate, and
    // the spare must see the stream end.
    let _ = if goodbye {
        o.writer.get_ref().shutdown_write()
    } else {
        o.writer.get_ref().shutdown()
    };
    let p = shared.lock();
    shared.live.store(false, Ordering::Release);
    drop(p);
    shared.changed.notify_all();
}

/// Counts a checkpoint written (by the sender or directly) in the progress counters, and
/// jobs up to `id` done (`None`: the sender counts them itself).
pub(super) fn count_written(
    shared: &Shared,
    cp: u64,
    bytes: u64,
    full: bool,
    acked_now: bool,
    id: Option<u64>,
) {
    let mut p = shared.lock();
    p.written += 1;
    p.bytes += bytes;
    p.last_written = cp;
    if full {
        p.session_full = Some(cp);
    }
    if acked_now {
        p.acked = cp;
    }
    if let Some(id) = id {
        p.done_job = id;
        p.done = Some(Shipped::Written(cp));
    }
}
