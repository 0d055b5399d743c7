//! The fixed-layout parts of the stream: the frame header and the bodies that have a fixed
//! layout (page sub-header, commit record, ack). All little-endian, unaligned, parsed and built
//! with `zerocopy`; the encoders write into caller-provided arrays and never allocate, so a
//! fork child may use them before a raw `write(2)`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{FrameKind, MAX_BODY_LEN, VERSION, WireError};

/// The first four bytes of every frame: "HSCP" (hot spare checkpoint).
pub const MAGIC: [u8; 4] = *b"HSCP";
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 40;
/// Size of the sub-header at the start of a page frame's body.
pub const PAGE_SUBHEADER_LEN: usize = 16;
/// Size of a commit record's body.
pub const COMMIT_LEN: usize = 32;
/// Size of an ack's body.
pub const ACK_LEN: usize = 16;
/// The bytes of the header covered by its own checksum (everything before it).
const HEADER_CRC_COVERS: usize = 36;

/// The frame header as it lies on the wire (see PROTOCOL.md, "Frame header").
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    magic: [u8; 4],
    version: U16,
    kind: U16,
    epoch: U64,
    sequence: U64,
    length: U32,
    body_crc: U32,
    reserved: U32,
    header_crc: U32,
}

const _: () = assert!(size_of::<RawHeader>() == HEADER_LEN);

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the body is.
    pub kind: FrameKind,
    /// The primary's epoch; raised by the failover harness at each promotion.
    pub epoch: u64,
    /// Position of the frame in its direction of the session, from 0 at the hello.
    pub sequence: u64,
    /// Length of the body in bytes (at most [`MAX_BODY_LEN`]).
    pub length: u32,
    /// crc32c of the body.
    pub body_crc: u32,
}

impl FrameHeader {
    /// A header for a body of `length` bytes whose crc32c is `body_crc`.
    pub fn new(kind: FrameKind, epoch: u64, sequence: u64, length: u32, body_crc: u32) -> Self {
        Self {
            kind,
            epoch,
            sequence,
            length,
            body_crc,
        }
    }

    /// The header's wire bytes, written into `out`; never allocates.
    pub fn encode_into(&self, out: &mut [u8; HEADER_LEN]) {
        let mut raw = RawHeader {
            magic: MAGIC,
            version: U16::new(VERSION),
            kind: U16::new(self.kind as u16),
            epoch: U64::new(self.epoch),
            sequence: U64::new(self.sequence),
            length: U32::new(self.length),
            body_crc: U32::new(self.body_crc),
            reserved: U32::new(0),
            header_crc: U32::new(0),
        };
        let crc = crc32c::crc32c(&raw.as_bytes()[..HEADER_CRC_COVERS]);
        raw.header_crc = U32::new(crc);
        out.copy_from_slice(raw.as_bytes());
    }

    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.encode_into(&mut out);
        out
    }

    /// Parses and validates a header. The checks run in the order a reader can trust them:
    /// magic (is this our stream at all), version (so a newer peer gets a clear answer even if
    /// it changed the rest of the layout), the header checksum (any flipped bit), then the
    /// reserved field, kind and length.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let raw = RawHeader::read_from_bytes(bytes).map_err(|_| WireError::Truncated {
            what: "frame header",
            got: 0,
            want: HEADER_LEN,
        })?;
        if raw.magic != MAGIC {
            return Err(WireError::BadMagic { found: raw.magic });
        }
        if raw.version.get() != VERSION {
            return Err(WireError::UnsupportedVersion {
                found: raw.version.get(),
                supported: VERSION,
            });
        }
        let crc = crc32c::crc32c(&bytes[..HEADER_CRC_COVERS]);
        if crc != raw.header_crc.get() {
            return Err(WireError::HeaderChecksum {
                found: raw.header_crc.get(),
                computed: crc,
            });
        }
        if raw.reserved.get() != 0 {
            return Err(WireError::Reserved {
                what: "frame header",
                value: u64::from(raw.reserved.get()),
            });
        }
        let kind = FrameKind::from_u16(raw.kind.get())?;
        let length = raw.length.get();
        if length > MAX_BODY_LEN {
            return Err(WireError::TooLong {
                kind,
                length: u64::from(length),
                max: MAX_BODY_LEN,
            });
        }
        Ok(Self {
            kind,
            epoch: raw.epoch.get(),
            sequence: raw.sequence.get(),
            length,
            body_crc: raw.body_crc.get(),
        })
    }
}

/// The start of a page frame's body: which pages the raw bytes after it belong to.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawPageHeader {
    region: U32,
    pages: U32,
    first_page: U64,
}

const _: () = assert!(size_of::<RawPageHeader>() == PAGE_SUBHEADER_LEN);

/// Which pages a page frame carries: `pages` pages from `first_page` of region `region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// The region's id.
    pub region: u32,
    /// Index of the first page, relative to the region's base.
    pub first_page: u64,
    /// Number of pages (at least 1); the body holds `pages * PAGE_SIZE` raw bytes after this.
    pub pages: u32,
}

