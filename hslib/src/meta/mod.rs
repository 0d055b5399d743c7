//! Process metadata of a checkpoint (the paper's section 2.3): what a spare needs besides the
//! memory image to carry on as the primary. Nothing of the kernel's state is copied; each
//! item is described by what it takes to re-create it (like a serialised object), captured
//! cheaply on the checkpoint path and re-created on promotion.
//!
//! - [`fd`]: registered file descriptors (files, listening and connected sockets), inspected
//!   and refused at registration when they cannot be restored, re-created at the same numbers.
//! - [`signal`]: signal handlers registered by name (the paper's `hs_sigreg`), reinstalled from
//!   the same binary's name table.
//! - [`blob`]: small named application values, size-capped.
//! - here: the [`Metadata`] record and its postcard encoding, and [`Metadata::restore`].
//!
//! The capture path encodes a borrowed [`MetadataRef`] into a reused buffer, so a checkpoint
//! copies no names or paths; the spare decodes an owned [`Metadata`].

pub mod blob;
pub mod fd;
mod path_bytes;
pub mod signal;
pub mod sockname;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use blob::{BlobError, Blobs};
pub use fd::{
    ConnectedSocket, FdError, FdKind, FdRecord, FdRegistry, FileRecord, ListeningSocket,
    LostConnection, SocketType, Unrestorable,
};
pub use signal::{Handler, SignalError, SignalFlags, SignalRecord, SignalRegistry};
pub use sockname::SocketName;

use crate::region::Region;

/// The largest encoded metadata record [`Metadata::decode`] accepts.
pub const MAX_METADATA_BYTES: usize = 16 << 20;

/// One checkpoint region: its id, the address it lives at in every process, and its length
/// in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The region's id ([`crate::RegionId`]'s number).
    pub id: u32,
    /// The address of its first byte.
    pub base: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl From<&Region> for RegionInfo {
    fn from(r: &Region) -> Self {
        Self {
            id: r.id().0,
            base: r.base() as u64,
            len: r.len() as u64,
        }
    }
}

/// Everything of a checkpoint that is not page data, as the spare receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The registered name of the worker the spare calls on promotion.
    pub worker: Option<String>,
    /// The region table.
    pub regions: Vec<RegionInfo>,
    /// The registered file descriptors.
    pub fds: Vec<FdRecord>,
    /// The signal handlers registered through the library.
    pub signals: Vec<SignalRecord>,
    /// Application blobs: postcard-encoded values by name.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// A borrowed view of a [`Metadata`] for the capture path; encodes to the same bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MetadataRef<'a> {
    /// The worker's registered name.
    pub worker: Option<&'a str>,
    /// The region table.
    pub regions: &'a [RegionInfo],
    /// The registered file descriptors ([`FdRegistry::records`]).
    pub fds: &'a [FdRecord],
    /// The registered signal handlers ([`SignalRegistry::records`]).
    pub signals: &'a [SignalRecord],
    /// The application blobs ([`Blobs::as_map`]).
    pub blobs: &'a BTreeMap<String, Vec<u8>>,
}

