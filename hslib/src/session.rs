//! Opening a session over an endpoint, on both sides, with a bounded wait for the other side:
//! the primary sends its hello and waits for the spare's ack; the spare waits for the hello,
//! then receives checkpoints without a time limit (a primary may idle between checkpoints;
//! it sends heartbeats meanwhile, and a watched spare notices their absence).

use std::io::Write as _;
use std::time::Duration;

use crate::replica::{Replica, ReplicaError, StreamEnd};
use crate::silence::{SilenceWatch, Watched};
use crate::transport::Endpoint;
use crate::wire::{self, Ack, AckReader, Acked, CheckpointWriter, FrameKind, Hello, WireError};

/// What went wrong opening a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Setting the endpoint's timeout failed.
    #[error("setting the handshake timeout on {peer} failed: {source}")]
    Timeout {
        /// The peer.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hello or its ack failed (a timeout shows here as an I/O error).
    #[error("hello handshake with {peer} failed: {source}")]
    Wire {
        /// The peer.
        peer: String,
        /// Why.
        source: WireError,
    },
    /// The spare refused the hello, or the primary sent something else first.
    #[error("hello handshake with {peer} refused: {source}")]
    Replica {
        /// The peer.
        peer: String,
        /// Why.
        source: ReplicaError,
    },
}

/// A primary's open session: the writer for checkpoints and the reader of the spare's acks
/// (both over the same endpoint).
#[derive(Debug)]
pub struct PrimarySession<E> {
    /// Writes the checkpoints.
    pub writer: CheckpointWriter<E>,
    /// Reads the acks (from `writer.get_mut()`).
    pub acks: AckReader,
    /// The spare's answer to the hello (its last committed checkpoint, 0 for none).
    pub hello_ack: Ack,
}

impl<E: Endpoint> PrimarySession<E> {
    /// Waits for the spare's ack of checkpoint `checkpoint` (sync mode).
    pub fn wait_commit_ack(&mut self, checkpoint: u64) -> Result<Ack, WireError> {
        self.acks
            .expect(self.writer.get_mut(), Acked::Commit, Some(checkpoint))
    }
}

/// Opens a session as the primary: sends `hello` under `epoch` and waits at most `timeout`
/// for the spare's ack. Checkpoints then start at `first_checkpoint`.
pub fn open_primary<E: Endpoint>(
    endpoint: E,
    epoch: u64,
    first_checkpoint: u64,
    hello: &Hello,
    timeout: Duration,
) -> Result<PrimarySession<E>, SessionError> {
    let peer = endpoint.describe();
    let timeout_err = |source| SessionError::Timeout {
        peer: peer.clone(),
        source,
    };
    let wire_err = |source| SessionError::Wire {
        peer: peer.clone(),
        source,
    };
    endpoint
        .set_read_timeout(Some(timeout))
        .map_err(timeout_err)?;
    let mut writer = CheckpointWriter::new(endpoint, epoch, first_checkpoint);
    writer.hello(hello).map_err(wire_err)?;
    let mut acks = AckReader::new(epoch);
    let hello_ack = acks
        .expect(writer.get_mut(), Acked::Hello, None)
        .map_err(wire_err)?;
    writer
        .get_ref()
        .set_read_timeout(None)
        .map_err(timeout_err)?;
    Ok(PrimarySession {
        writer,
        acks,
        hello_ack,
    })
}

/// Serves a session as the spare: waits at most `timeout` for the primary's hello, acks it,
/// then receives checkpoints (acking each commit) until the stream ends. The replica keeps
/// the last completed checkpoint whatever happens. After a refusal (an error here or in the
/// returned [`StreamEnd`]) the caller closes the endpoint: the protocol has no error frame,
/// the primary sees the stream end and starts a new session.
pub fn serve_spare<E: Endpoint>(
    replica: &mut Replica,
    endpoint: &mut E,
    timeout: Duration,
) -> Result<StreamEnd, SessionError> {
    serve_spare_watched(replica, endpoint, timeout, None)
}