impl PageHeader {
    /// The sub-header's wire bytes; never allocates.
    pub fn encode(&self) -> [u8; PAGE_SUBHEADER_LEN] {
        let raw = RawPageHeader {
            region: U32::new(self.region),
            pages: U32::new(self.pages),
            first_page: U64::new(self.first_page),
        };
        let mut out = [0; PAGE_SUBHEADER_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Parses the sub-header at the start of `body`.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let (raw, _) = RawPageHeader::read_from_prefix(body).map_err(|_| WireError::Truncated {
            what: "page sub-header",
            got: body.len(),
            want: PAGE_SUBHEADER_LEN,
        })?;
        Ok(Self {
            region: raw.region.get(),
            first_page: raw.first_page.get(),
            pages: raw.pages.get(),
        })
    }
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawCommit {
    checkpoint: U64,
    frames: U32,
    flags: U32,
    pages: U64,
    bodies_crc: U32,
    reserved: U32,
}

const _: () = assert!(size_of::<RawCommit>() == COMMIT_LEN);

/// Flag bit of [`Commit::full`] on the wire.
const COMMIT_FULL: u32 = 1;

/// The record that ends a checkpoint; the replica applies the staged frames only on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The checkpoint's number, increasing within an epoch, from 1.
    pub checkpoint: u64,
    /// Frames of this checkpoint before the commit (page frames plus the metadata frame).
    pub frames: u32,
    /// A full checkpoint replaces the image (pages not sent are zero); an incremental one
    /// patches the previous checkpoint's image.
    pub full: bool,
    /// Pages carried by the checkpoint's page frames.
    pub pages: u64,
    /// crc32c of the concatenated bodies of those frames, in stream order.
    pub bodies_crc: u32,
}

impl Commit {
    /// The record's wire bytes; never allocates.
    pub fn encode(&self) -> [u8; COMMIT_LEN] {
        let raw = RawCommit {
            checkpoint: U64::new(self.checkpoint),
            frames: U32::new(self.frames),
            flags: U32::new(if self.full { COMMIT_FULL } else { 0 }),
            pages: U64::new(self.pages),
            bodies_crc: U32::new(self.bodies_crc),
            reserved: U32::new(0),
        };
        let mut out = [0; COMMIT_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Parses a commit body, which must be exactly [`COMMIT_LEN`] bytes.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let raw = RawCommit::read_from_bytes(body).map_err(|_| WireError::BodyLength {
            kind: FrameKind::Commit,
            length: body.len(),
            want: COMMIT_LEN,
        })?;
        let flags = raw.flags.get();
        if flags & !COMMIT_FULL != 0 {
            return Err(WireError::Reserved {
                what: "commit flags",
                value: u64::from(flags),
            });
        }
        if raw.reserved.get() != 0 {
            return Err(WireError::Reserved {
                what: "commit record",
                value: u64::from(raw.reserved.get()),
            });
        }
        Ok(Self {
            checkpoint: raw.checkpoint.get(),
            frames: raw.frames.get(),
            full: flags & COMMIT_FULL != 0,
            pages: raw.pages.get(),
            bodies_crc: raw.bodies_crc.get(),
        })
    }
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawAck {
    acked: U16,
    reserved: [u8; 6],
    checkpoint: U64,
}

const _: () = assert!(size_of::<RawAck>() == ACK_LEN);

/// What an ack answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Acked {
    /// The hello: the spare accepted the session.
    Hello = 1,
    /// A commit: the checkpoint is applied to the spare's image.
    Commit = 2,
}

/// The spare's answer to a hello or a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// What is acknowledged.
    pub acked: Acked,
    /// For a commit, its checkpoint number; for a hello, the spare's last committed
    /// checkpoint (0 when it has none).
    pub checkpoint: u64,
}

impl Ack {
    /// The ack's wire bytes; never allocates.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let raw = RawAck {
            acked: U16::new(self.acked as u16),
            reserved: [0; 6],
            checkpoint: U64::new(self.checkpoint),
        };
        let mut out = [0; ACK_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Parses an ack body, which must be exactly [`ACK_LEN`] bytes.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let raw = RawAck::read_from_bytes(body).map_err(|_| WireError::BodyLength {
            kind: FrameKind::Ack,
            length: body.len(),
            want: ACK_LEN,
        })?;
        if raw.reserved != [0; 6] {
            return Err(WireError::Reserved {
                what: "ack",
                value: u64::from_le_bytes([
                    raw.reserved[0],
                    raw.reserved[1],
                    raw.reserved[2],
                    raw.reserved[3],
                    raw.reserved[4],
                    raw.reserved[5],
                    0,
                    0,
                ]),
            });
        }
        let acked = match raw.acked.get() {
            1 => Acked::Hello,
            2 => Acked::Commit,
            other => return Err(WireError::UnknownAcked { value: other }),
        };
        Ok(Self {
            acked,
            checkpoint: raw.checkpoint.get(),
        })
    }
}
