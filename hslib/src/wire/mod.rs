//! The checkpoint stream: versioned frames with a fixed little-endian header (magic, version,
//! kind, epoch, sequence, length, body crc32c, header crc32c), raw page payloads, postcard
//! metadata, and one commit record per checkpoint. `hslib/PROTOCOL.md` is the specification.

mod crc;
mod header;
mod meta;
mod writer;

use std::io::{self, IoSlice, Read, Write};

pub use crate::meta::{Metadata, RegionInfo};
pub use crc::combine as crc32c_combine;
pub use header::{
    ACK_LEN, Ack, Acked, COMMIT_LEN, Commit, FrameHeader, HEADER_LEN, MAGIC, PAGE_SUBHEADER_LEN,
    PageHeader, RawHeader,
};
pub use meta::Hello;
pub use writer::{AckReader, CheckpointWriter, WriterState, page_frames};

use crate::sys::PAGE_SIZE;

/// The protocol version this build speaks (header offset 4; never moves). Version 2 added
/// the [`FrameKind::Heartbeat`] frame.
pub const VERSION: u16 = 2;
/// The largest body a reader accepts; checked before anything is allocated.
pub const MAX_BODY_LEN: u32 = 16 << 20;
/// The most pages one page frame carries; longer runs are split (1 MiB of data per frame).
pub const MAX_PAGES_PER_FRAME: u32 = 256;

/// What a frame's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// Primary to spare, first in a session: the region table ([`Hello`], postcard).
    Hello = 1,
    /// Primary to spare: a run of raw pages ([`PageHeader`] + bytes).
    Pages = 2,
    /// Primary to spare: the checkpoint's [`Metadata`] (postcard).
    Metadata = 3,
    /// Primary to spare: the end of a checkpoint ([`Commit`]).
    Commit = 4,
    /// Spare to primary: [`Ack`] of a hello or a commit.
    Ack = 5,
    /// Primary to spare, last in a session: the primary ended its work on purpose, so the
    /// spare must not take over (empty body).
    Goodbye = 6,
    /// Primary to spare, between checkpoints on an idle stream: "still here" (empty body; it
    /// changes no image).
    Heartbeat = 7,
}

impl FrameKind {
    /// The kind with wire value `value`.
    pub fn from_u16(value: u16) -> Result<Self, WireError> {
        Ok(match value {
            1 => Self::Hello,
            2 => Self::Pages,
            3 => Self::Metadata,
            4 => Self::Commit,
            5 => Self::Ack,
            6 => Self::Goodbye,
            7 => Self::Heartbeat,
            other => return Err(WireError::UnknownKind { kind: other }),
        })
    }
}

