//! The spare's side of the stream, independent of the OS memory: an image of the primary's
//! regions that always equals exactly one completed checkpoint. Frames are validated and
//! staged as they arrive and applied only when the checkpoint's commit record arrives and
//! matches them; anything wrong rejects the frame, drops what was staged, and leaves the
//! committed image and metadata untouched. See `hslib/PROTOCOL.md` ("Replica states").

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::sys::PAGE_SIZE;
use crate::wire::{
    self, Ack, Acked, Body, Commit, Farewell, Frame, FrameHeader, FrameKind, Hello, Metadata,
    PageFrame, RegionInfo, WireError,
};

/// The most regions a region table may list.
pub const MAX_REGIONS: usize = 4096;
/// The default limit on the image size (the sum of the region lengths).
pub const DEFAULT_MAX_IMAGE: u64 = 4 << 30;

/// What the replica refused, and why.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The stream itself was bad (see [`WireError`]).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A frame of an epoch older than one already accepted (a deposed primary).
    #[error("frame of stale epoch {found}: epoch {highest} was already accepted")]
    StaleEpoch {
        /// The frame's epoch.
        found: u64,
        /// The highest epoch accepted.
        highest: u64,
    },
    /// A frame of a newer epoch than its session's (epochs change only at a hello).
    #[error("frame of epoch {found} in a session of epoch {session}")]
    EpochChanged {
        /// The frame's epoch.
        found: u64,
        /// The session's epoch.
        session: u64,
    },
    /// A frame out of sequence (lost, repeated or reordered).
    #[error("frame sequence {found} where {want} was due")]
    OutOfOrder {
        /// The frame's sequence number.
        found: u64,
        /// The number due.
        want: u64,
    },
    /// A frame other than a hello before any session started.
    #[error("{kind:?} frame before a hello")]
    NoSession {
        /// The frame's kind.
        kind: FrameKind,
    },
    /// A frame the spare never receives.
    #[error("{kind:?} frame is not sent to a spare")]
    UnexpectedKind {
        /// The frame's kind.
        kind: FrameKind,
    },
    /// The primary tracks another page size.
    #[error("primary uses {found}-byte pages, this spare {want}-byte pages")]
    PageSize {
        /// The hello's page size.
        found: u32,
        /// This build's.
        want: usize,
    },
    /// The hello's region table is unusable.
    #[error("region table: region {region}: {reason}")]
    BadRegionTable {
        /// The offending region id.
        region: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The hello lists more regions than the limit.
    #[error("region table lists {count} regions; at most {max} are accepted")]
    TooManyRegions {
        /// Regions listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The image would be larger than the configured limit.
    #[error("image of {bytes} bytes exceeds the limit of {max} bytes")]
    ImageTooLarge {
        /// The sum of the region lengths.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A page frame names a region the session does not have.
    #[error("page frame for unknown region {region}")]
    UnknownRegion {
        /// The region id.
        region: u32,
    },
    /// A page frame reaches past its region's end.
    #[error("pages {first_page}..+{pages} are outside region {region} of {region_pages} pages")]
    PageOutOfRange {
        /// The region id.
        region: u32,
        /// The first page.
        first_page: u64,
        /// The page count.
        pages: u32,
        /// The region's size in pages.
        region_pages: u64,
    },
    /// A checkpoint stages more page data than the whole image holds.
    #[error("checkpoint stages more than the image's {max} bytes of pages")]
    StagedTooMuch {
        /// The image size.
        max: u64,
    },
    /// A second metadata record in one checkpoint.
    #[error("a second metadata record in checkpoint")]
    DuplicateMetadata,
    /// A commit without a metadata record.
    #[error("commit of checkpoint {checkpoint} without a metadata record")]
    MissingMetadata {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The commit record does not describe the staged frames.
    #[error("commit of checkpoint {checkpoint}: {field} is {found} but {staged} was staged")]
    CommitMismatch {
        /// The checkpoint.
        checkpoint: u64,
        /// Which field.
        field: &'static str,
        /// The commit's value.
        found: u64,
        /// The staged value.
        staged: u64,
    },
    /// A commit whose number does not follow the last one of its epoch.
    #[error("checkpoint {checkpoint} is not newer than checkpoint {last} of the same epoch")]
    CheckpointNotNewer {
        /// The commit's number.
        checkpoint: u64,
        /// The last committed number.
        last: u64,
    },
    /// An incremental checkpoint with no image of the same region table to patch.
    #[error("incremental checkpoint {checkpoint} has no base image of this region table")]
    NeedFull {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The metadata's region table differs from the session's.
    #[error("checkpoint {checkpoint}: metadata region table differs from the hello's")]
    RegionTableMismatch {
        /// The checkpoint.
        checkpoint: u64,
    },
}

/// One region of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegionImage {
    info: RegionInfo,
    bytes: Vec<u8>,
}

/// The spare's copy of the regions' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    regions: BTreeMap<u32, RegionImage>,
}

/// Checks a region table: ids unique, lengths and bases page multiples, no overlaps, total
/// within `max`. Returns it sorted by id, with the total length.
pub fn validate_table(
    table: &[RegionInfo],
    max: u64,
) -> Result<(Vec<RegionInfo>, u64), ReplicaError> {
    let bad = |region: u32, reason| ReplicaError::BadRegionTable { region, reason };
    if table.len() > MAX_REGIONS {
        return Err(ReplicaError::TooManyRegions {
            count: table.len(),
            max: MAX_REGIONS,
        });
    }
    let page = PAGE_SIZE as u64;
    let mut total: u64 = 0;
    for r in table {
        if r.len == 0 || !r.len.is_multiple_of(page) {
            return Err(bad(
                r.id,
                "length is not a positive multiple of the page size",
            ));
        }
        if r.base == 0 || !r.base.is_multiple_of(page) {
            return Err(bad(
                r.id,
                "base is not a non-zero multiple of the page size",
            ));
        }
        if r.base.checked_add(r.len).is_none() {
            return Err(bad(r.id, "base + length overflows"));
        }
        total = total.saturating_add(r.len);
    }
    if total > max {
        return Err(ReplicaError::ImageTooLarge { bytes: total, max });
    }
    let mut by_base = table.to_vec();
    by_base.sort_unstable_by_key(|r| r.base);
    for w in by_base.windows(2) {
        if w[0].base + w[0].len > w[1].base {
            return Err(bad(w[1].id, "overlaps another region"));
        }
    }
    let mut by_id = table.to_vec();
    by_id.sort_unstable_by_key(|r| r.id);
    for w in by_id.windows(2) {
        if w[0].id == w[1].id {
            return Err(bad(w[1].id, "id appears twice"));
        }
    }
    Ok((by_id, total))
}

impl Image {
    /// An all-zero image of `table`'s regions (the table is validated against `max` bytes).
    pub fn new(table: &[RegionInfo], max: u64) -> Result<Self, ReplicaError> {
        let (table, _) = validate_table(table, max)?;
        let regions = table
            .into_iter()
            .map(|info| {
                // `validate_table` bounded the total by `max`, which fits the address space.
                let bytes = vec![0u8; info.len as usize];
                (info.id, RegionImage { info, bytes })
            })
            .collect();
        Ok(Self { regions })
    }

    /// The region table, sorted by id.
    pub fn table(&self) -> Vec<RegionInfo> {
        self.regions.values().map(|r| r.info).collect()
    }

    /// The bytes of region `id`.
    pub fn region(&self, id: u32) -> Option<&[u8]> {
        self.regions.get(&id).map(|r| r.bytes.as_slice())
    }

    /// Checks that `pages` pages from `first_page` lie inside region `region`.
    fn check_pages(&self, region: u32, first_page: u64, pages: u32) -> Result<(), ReplicaError> {
        let r = self
            .regions
            .get(&region)
            .ok_or(ReplicaError::UnknownRegion { region })?;
        check_range(&r.info, first_page, pages)
    }

    /// Overwrites pages of a region with `data` (whole pages), bounds-checked.
    pub fn write_pages(
        &mut self,
        region: u32,
        first_page: u64,
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        let pages = u32::try_from(data.len() / PAGE_SIZE).unwrap_or(u32::MAX);
        if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(WireError::UnalignedPages {
                region,
                len: data.len(),
            }
            .into());
        }
        self.check_pages(region, first_page, pages)?;
        if let Some(r) = self.regions.get_mut(&region) {
            let start = first_page as usize * PAGE_SIZE;
            crate::memcopy::copy_bytes(&mut r.bytes[start..start + data.len()], data);
        }
        Ok(())
    }

    /// SHA-256 over every region's id, base, length and bytes, in id order.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for r in self.regions.values() {
            h.update(r.info.id.to_le_bytes());
            h.update(r.info.base.to_le_bytes());
            h.update(r.info.len.to_le_bytes());
            h.update(&r.bytes);
        }
        h.finalize().into()
    }
}

