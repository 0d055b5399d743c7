//! The sending side of a session: a hello, then checkpoints (page frames, one metadata
//! frame, a commit), each frame numbered in sequence under the session's epoch; and the
//! reader of the spare's acks.
//!
//! The page, encoded-metadata and commit paths never allocate and call only `write` on the
//! output, so a fork child holding a copy of the writer (with a raw-fd output) may finish a
//! checkpoint the parent began; the parent then advances its own copy with
//! [`WriterState::skip_checkpoint`].

use std::io::{Read, Write};

use super::{
    Ack, Acked, Body, Commit, FrameKind, Hello, MAX_PAGES_PER_FRAME, Metadata, PageHeader,
    WireError, encode_record, read_frame, write_frame,
};
use crate::sys::PAGE_SIZE;

/// A checkpoint being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    full: bool,
    frames: u32,
    pages: u64,
    bodies_crc: u32,
    metadata: bool,
}

/// Where a writer is in its session; `Copy`, so a fork child and its parent can agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterState {
    /// The session's epoch.
    pub epoch: u64,
    /// The sequence number of the next frame.
    pub next_sequence: u64,
    /// The number the next checkpoint gets.
    pub next_checkpoint: u64,
    open: Option<Open>,
    broken: bool,
}

impl WriterState {
    /// Advances past a checkpoint of `frames` page and metadata frames that another copy of
    /// the writer (a fork child) writes, as if this one had written it and its commit.
    pub fn skip_checkpoint(&mut self, frames: u32) {
        self.next_sequence += u64::from(frames) + 1;
        self.next_checkpoint += 1;
        self.open = None;
    }

    /// Whether a checkpoint has begun and not yet been committed.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// Writes a session's frames to `W`.
#[derive(Debug)]
pub struct CheckpointWriter<W> {
    out: W,
    state: WriterState,
}

impl<W: Write> CheckpointWriter<W> {
    /// A writer for a new session under `epoch`, whose first checkpoint is number
    /// `first_checkpoint` (at least 1; a primary that restored checkpoint N continues at N+1).
    pub fn new(out: W, epoch: u64, first_checkpoint: u64) -> Self {
        Self {
            out,
            state: WriterState {
                epoch,
                next_sequence: 0,
                next_checkpoint: first_checkpoint.max(1),
                open: None,
                broken: false,
            },
        }
    }

    /// A writer continuing from `state` (a fork child's copy).
    pub fn with_state(out: W, state: WriterState) -> Self {
        Self { out, state }
    }

    /// The session state.
    pub fn state(&self) -> WriterState {
        self.state
    }

