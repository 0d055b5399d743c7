//! Application blobs: small named values the application wants the spare to have, stored
//! postcard-encoded and size-capped per blob and in total, so a checkpoint's metadata stays
//! small.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest cap on one blob's encoded size, and the default.
pub const MAX_BLOB_BYTES: usize = 64 << 10;
/// The largest cap on all blobs' encoded sizes together, and the default.
pub const MAX_TOTAL_BYTES: usize = 1 << 20;
/// The longest blob name.
pub const MAX_NAME_LEN: usize = 255;

/// What went wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The value encodes to more than the per-blob cap.
    #[error("blob {name:?}: {size} encoded bytes exceed the {cap}-byte cap per blob")]
    TooLarge {
        /// The blob's name.
        name: String,
        /// Its encoded size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// Storing the value would take all blobs over the total cap.
    #[error(
        "blob {name:?}: {size} bytes would bring all blobs to {total}, over the {cap}-byte cap"
    )]
    TotalTooLarge {
        /// The blob's name.
        name: String,
        /// Its encoded size.
        size: usize,
        /// The total it would make.
        total: usize,
        /// The cap.
        cap: usize,
    },
    /// The name is empty or longer than [`MAX_NAME_LEN`].
    #[error("blob name of {len} bytes: names are 1 to {MAX_NAME_LEN} bytes")]
    BadName {
        /// The name's length.
        len: usize,
    },
    /// postcard could not encode the value.
    #[error("blob {name:?}: encoding failed: {source}")]
    Encode {
        /// The blob's name.
        name: String,
        /// postcard's error.
        source: postcard::Error,
    },
    /// The stored bytes do not decode as the type asked for.
    #[error("blob {name:?}: decoding {size} bytes as {ty} failed: {source}")]
    Decode {
        /// The blob's name.
        name: String,
        /// Its encoded size.
        size: usize,
        /// The type asked for.
        ty: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },
}

/// Named postcard-encoded values with size caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blobs {
    map: BTreeMap<String, Vec<u8>>,
    blob_cap: usize,
    total_cap: usize,
    total: usize,
}

impl Default for Blobs {
    fn default() -> Self {
        Self::with_caps(MAX_BLOB_BYTES, MAX_TOTAL_BYTES)
    }
}

impl Blobs {
    /// No blobs, with the given caps on one blob's and on all blobs' encoded sizes, at most
    /// [`MAX_BLOB_BYTES`] and [`MAX_TOTAL_BYTES`] (larger values are lowered to those), so
    /// whatever a primary stores, a spare's [`super::Metadata::decode`] accepts.
    pub fn with_caps(blob_cap: usize, total_cap: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            blob_cap: blob_cap.min(MAX_BLOB_BYTES),
            total_cap: total_cap.min(MAX_TOTAL_BYTES),
            total: 0,
        }
    }

    /// Encodes `value` and stores it under `name`, replacing the previous value. On error
    /// the previous value stays.
    pub fn put<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), BlobError> {
        check_name(name)?;
        let bytes = postcard::to_allocvec(value).map_err(|source| BlobError::Encode {
            name: name.to_owned(),
            source,
        })?;
        let size = bytes.len();
        if size > self.blob_cap {
            return Err(BlobError::TooLarge {
                name: name.to_owned(),
                size,
                cap: self.blob_cap,
            });
        }
        let old = self.map.get(name).map_or(0, Vec::len);
        let total = self.total - old + size;
        if total > self.total_cap {
            return Err(BlobError::TotalTooLarge {
                name: name.to_owned(),
                size,
                total,
                cap: self.total_cap,
            });
        }
        self.map.insert(name.to_owned(), bytes);
        self.total = total;
        Ok(())
    }

    /// Decodes the value stored under `name`; `Ok(None)` when there is none.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, BlobError> {
        let Some(bytes) = self.map.get(name) else {
            return Ok(None);
        };
        postcard::from_bytes(bytes)
            .map(Some)
            .map_err(|source| BlobError::Decode {
                name: name.to_owned(),
                size: bytes.len(),
                ty: std::any::type_name::<T>(),
                source,
            })
    }

    /// Removes the value under `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.map.remove(name) {
            Some(v) => {
                self.total -= v.len();
                true
            }
            None => false,
        }
    }

    /// The encoded blobs by name, for the metadata record.
    pub fn as_map(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.map
    }

    /// The encoded size of all blobs together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes over blobs received in a metadata record, checking them against `caps`' limits.
    pub fn from_map(map: BTreeMap<String, Vec<u8>>, caps: &Blobs) -> Result<Self, BlobError> {
        let total = Self::check_map(&map, caps)?;
        Ok(Self {
            map,
            blob_cap: caps.blob_cap,
            total_cap: caps.total_cap,
            total,
        })
    }

    /// Checks names and sizes of `map` against `caps`' limits; returns the total size.
    pub fn check_map(map: &BTreeMap<String, Vec<u8>>, caps: &Blobs) -> Result<usize, BlobError> {
        let mut total = 0usize;
        for (name, bytes) in map {
            check_name(name)?;
            let size = bytes.len();
            if size > caps.blob_cap {
                return Err(BlobError::TooLarge {
                    name: name.clone(),
                    size,
                    cap: caps.blob_cap,
                });
            }
            total += size;
            if total > caps.total_cap {
                return Err(BlobError::TotalTooLarge {
                    name: name.clone(),
                    size,
                    total,
                    cap: caps.total_cap,
                });
            }
        }
        Ok(total)
    }
}

fn check_name(name: &str) -> Result<(), BlobError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(BlobError::BadName { len: name.len() });
    }
    Ok(())
}