/// [`serve_spare`], with the primary's silences watched by `watch` (if given): after the
/// hello, reads wake up every [`SilenceWatch::tick`] instead of blocking without limit, and
/// a silence of the watch's suspect time is reported. Silence never ends the session: only
/// the stream's end does. The session's first whole checkpoint is reported too (the
/// `holding` line, see [`crate::silence`]).
pub fn serve_spare_watched<E: Endpoint>(
    replica: &mut Replica,
    endpoint: &mut E,
    timeout: Duration,
    watch: Option<&mut SilenceWatch>,
) -> Result<StreamEnd, SessionError> {
    let peer = endpoint.describe();
    let timeout_err = |source| SessionError::Timeout {
        peer: peer.clone(),
        source,
    };
    endpoint
        .set_read_timeout(Some(timeout))
        .map_err(timeout_err)?;
    let wire_err = |source| SessionError::Wire {
        peer: peer.clone(),
        source,
    };
    let frame = wire::read_frame(endpoint)
        .map_err(wire_err)?
        .ok_or_else(|| {
            wire_err(WireError::Truncated {
                what: "hello (the primary closed the stream)",
                got: 0,
                want: wire::HEADER_LEN,
            })
        })?;
    if frame.header.kind != FrameKind::Hello {
        return Err(SessionError::Replica {
            peer,
            source: ReplicaError::NoSession {
                kind: frame.header.kind,
            },
        });
    }
    let ack = match replica.accept(frame) {
        Ok(Some(ack)) => ack,
        Ok(None) => {
            return Err(SessionError::Replica {
                peer,
                source: ReplicaError::NoSession {
                    kind: FrameKind::Hello,
                },
            });
        }
        Err(source) => return Err(SessionError::Replica { peer, source }),
    };
    if let Some((epoch, sequence)) = replica.take_ack_slot() {
        wire::write_ack(endpoint, epoch, sequence, &ack).map_err(wire_err)?;
    }
    let Some(watch) = watch else {
        endpoint.set_read_timeout(None).map_err(timeout_err)?;
        return Ok(replica.serve(&mut Buffered::new(endpoint)));
    };
    endpoint
        .set_read_timeout(Some(watch.tick()))
        .map_err(timeout_err)?;
    // The first commit of a session (this one, or one a new hello opens on the same stream)
    // is told on the watch's report descriptor: the spare holds a whole checkpoint.
    let mut told = false;
    Ok(replica.serve_with(
        &mut Buffered::new(Watched::new(endpoint, watch)),
        |w, epoch, sequence, ack| {
            let sent = wire::write_ack(w, epoch, sequence, ack)
                .and_then(|()| w.flush().map_err(WireError::Io));
            match ack.acked {
                Acked::Hello => told = false,
                Acked::Commit if !told => {
                    told = true;
                    w.get_mut().watch().holding(ack.checkpoint, epoch);
                }
                Acked::Commit => {}
            }
            sent
        },
    ))
}

/// The spare's end of a session after the hello: reads buffered (a checkpoint's frames,
/// written by the primary with one `write`, come in with one `read` instead of two per
/// frame), writes (the acks) straight through. The buffer only ever holds bytes of frames
/// the replica is about to read, so nothing is lost when the session ends.
struct Buffered<S: std::io::Read>(std::io::BufReader<S>);

impl<S: std::io::Read> Buffered<S> {
    fn new(inner: S) -> Self {
        // A checkpoint of a few pages arrives whole; larger ones in 64 KiB reads.
        Self(std::io::BufReader::with_capacity(64 << 10, inner))
    }

    /// The stream under the buffer.
    fn get_mut(&mut self) -> &mut S {
        self.0.get_mut()
    }
}

impl<S: std::io::Read> std::io::Read for Buffered<S> {
    /// As `BufReader`'s read, but the bytes leave the buffer through
    /// [`copy_bytes`](crate::memcopy::copy_bytes): a page frame's body sits at whatever
    /// distance from the body it is read into.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead as _;
        // A large read with nothing buffered goes straight to the stream.
        if self.0.buffer().is_empty() && buf.len() >= self.0.capacity() {
            return self.0.get_mut().read(buf);
        }
        let have = self.0.fill_buf()?;
        let n = have.len().min(buf.len());
        crate::memcopy::copy_bytes(&mut buf[..n], &have[..n]);
        self.0.consume(n);
        Ok(n)
    }
}

impl<S: std::io::Read + std::io::Write> std::io::Write for Buffered<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::Buffered;
    use std::io::Read;

    /// A stream that hands out at most `step` bytes per read, as a socket hands out what has
    /// arrived.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn buffered_reads_give_every_byte_in_order_whatever_their_sizes() {
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i * 31 + i / 977) as u8).collect();
        for step in [7, 4096, 70_000, usize::MAX] {
            let mut r = Buffered::new(Trickle {
                bytes: &bytes,
                step,
            });
            let mut got = Vec::new();
            // Header-sized, page-frame-sized, and larger than the buffer (which reads past it
            // when it is empty), in turn.
            for (i, want) in [40, 4112, 100_000, 1, 65_536].iter().cycle().enumerate() {
                let mut buf = vec![0u8; *want];
                let n = r.read(&mut buf).expect("read");
                if n == 0 {
                    assert!(i > 0, "the first read found bytes");
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got.len(), bytes.len(), "step {step}");
            assert!(got == bytes, "the bytes read with step {step} differ");
        }
    }
}