/// Checks a page range against a region.
fn check_range(info: &RegionInfo, first_page: u64, pages: u32) -> Result<(), ReplicaError> {
    let region_pages = info.len / PAGE_SIZE as u64;
    match first_page.checked_add(u64::from(pages)) {
        Some(end) if end <= region_pages => Ok(()),
        _ => Err(ReplicaError::PageOutOfRange {
            region: info.id,
            first_page,
            pages,
            region_pages,
        }),
    }
}

/// Where the replica is (PROTOCOL.md, "Replica states").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// No session: waiting for a hello.
    Idle,
    /// In a session, nothing staged.
    Ready,
    /// In a session, a checkpoint partly received.
    Staging,
    /// The last frame was refused; the session is over until the next hello.
    Rejected,
}

/// Limits of a replica.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaConfig {
    /// The largest image (sum of region lengths) a hello may ask for.
    pub max_image_bytes: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            max_image_bytes: DEFAULT_MAX_IMAGE,
        }
    }
}

/// A session: one hello and what follows it under its epoch.
#[derive(Debug)]
struct Session {
    epoch: u64,
    next_sequence: u64,
    ack_sequence: u64,
    table: Vec<RegionInfo>,
    by_id: BTreeMap<u32, RegionInfo>,
    total: u64,
}