/// What went wrong encoding, decoding or restoring metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// postcard could not encode the record.
    #[error("encoding the metadata record failed: {0}")]
    Encode(postcard::Error),
    /// The encoded record is larger than [`MAX_METADATA_BYTES`].
    #[error("metadata record of {len} bytes exceeds the {MAX_METADATA_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The bytes are not a metadata record.
    #[error("decoding a {len}-byte metadata record failed: {source}")]
    Decode {
        /// The length of the bytes.
        len: usize,
        /// postcard's error.
        source: postcard::Error,
    },
    /// The bytes decode but leave bytes over.
    #[error("metadata record has {extra} trailing bytes after {used}")]
    Trailing {
        /// Bytes consumed by the record.
        used: usize,
        /// Bytes left over.
        extra: usize,
    },
    /// Two records claim the same descriptor number.
    #[error("metadata record lists fd {fd} twice")]
    DuplicateFd {
        /// The number.
        fd: i32,
    },
    /// A descriptor number is negative.
    #[error("metadata record lists invalid fd {fd}")]
    NegativeFd {
        /// The number.
        fd: i32,
    },
    /// The blobs break the size limits.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Restoring a descriptor failed.
    #[error(transparent)]
    Fd(#[from] FdError),
    /// Restoring a signal handler failed.
    #[error(transparent)]
    Signal(#[from] SignalError),
}

impl MetadataRef<'_> {
    /// Encodes the record with postcard, replacing the contents of `buf` (whose allocation
    /// is reused).
    pub fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), MetaError> {
        buf.clear();
        let out = postcard::to_extend(self, std::mem::take(buf)).map_err(MetaError::Encode)?;
        *buf = out;
        if buf.len() > MAX_METADATA_BYTES {
            return Err(MetaError::TooLarge { len: buf.len() });
        }
        Ok(())
    }
}

impl Metadata {
    /// A borrowed view of this record.
    pub fn as_ref(&self) -> MetadataRef<'_> {
        MetadataRef {
            worker: self.worker.as_deref(),
            regions: &self.regions,
            fds: &self.fds,
            signals: &self.signals,
            blobs: &self.blobs,
        }
    }

    /// Encodes the record with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, MetaError> {
        let mut buf = Vec::new();
        self.as_ref().encode_into(&mut buf)?;
        Ok(buf)
    }

    /// Decodes a record and checks it: size, no trailing bytes, distinct non-negative fd
    /// numbers, blobs within [`blob::MAX_BLOB_BYTES`] and [`blob::MAX_TOTAL_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        let len = bytes.len();
        if len > MAX_METADATA_BYTES {
            return Err(MetaError::TooLarge { len });
        }
        let (meta, rest): (Self, _) =
            postcard::take_from_bytes(bytes).map_err(|source| MetaError::Decode { len, source })?;
        if !rest.is_empty() {
            return Err(MetaError::Trailing {
                used: len - rest.len(),
                extra: rest.len(),
            });
        }
        meta.validate()?;
        Ok(meta)
    }

    /// Checks what the type system cannot: distinct non-negative fd numbers and blob sizes.
    pub fn validate(&self) -> Result<(), MetaError> {
        let mut seen = BTreeSet::new();
        for r in &self.fds {
            if r.fd < 0 {
                return Err(MetaError::NegativeFd { fd: r.fd });
            }
            if !seen.insert(r.fd) {
                return Err(MetaError::DuplicateFd { fd: r.fd });
            }
        }
        Blobs::check_map(&self.blobs, &Blobs::default())?;
        Ok(())
    }

    /// Re-creates the process state this record describes, in this process: the descriptors
    /// at their numbers (see [`fd::restore`]), then the signal handlers from `handlers`' name
    /// table (see [`SignalRegistry::restore`]). Returns the connections that were lost.
    ///
    /// Every handler name is checked before any descriptor is touched, so an unknown name
    /// changes nothing.
    pub fn restore(&self, handlers: &mut SignalRegistry) -> Result<Vec<LostConnection>, MetaError> {
        self.validate()?;
        handlers.check(&self.signals)?;
        let lost = fd::restore(&self.fds)?;
        handlers.restore(&self.signals)?;
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::RegionId;
    use crate::sys::PAGE_SIZE;

    #[test]
    fn region_info_describes_the_mapped_region() {
        let r = Region::map(RegionId(4010), 3 * PAGE_SIZE).expect("map");
        let info = RegionInfo::from(&r);
        assert_eq!(
            info,
            RegionInfo {
                id: 4010,
                base: Region::derived_address(RegionId(4010)).expect("address") as u64,
                len: 3 * PAGE_SIZE as u64,
            }
        );
    }
}