/// What went wrong reading or writing the stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream ended in the middle of something.
    #[error("stream truncated in the {what}: got {got} of {want} bytes")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes read.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic {found:02x?} (want {MAGIC:02x?}): not a hotspare checkpoint stream")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The frame's version is not [`VERSION`].
    #[error("unsupported protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version on the wire.
        found: u16,
        /// The version this build speaks.
        supported: u16,
    },
    /// The header's checksum does not match its bytes.
    #[error("header checksum {found:#010x} does not match the computed {computed:#010x}")]
    HeaderChecksum {
        /// The checksum on the wire.
        found: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The frame kind is not one this version defines.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind on the wire.
        kind: u16,
    },
    /// A reserved field is not zero.
    #[error("reserved field of the {what} is {value:#x}, not zero")]
    Reserved {
        /// Where.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The header announces a body longer than the limit.
    #[error("{kind:?} frame of {length} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The frame's kind.
        kind: FrameKind,
        /// The length announced or asked for.
        length: u64,
        /// The limit.
        max: u32,
    },
    /// The body's checksum does not match its bytes.
    #[error(
        "{kind:?} frame body checksum {found:#010x} does not match the computed {computed:#010x}"
    )]
    BodyChecksum {
        /// The frame's kind.
        kind: FrameKind,
        /// The checksum in the header.
        found: u32,
        /// The checksum of the body.
        computed: u32,
    },
    /// A fixed-size body has the wrong length.
    #[error("{kind:?} body is {length} bytes, want {want}")]
    BodyLength {
        /// The frame's kind.
        kind: FrameKind,
        /// Its length.
        length: usize,
        /// The length the kind has.
        want: usize,
    },
    /// A page frame's length does not match its page count.
    #[error("page frame of region {region} announces {pages} pages but carries {data} data bytes")]
    PageLength {
        /// The region.
        region: u32,
        /// Pages announced (1 to [`MAX_PAGES_PER_FRAME`]).
        pages: u32,
        /// Data bytes after the sub-header.
        data: usize,
    },
    /// An ack names something that cannot be acknowledged.
    #[error("ack of unknown kind {value}")]
    UnknownAcked {
        /// The value on the wire.
        value: u16,
    },
    /// A postcard body did not decode.
    #[error("{kind:?} body does not decode: {source}")]
    Decode {
        /// The frame's kind.
        kind: FrameKind,
        /// Why.
        source: postcard::Error,
    },
    /// A metadata body did not decode or broke the record's rules (limits, fd numbers).
    #[error("Metadata body is refused: {source}")]
    Metadata {
        /// Why.
        source: crate::meta::MetaError,
    },
    /// A record did not encode.
    #[error("{kind:?} record does not encode: {source}")]
    Encode {
        /// The frame's kind.
        kind: FrameKind,
        /// Why.
        source: postcard::Error,
    },
    /// A page run handed to the writer is not a whole number of pages.
    #[error(
        "page data of {len} bytes for region {region} is not a positive multiple of {PAGE_SIZE}"
    )]
    UnalignedPages {
        /// The region.
        region: u32,
        /// The data's length.
        len: usize,
    },
    /// The writer was used out of order (a caller bug).
    #[error("checkpoint writer misuse: {what}")]
    Misuse {
        /// What was done.
        what: &'static str,
    },
    /// A frame from the peer is valid but not the one the protocol expects here.
    #[error("unexpected {field}: {found}, want {want}")]
    Unexpected {
        /// Which field.
        field: &'static str,
        /// Its value.
        found: u64,
        /// The value expected.
        want: u64,
    },
    /// An earlier write failed mid-frame; the session has to start again with a hello.
    #[error("the stream broke in an earlier write; start a new session")]
    Broken,
    /// The stream failed.
    #[error("stream I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// A decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A hello.
    Hello(Hello),
    /// A run of pages.
    Pages(PageFrame),
    /// A metadata record.
    Metadata(Box<Metadata>),
    /// A commit record.
    Commit(Commit),
    /// An ack.
    Ack(Ack),
    /// The primary's goodbye, and why.
    Goodbye(Farewell),
    /// The primary's heartbeat.
    Heartbeat,
}

/// Why a primary said goodbye to its spare: either way the spare must not take over when
/// the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// The primary finished on purpose (an empty body, as every goodbye was before reasons).
    Finished,
    /// The primary lives on but dropped this spare: it missed its ack deadline. Its
    /// supervisor may start another.
    Dropped,
}

impl Farewell {
    /// The goodbye frame's body.
    pub fn encode(self) -> &'static [u8] {
        match self {
            Farewell::Finished => &[],
            Farewell::Dropped => &[1],
        }
    }

    fn decode(body: &[u8]) -> Result<Self, WireError> {
        match body {
            [] => Ok(Farewell::Finished),
            [1] => Ok(Farewell::Dropped),
            _ => Err(WireError::BodyLength {
                kind: FrameKind::Goodbye,
                length: body.len(),
                want: 0,
            }),
        }
    }
}

/// A page frame's body: the sub-header and the raw bytes, kept in the buffer they were read
/// into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFrame {
    /// Which pages.
    pub header: PageHeader,
    body: Vec<u8>,
}

impl PageFrame {
    /// The raw page bytes (`pages * PAGE_SIZE` of them).
    pub fn data(&self) -> &[u8] {
        &self.body[PAGE_SUBHEADER_LEN..]
    }

    /// The whole body as on the wire (sub-header and data).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body's buffer, for another frame to be read into.
    pub(crate) fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// A frame read off the stream: its validated header and decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// The body.
    pub body: Body,
}

/// Reads up to `buf.len()` bytes; returns how many (less only at end of stream).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame: `Ok(None)` at a clean end of stream (between frames); an error for a
/// stream cut inside a frame or any invalid header or body. The body is allocated only after
/// the header (and so its length) passed its checks.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, WireError> {
    match read_checked(r, &mut Vec::new())? {
        Some((header, body)) => Ok(Some(Frame {
            header,
            body: decode_body(header.kind, body)?,
        })),
        None => Ok(None),
    }
}

