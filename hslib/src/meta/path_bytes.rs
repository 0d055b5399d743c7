//! Serde for paths as their raw bytes: Linux paths need not be UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serializer};

/// Writes the path's bytes.
pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(path.as_os_str().as_bytes())
}

/// Reads a path from bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let bytes: serde_bytes_vec::Bytes = Deserialize::deserialize(d)?;
    Ok(PathBuf::from(OsString::from_vec(bytes.0)))
}

/// Accepts bytes (`serialize_bytes`) from any serde format.
mod serde_bytes_vec {
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    pub struct Bytes(pub Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_byte_buf(V)
        }
    }

    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a path as bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes(v.to_vec()))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(Bytes(out))
        }
    }
}