    /// Replaces the session state (after a fork child wrote a checkpoint).
    pub fn set_state(&mut self, state: WriterState) {
        self.state = state;
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The output, mutably (e.g. to flush it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The output, giving up the writer.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Writes one frame, numbering it; any failure breaks the session.
    fn frame(&mut self, kind: FrameKind, parts: &[&[u8]]) -> Result<u32, WireError> {
        if self.state.broken {
            return Err(WireError::Broken);
        }
        match write_frame(
            &mut self.out,
            kind,
            self.state.epoch,
            self.state.next_sequence,
            parts,
        ) {
            Ok(crc) => {
                self.state.next_sequence += 1;
                Ok(crc)
            }
            Err(e) => {
                // A partial frame may be on the wire: nothing after it can be understood.
                if matches!(e, WireError::Io(_)) {
                    self.state.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Sends the hello that opens the session; must be the first frame.
    pub fn hello(&mut self, hello: &Hello) -> Result<(), WireError> {
        if self.state.next_sequence != 0 {
            return Err(WireError::Misuse {
                what: "hello after the session started",
            });
        }
        let body = encode_record(FrameKind::Hello, hello)?;
        self.frame(FrameKind::Hello, &[&body])?;
        Ok(())
    }

    /// Begins a checkpoint: `full` replaces the spare's image, otherwise it patches the last
    /// one.
    pub fn begin(&mut self, full: bool) -> Result<(), WireError> {
        if self.state.next_sequence == 0 {
            return Err(WireError::Misuse {
                what: "checkpoint before the hello",
            });
        }
        if self.state.open.is_some() {
            return Err(WireError::Misuse {
                what: "begin inside an open checkpoint",
            });
        }
        self.state.open = Some(Open {
            full,
            frames: 0,
            pages: 0,
            bodies_crc: 0,
            metadata: false,
        });
        Ok(())
    }

    fn open(&mut self, what: &'static str) -> Result<Open, WireError> {
        self.state.open.ok_or(WireError::Misuse { what })
    }

    /// Records a frame of the open checkpoint.
    fn count(&mut self, crc: u32, len: usize, pages: u64, metadata: bool) {
        if let Some(open) = &mut self.state.open {
            open.frames += 1;
            open.pages += pages;
            open.bodies_crc = super::crc32c_combine(open.bodies_crc, crc, len);
            open.metadata |= metadata;
        }
    }

    /// Writes `data` (whole pages) as the contents of region `region` from page `first_page`
    /// on, in frames of at most [`MAX_PAGES_PER_FRAME`] pages. Never allocates.
    pub fn pages(&mut self, region: u32, first_page: u64, data: &[u8]) -> Result<(), WireError> {
        self.open("pages outside a checkpoint")?;
        if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(WireError::UnalignedPages {
                region,
                len: data.len(),
            });
        }
        let chunk = MAX_PAGES_PER_FRAME as usize * PAGE_SIZE;
        let mut page = first_page;
        for part in data.chunks(chunk) {
            let pages = (part.len() / PAGE_SIZE) as u32;
            let sub = PageHeader {
                region,
                first_page: page,
                pages,
            }
            .encode();
            let crc = self.frame(FrameKind::Pages, &[&sub, part])?;
            self.count(crc, sub.len() + part.len(), u64::from(pages), false);
            page += u64::from(pages);
        }
        Ok(())
    }

    /// Writes the checkpoint's metadata record.
    pub fn metadata(&mut self, metadata: &Metadata) -> Result<(), WireError> {
        let body = encode_record(FrameKind::Metadata, metadata)?;
        self.encoded_metadata(&body)
    }

    /// Writes a metadata record encoded beforehand with [`encode_record`] (before a fork).
    /// Never allocates.
    pub fn encoded_metadata(&mut self, body: &[u8]) -> Result<(), WireError> {
        let open = self.open("metadata outside a checkpoint")?;
        if open.metadata {
            return Err(WireError::Misuse {
                what: "a second metadata record in one checkpoint",
            });
        }
        let crc = self.frame(FrameKind::Metadata, &[body])?;
        self.count(crc, body.len(), 0, true);
        Ok(())
    }

    /// Ends the checkpoint with its commit record, which the spare validates before applying
    /// anything. Never allocates.
    pub fn commit(&mut self) -> Result<Commit, WireError> {
        let open = self.open("commit outside a checkpoint")?;
        if !open.metadata {
            return Err(WireError::Misuse {
                what: "commit without a metadata record",
            });
        }
        let commit = Commit {
            checkpoint: self.state.next_checkpoint,
            frames: open.frames,
            full: open.full,
            pages: open.pages,
            bodies_crc: open.bodies_crc,
        };
        self.frame(FrameKind::Commit, &[&commit.encode()])?;
        self.state.open = None;
        self.state.next_checkpoint += 1;
        Ok(commit)
    }

    /// Ends the session on purpose, saying why: the spare will not take over when the stream
    /// ends. Refused inside an open checkpoint.
    pub fn goodbye(&mut self, why: super::Farewell) -> Result<(), WireError> {
        if self.state.open.is_some() {
            return Err(WireError::Misuse {
                what: "goodbye inside an open checkpoint",
            });
        }
        self.frame(FrameKind::Goodbye, &[why.encode()])?;
        Ok(())
    }

    /// Tells the spare the primary is alive while it has nothing else to send. Refused inside
    /// an open checkpoint (a checkpoint's frames are written back to back).
    pub fn heartbeat(&mut self) -> Result<(), WireError> {
        if self.state.next_sequence == 0 {
            return Err(WireError::Misuse {
                what: "heartbeat before the hello",
            });
        }
        if self.state.open.is_some() {
            return Err(WireError::Misuse {
                what: "heartbeat inside an open checkpoint",
            });
        }
        self.frame(FrameKind::Heartbeat, &[])?;
        Ok(())
    }

    /// A whole checkpoint: the runs `(region, first page, bytes)`, the metadata, the commit.
    pub fn checkpoint<'a>(
        &mut self,
        full: bool,
        runs: impl IntoIterator<Item = (u32, u64, &'a [u8])>,
        metadata: &Metadata,
    ) -> Result<Commit, WireError> {
        self.begin(full)?;
        for (region, first_page, data) in runs {
            self.pages(region, first_page, data)?;
        }
        self.metadata(metadata)?;
        self.commit()
    }
}

/// How many page frames [`CheckpointWriter::pages`] writes for a run of `pages` pages.
pub fn page_frames(pages: usize) -> u32 {
    pages.div_ceil(MAX_PAGES_PER_FRAME as usize) as u32
}

/// Reads the spare's acks of one session, checking epoch, sequence and what they answer.
#[derive(Debug, Clone, Copy)]
pub struct AckReader {
    epoch: u64,
    next_sequence: u64,
}

impl AckReader {
    /// A reader for the session under `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_sequence: 0,
        }
    }

    /// Reads the next ack and checks that it answers `acked` (and, for a commit, checkpoint
    /// `checkpoint`). Returns the ack (for a hello: the spare's last committed checkpoint).
    pub fn expect(
        &mut self,
        r: &mut impl Read,
        acked: Acked,
        checkpoint: Option<u64>,
    ) -> Result<Ack, WireError> {
        let frame = read_frame(r)?.ok_or(WireError::Truncated {
            what: "ack (the spare closed the stream)",
            got: 0,
            want: super::HEADER_LEN,
        })?;
        let h = frame.header;
        if h.epoch != self.epoch {
            return Err(WireError::Unexpected {
                field: "ack epoch",
                found: h.epoch,
                want: self.epoch,
            });
        }
        if h.sequence != self.next_sequence {
            return Err(WireError::Unexpected {
                field: "ack sequence",
                found: h.sequence,
                want: self.next_sequence,
            });
        }
        let Body::Ack(ack) = frame.body else {
            return Err(WireError::Unexpected {
                field: "frame kind from the spare",
                found: h.kind as u64,
                want: FrameKind::Ack as u64,
            });
        };
        self.next_sequence += 1;
        if ack.acked != acked {
            return Err(WireError::Unexpected {
                field: "acknowledged kind",
                found: ack.acked as u64,
                want: acked as u64,
            });
        }
        if let Some(want) = checkpoint
            && ack.checkpoint != want
        {
            return Err(WireError::Unexpected {
                field: "acknowledged checkpoint",
                found: ack.checkpoint,
                want,
            });
        }
        Ok(ack)
    }
}