/// The frames of the checkpoint being received.
#[derive(Debug, Default)]
struct Staged {
    pages: Vec<PageFrame>,
    metadata: Option<StagedMetadata>,
    frames: u32,
    page_count: u64,
    bytes: u64,
    bodies_crc: u32,
}

/// A staged checkpoint's metadata record.
#[derive(Debug)]
enum StagedMetadata {
    /// Decoded; with its bytes as sent when they are known (read off a stream).
    New(Box<Metadata>, Option<Vec<u8>>),
    /// Byte for byte the committed checkpoint's: not decoded again.
    Same,
}

/// A frame as the replica takes it in.
enum Arrived {
    /// Decoded.
    Frame(Body),
    /// A metadata record, decoded, with its bytes.
    Metadata(Box<Metadata>, Vec<u8>),
    /// A metadata record byte for byte the committed checkpoint's.
    SameMetadata,
}

/// The latest completed checkpoint.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The epoch of the session that sent it.
    pub epoch: u64,
    /// Its number.
    pub checkpoint: u64,
    /// The image.
    pub image: Image,
    /// Its metadata record.
    pub metadata: Metadata,
}

/// How a stream ended for [`Replica::serve`] and [`Replica::replay`].
#[derive(Debug)]
pub struct StreamEnd {
    /// Checkpoints committed from this stream.
    pub commits: u64,
    /// Why it ended: `None` at a clean end of stream, else the refused frame's error.
    pub error: Option<ReplicaError>,
}

/// The spare's replica of the primary's checkpointed state.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    highest_epoch: Option<u64>,
    session: Option<Session>,
    rejected: bool,
    goodbye: Option<Farewell>,
    staged: Staged,
    committed: Option<Committed>,
    /// The committed checkpoint's metadata record as it was sent (empty: not known). The
    /// primary sends the same bytes at every checkpoint while nothing in it changes; a
    /// record equal to these is not decoded again.
    committed_metadata: Vec<u8>,
    /// A commit checked and not applied yet: the spare's loop acks it first.
    checked: Option<Checked>,
    /// Page frame bodies applied, for the next ones to be read into (no allocation).
    bodies: Vec<Vec<u8>>,
    /// When a frame of its primary was last accepted.
    last_heard: Option<Instant>,
}

/// How many page frame bodies [`Replica`] keeps for reuse, and how large each may be (the
/// memory kept is bounded by their product: 2 MiB).
const SPARE_BODIES: usize = 8;
const SPARE_BODY_BYTES: usize = 64 * PAGE_SIZE + 64;