/// [`read_frame`] up to the body's checksum: the header, and the body not decoded yet. A
/// page frame's body is read into a buffer taken from `bodies` if there is one.
pub(crate) fn read_checked(
    r: &mut impl Read,
    bodies: &mut Vec<Vec<u8>>,
) -> Result<Option<(FrameHeader, Vec<u8>)>, WireError> {
    let mut hbuf = [0u8; HEADER_LEN];
    let got = read_full(r, &mut hbuf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(WireError::Truncated {
            what: "frame header",
            got,
            want: HEADER_LEN,
        });
    }
    let header = FrameHeader::decode(&hbuf)?;
    let len = header.length as usize;
    let mut body = match header.kind {
        FrameKind::Pages => bodies.pop().unwrap_or_default(),
        _ => Vec::new(),
    };
    body.clear();
    body.resize(len, 0);
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(WireError::Truncated {
            what: "frame body",
            got,
            want: len,
        });
    }
    let computed = crc32c::crc32c(&body);
    if computed != header.body_crc {
        return Err(WireError::BodyChecksum {
            kind: header.kind,
            found: header.body_crc,
            computed,
        });
    }
    Ok(Some((header, body)))
}

/// Decodes a body whose checksum already matched.
pub fn decode_body(kind: FrameKind, body: Vec<u8>) -> Result<Body, WireError> {
    Ok(match kind {
        FrameKind::Hello => Body::Hello(from_postcard(kind, &body)?),
        FrameKind::Metadata => Body::Metadata(Box::new(
            Metadata::decode(&body).map_err(|source| WireError::Metadata { source })?,
        )),
        FrameKind::Commit => Body::Commit(Commit::decode(&body)?),
        FrameKind::Ack => Body::Ack(Ack::decode(&body)?),
        FrameKind::Goodbye => Body::Goodbye(Farewell::decode(&body)?),
        FrameKind::Heartbeat => {
            if !body.is_empty() {
                return Err(WireError::BodyLength {
                    kind,
                    length: body.len(),
                    want: 0,
                });
            }
            Body::Heartbeat
        }
        FrameKind::Pages => {
            let header = PageHeader::decode(&body)?;
            let data = body.len() - PAGE_SUBHEADER_LEN;
            let pages_ok = (1..=MAX_PAGES_PER_FRAME).contains(&header.pages);
            if !pages_ok || data != header.pages as usize * PAGE_SIZE {
                return Err(WireError::PageLength {
                    region: header.region,
                    pages: header.pages,
                    data,
                });
            }
            Body::Pages(PageFrame { header, body })
        }
    })
}

/// Decodes a postcard body that must be consumed entirely.
fn from_postcard<T: serde::de::DeserializeOwned>(
    kind: FrameKind,
    body: &[u8],
) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|source| WireError::Decode { kind, source })?;
    if !rest.is_empty() {
        return Err(WireError::BodyLength {
            kind,
            length: body.len(),
            want: body.len() - rest.len(),
        });
    }
    Ok(value)
}

/// Encodes a record as a postcard body, checking the length limit.
pub fn encode_record<T: serde::Serialize>(
    kind: FrameKind,
    value: &T,
) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_stdvec(value).map_err(|source| WireError::Encode { kind, source })?;
    check_len(kind, body.len())?;
    Ok(body)
}

/// The body length as a header field, if within the limit.
fn check_len(kind: FrameKind, len: usize) -> Result<u32, WireError> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_BODY_LEN => Ok(l),
        _ => Err(WireError::TooLong {
            kind,
            length: len as u64,
            max: MAX_BODY_LEN,
        }),
    }
}

/// Writes one frame whose body is the concatenation of `parts`, as few `write` calls as the
/// stream takes; never allocates. Returns the body's crc32c.
pub fn write_frame(
    w: &mut impl Write,
    kind: FrameKind,
    epoch: u64,
    sequence: u64,
    parts: &[&[u8]],
) -> Result<u32, WireError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let length = check_len(kind, len)?;
    let crc = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
    let mut hbuf = [0u8; HEADER_LEN];
    FrameHeader::new(kind, epoch, sequence, length, crc).encode_into(&mut hbuf);
    // Header plus at most three body parts: a fixed array keeps this allocation-free.
    let mut slices = [IoSlice::new(&[]); 4];
    if parts.len() > slices.len() - 1 {
        return Err(WireError::Misuse {
            what: "a frame body in more than three parts",
        });
    }
    slices[0] = IoSlice::new(&hbuf);
    for (s, p) in slices[1..].iter_mut().zip(parts) {
        *s = IoSlice::new(p);
    }
    write_all_vectored(w, &mut slices[..=parts.len()])?;
    Ok(crc)
}

/// `write_all` for vectored writes (the std one is unstable).
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes an ack frame (spare to primary).
pub fn write_ack(
    w: &mut impl Write,
    epoch: u64,
    sequence: u64,
    ack: &Ack,
) -> Result<(), WireError> {
    write_frame(w, FrameKind::Ack, epoch, sequence, &[&ack.encode()])?;
    Ok(())
}