/// A checkpoint whose commit passed every check, to be applied.
#[derive(Debug)]
struct Checked {
    /// What becomes the committed checkpoint, its image not patched yet.
    committed: Committed,
    /// The pages to patch it with.
    pages: Vec<PageFrame>,
    /// The metadata record's bytes as sent, for the next record to be compared with
    /// (`None`: the committed record's stand; empty: not known).
    metadata_bytes: Option<Vec<u8>>,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new(ReplicaConfig::default())
    }
}

impl Replica {
    /// An empty replica.
    pub fn new(config: ReplicaConfig) -> Self {
        Self {
            config,
            highest_epoch: None,
            session: None,
            rejected: false,
            goodbye: None,
            staged: Staged::default(),
            committed: None,
            committed_metadata: Vec::new(),
            checked: None,
            bodies: Vec::new(),
            last_heard: None,
        }
    }

    /// Where the replica is.
    pub fn state(&self) -> ReplicaState {
        match &self.session {
            None if self.rejected => ReplicaState::Rejected,
            None => ReplicaState::Idle,
            Some(_) if self.staged.frames > 0 => ReplicaState::Staging,
            Some(_) => ReplicaState::Ready,
        }
    }

    /// The latest completed checkpoint, if any.
    pub fn committed(&self) -> Option<&Committed> {
        self.committed.as_ref()
    }

    /// Gives up the replica for its latest completed checkpoint (on promotion).
    pub fn into_committed(self) -> Option<Committed> {
        self.committed
    }

    /// The committed image, if any.
    pub fn image(&self) -> Option<&Image> {
        self.committed.as_ref().map(|c| &c.image)
    }

    /// The digest of the committed image ([`Image::digest`]).
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.image().map(Image::digest)
    }

    /// The number of the committed checkpoint.
    pub fn checkpoint(&self) -> Option<u64> {
        self.committed.as_ref().map(|c| c.checkpoint)
    }

    /// The committed metadata record.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.committed.as_ref().map(|c| &c.metadata)
    }

    /// A committed application blob.
    pub fn blob(&self, name: &str) -> Option<&[u8]> {
        self.metadata()?.blobs.get(name).map(Vec::as_slice)
    }

    /// Whether the last session ended with the primary's goodbye (a spare does not take
    /// over). Cleared by the next hello.
    pub fn said_goodbye(&self) -> bool {
        self.goodbye.is_some()
    }

    /// Why the last session's primary said goodbye, if it did. Cleared by the next hello.
    pub fn farewell(&self) -> Option<Farewell> {
        self.goodbye
    }

    /// When the replica last accepted a frame from its primary (a heartbeat counts: an idle
    /// primary sends one every [`crate::link::DEFAULT_HEARTBEAT`] or so); `None` before the
    /// first. A supervisor compares it with now to tell a silent primary from a quiet one.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// The highest epoch accepted so far.
    pub fn highest_epoch(&self) -> Option<u64> {
        self.highest_epoch
    }

    /// Ends the session (the stream closed or broke): whatever was staged is dropped.
    pub fn end_session(&mut self) {
        self.session = None;
        self.staged = Staged::default();
    }

    /// Takes one frame, as [`wire::read_frame`] returned it (its header's checksum fields are
    /// trusted to describe its body). On success returns the ack to send back, if the frame earns one (a
    /// hello or a commit). On error the frame is refused, the staged checkpoint dropped, the
    /// session ended, and the committed state is unchanged.
    pub fn accept(&mut self, frame: Frame) -> Result<Option<Ack>, ReplicaError> {
        let taken = self.take_in(frame.header, Arrived::Frame(frame.body));
        self.apply_checked();
        taken
    }

    fn take_in(&mut self, h: FrameHeader, body: Arrived) -> Result<Option<Ack>, ReplicaError> {
        let result = self.accept_inner(h, body);
        match &result {
            Ok(_) => self.last_heard = Some(Instant::now()),
            Err(_) => {
                self.end_session();
                self.rejected = true;
            }
        }
        result
    }

    fn accept_inner(&mut self, h: FrameHeader, body: Arrived) -> Result<Option<Ack>, ReplicaError> {
        if let Some(highest) = self.highest_epoch
            && h.epoch < highest
        {
            return Err(ReplicaError::StaleEpoch {
                found: h.epoch,
                highest,
            });
        }
        if let Arrived::Frame(Body::Hello(hello)) = body {
            return self.hello(h.epoch, h.sequence, &hello).map(Some);
        }
        if h.kind == FrameKind::Heartbeat && self.session.is_none() {
            // Outside a session (before a hello, after a refusal or the stream's end) there is no
            // sequence to check it against, and it changes nothing: a heartbeat that crossed
            // a refusal on the wire is no reason to refuse again.
            return Ok(None);
        }
        let session = self
            .session
            .as_mut()
            .ok_or(ReplicaError::NoSession { kind: h.kind })?;
        if h.epoch != session.epoch {
            return Err(ReplicaError::EpochChanged {
                found: h.epoch,
                session: session.epoch,
            });
        }
        if h.sequence != session.next_sequence {
            return Err(ReplicaError::OutOfOrder {
                found: h.sequence,
                want: session.next_sequence,
            });
        }
        session.next_sequence += 1;
        let body = match body {
            Arrived::Frame(Body::Metadata(m)) => Arrived::Metadata(m, Vec::new()),
            other => other,
        };
        let metadata = match body {
            Arrived::Frame(b) => return self.accept_body(h, b),
            Arrived::Metadata(m, bytes) => {
                StagedMetadata::New(m, (!bytes.is_empty()).then_some(bytes))
            }
            Arrived::SameMetadata => StagedMetadata::Same,
        };
        if self.staged.metadata.is_some() {
            return Err(ReplicaError::DuplicateMetadata);
        }
        self.stage(h.body_crc, h.length as usize);
        self.staged.metadata = Some(metadata);
        Ok(None)
    }

    /// A frame other than a hello or a metadata record, in its session.
    fn accept_body(&mut self, h: FrameHeader, body: Body) -> Result<Option<Ack>, ReplicaError> {
        let Some(session) = self.session.as_ref() else {
            return Err(ReplicaError::NoSession { kind: h.kind });
        };
        match body {
            Body::Hello(_) | Body::Ack(_) | Body::Metadata(_) => {
                Err(ReplicaError::UnexpectedKind { kind: h.kind })
            }
            Body::Pages(p) => {
                let info =
                    session
                        .by_id
                        .get(&p.header.region)
                        .ok_or(ReplicaError::UnknownRegion {
                            region: p.header.region,
                        })?;
                check_range(info, p.header.first_page, p.header.pages)?;
                let bytes = self.staged.bytes + p.data().len() as u64;
                if bytes > session.total {
                    return Err(ReplicaError::StagedTooMuch { max: session.total });
                }
                self.staged.bytes = bytes;
                self.staged.page_count += u64::from(p.header.pages);
                self.stage(h.body_crc, p.body().len());
                self.staged.pages.push(p);
                Ok(None)
            }
            Body::Commit(c) => self.commit(h.epoch, &c).map(Some),
            // Numbered like every frame (a lost one is still noticed), but not part of any
            // checkpoint: not staged, not counted by the commit.
            Body::Heartbeat => Ok(None),
            Body::Goodbye(why) => {
                if self.staged.frames > 0 {
                    return Err(ReplicaError::UnexpectedKind { kind: h.kind });
                }
                self.goodbye = Some(why);
                Ok(None)
            }
        }
    }

    fn stage(&mut self, crc: u32, len: usize) {
        self.staged.frames += 1;
        self.staged.bodies_crc = wire::crc32c_combine(self.staged.bodies_crc, crc, len);
    }

    fn hello(&mut self, epoch: u64, sequence: u64, hello: &Hello) -> Result<Ack, ReplicaError> {
        // A hello starts a new session: a checkpoint staged in an older one never completes.
        self.end_session();
        self.goodbye = None;
        if sequence != 0 {
            return Err(ReplicaError::OutOfOrder {
                found: sequence,
                want: 0,
            });
        }
        if hello.page_size as usize != PAGE_SIZE {
            return Err(ReplicaError::PageSize {
                found: hello.page_size,
                want: PAGE_SIZE,
            });
        }
        let (table, total) = validate_table(&hello.regions, self.config.max_image_bytes)?;
        let by_id = table.iter().map(|r| (r.id, *r)).collect();
        self.session = Some(Session {
            epoch,
            next_sequence: 1,
            ack_sequence: 0,
            table,
            by_id,
            total,
        });
        self.highest_epoch = Some(epoch);
        self.rejected = false;
        Ok(Ack {
            acked: Acked::Hello,
            checkpoint: self.checkpoint().unwrap_or(0),
        })
    }

    /// Applies the checkpoint [`commit`](Self::commit) checked, if any: its pages go into
    /// the image, which becomes the committed one. Cannot fail.
    fn apply_checked(&mut self) {
        let Some(Checked {
            mut committed,
            pages,
            metadata_bytes,
        }) = self.checked.take()
        else {
            return;
        };
        for p in pages {
            // Bounds were checked against the session's table, which is the image's table.
            if let Some(r) = committed.image.regions.get_mut(&p.header.region) {
                let start = p.header.first_page as usize * PAGE_SIZE;
                crate::memcopy::copy_bytes(&mut r.bytes[start..start + p.data().len()], p.data());
            }
            if self.bodies.len() < SPARE_BODIES && p.body().len() <= SPARE_BODY_BYTES {
                self.bodies.push(p.into_body());
            }
        }
        if let Some(bytes) = metadata_bytes {
            self.committed_metadata = bytes;
        }
        self.committed = Some(committed);
    }

    /// Validates the commit against the staged frames and takes them, to be applied by
    /// [`apply_checked`](Self::apply_checked) (the spare's loop sends the ack first); nothing
    /// changes unless every check passes.
    fn commit(&mut self, epoch: u64, c: &Commit) -> Result<Ack, ReplicaError> {
        let Some(session) = &self.session else {
            return Err(ReplicaError::NoSession {
                kind: FrameKind::Commit,
            });
        };
        let s = &self.staged;
        let mismatch = |field, found: u64, staged: u64| {
            if found == staged {
                Ok(())
            } else {
                Err(ReplicaError::CommitMismatch {
                    checkpoint: c.checkpoint,
                    field,
                    found,
                    staged,
                })
            }
        };
        mismatch("frame count", u64::from(c.frames), u64::from(s.frames))?;
        mismatch("page count", c.pages, s.page_count)?;
        mismatch(
            "bodies crc32c",
            u64::from(c.bodies_crc),
            u64::from(s.bodies_crc),
        )?;
        let Some(metadata) = &s.metadata else {
            return Err(ReplicaError::MissingMetadata {
                checkpoint: c.checkpoint,
            });
        };
        let base_fits = self
            .committed
            .as_ref()
            .is_some_and(|last| last.image.table() == session.table);
        // The record's region table must be the session's. A record the same as the
        // committed one was checked against its image's table when it was committed: if that
        // is the session's table, so is the record's.
        let regions = match (metadata, &self.committed) {
            (StagedMetadata::Same, Some(_)) if base_fits => None,
            (StagedMetadata::Same, Some(last)) => Some(&last.metadata.regions),
            (StagedMetadata::New(m, _), _) => Some(&m.regions),
            (StagedMetadata::Same, None) => {
                return Err(ReplicaError::MissingMetadata {
                    checkpoint: c.checkpoint,
                });
            }
        };
        if let Some(regions) = regions {
            let mut md_table = regions.clone();
            md_table.sort_unstable_by_key(|r| r.id);
            if md_table != session.table {
                return Err(ReplicaError::RegionTableMismatch {
                    checkpoint: c.checkpoint,
                });
            }
        }
        if let Some(last) = &self.committed
            && last.epoch == epoch
            && c.checkpoint <= last.checkpoint
        {
            return Err(ReplicaError::CheckpointNotNewer {
                checkpoint: c.checkpoint,
                last: last.checkpoint,
            });
        }
        if !c.full && !base_fits {
            return Err(ReplicaError::NeedFull {
                checkpoint: c.checkpoint,
            });
        }
        let fresh = if c.full {
            Some(Image::new(&session.table, self.config.max_image_bytes)?)
        } else {
            None
        };
        // Checked above: an incremental checkpoint has a committed image of this table, and
        // a record the same as the committed one has a committed one.
        let last = self.committed.take();
        let (image, last_metadata) = match (fresh, last) {
            (Some(image), last) => (image, last.map(|l| l.metadata)),
            (None, Some(last)) => (last.image, Some(last.metadata)),
            (None, None) => {
                return Err(ReplicaError::NeedFull {
                    checkpoint: c.checkpoint,
                });
            }
        };
        let staged = std::mem::take(&mut self.staged);
        let (metadata, metadata_bytes) = match staged.metadata {
            Some(StagedMetadata::New(m, bytes)) => (*m, Some(bytes.unwrap_or_default())),
            Some(StagedMetadata::Same) => (last_metadata.unwrap_or_default(), None),
            None => (Metadata::default(), Some(Vec::new())),
        };
        self.checked = Some(Checked {
            committed: Committed {
                epoch,
                checkpoint: c.checkpoint,
                image,
                metadata,
            },
            pages: staged.pages,
            metadata_bytes,
        });
        Ok(Ack {
            acked: Acked::Commit,
            checkpoint: c.checkpoint,
        })
    }

    /// The epoch and sequence number for the next ack of the session, if one is open.
    pub fn take_ack_slot(&mut self) -> Option<(u64, u64)> {
        let session = self.session.as_mut()?;
        let slot = (session.epoch, session.ack_sequence);
        session.ack_sequence += 1;
        Some(slot)
    }

    /// Receives from `stream` until it ends, sending an ack for each hello and commit (a
    /// session opened before, as by [`crate::session::serve_spare`], continues). Whatever was staged when the stream ended or broke is dropped.
    pub fn serve(&mut self, stream: &mut (impl Read + Write)) -> StreamEnd {
        self.run(stream, |w: &mut _, epoch, seq, ack: &Ack| {
            wire::write_ack(w, epoch, seq, ack)?;
            w.flush().map_err(WireError::Io)
        })
    }

    /// [`serve`](Self::serve), with each ack sent by `send(stream, epoch, sequence, ack)`
    /// (e.g. to note the first commit of a session as well). After a failed send no other
    /// ack is sent, and the reading goes on.
    pub fn serve_with<S: Read + Write>(
        &mut self,
        stream: &mut S,
        send: impl FnMut(&mut S, u64, u64, &Ack) -> Result<(), WireError>,
    ) -> StreamEnd {
        self.run(stream, send)
    }

    /// Rebuilds from a recorded stream (a checkpoint log): like [`serve`](Self::serve)
    /// without acks. A torn tail ends the replay at the last complete commit.
    pub fn replay(&mut self, log: &mut impl Read) -> StreamEnd {
        self.run(log, |_: &mut _, _, _, _: &Ack| Ok(()))
    }

    /// Reads the next frame off `stream`; a metadata record byte for byte the committed
    /// checkpoint's is not decoded again.
    fn read_arrived(
        &mut self,
        stream: &mut impl Read,
    ) -> Result<Option<(FrameHeader, Arrived)>, WireError> {
        let Some((header, body)) = wire::read_checked(stream, &mut self.bodies)? else {
            return Ok(None);
        };
        let arrived = if header.kind != FrameKind::Metadata {
            Arrived::Frame(wire::decode_body(header.kind, body)?)
        } else if self.committed.is_some()
            && !self.committed_metadata.is_empty()
            && body == self.committed_metadata
        {
            Arrived::SameMetadata
        } else {
            let m = Metadata::decode(&body).map_err(|source| WireError::Metadata { source })?;
            Arrived::Metadata(Box::new(m), body)
        };
        Ok(Some((header, arrived)))
    }

    fn run<S: Read>(
        &mut self,
        stream: &mut S,
        mut send: impl FnMut(&mut S, u64, u64, &Ack) -> Result<(), WireError>,
    ) -> StreamEnd {
        let mut commits = 0;
        // An ack that cannot be sent does not end the reading: frames the primary wrote
        // before it hung up (its goodbye above all) are still in the stream.
        let mut send_error = None;
        let error = loop {
            let (header, arrived) = match self.read_arrived(stream) {
                Ok(Some(f)) => f,
                Ok(None) => break None,
                Err(e) => {
                    self.rejected = true;
                    break Some(e.into());
                }
            };
            let kind = header.kind;
            match self.take_in(header, arrived) {
                Ok(None) => {}
                Ok(Some(ack)) => {
                    if kind == FrameKind::Commit {
                        commits += 1;
                    }
                    // The ack goes first: the checks have passed and applying cannot fail,
                    // so the primary need not wait for the copy into the image.
                    if let Some((epoch, seq)) = self.take_ack_slot()
                        && send_error.is_none()
                        && let Err(e) = send(stream, epoch, seq, &ack)
                    {
                        send_error = Some(e);
                    }
                    self.apply_checked();
                }
                Err(e) => break Some(e),
            }
        };
        self.end_session();
        let error = error.or_else(|| send_error.map(ReplicaError::from));
        StreamEnd { commits, error }
    }
}
