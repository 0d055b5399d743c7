//! The cluster's shared key (`--key-file F`): the file's bytes are the key, at least 32 of
//! them, and the file must not be readable by its group or by others.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The least number of key bytes.
pub const MIN_KEY_LEN: usize = 32;
/// The largest key file read.
const MAX_KEY_LEN: u64 = 4096;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// It could not be read.
    #[error("key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Its mode lets others read it.
    #[error("key file {path}: mode {mode:04o} lets others read the key; chmod 600 it (or 400)")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// It is too short, or too long to be a key.
    #[error(
        "key file {path}: {len} bytes; a key is {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes \
         (e.g. head -c 32 /dev/urandom > F)"
    )]
    Length {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
    },
    /// It is not a regular file.
    #[error("key file {path}: not a regular file")]
    NotAFile {
        /// The file.
        path: String,
    },
}

/// Reads the key from `path`, refusing a file that group or others can read.
pub fn load(path: &Path) -> Result<Vec<u8>, KeyError> {
    let shown = path.display().to_string();
    let read_err = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: shown });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { path: shown, mode });
    }
    let len = meta.len();
    if !(MIN_KEY_LEN as u64..=MAX_KEY_LEN).contains(&len) {
        return Err(KeyError::Length { path: shown, len });
    }
    let key = std::fs::read(path).map_err(read_err)?;
    if key.len() < MIN_KEY_LEN {
        return Err(KeyError::Length {
            path: shown,
            len: key.len() as u64,
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(bytes: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        f.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{e}"));
        f
    }

    #[test]
    fn a_private_key_of_32_bytes_or_more_is_read_whole() {
        let f = file(&[7u8; 40], 0o600);
        assert_eq!(load(f.path()).ok(), Some(vec![7u8; 40]));
        let f = file(&[1u8; 32], 0o400);
        assert_eq!(load(f.path()).map(|k| k.len()).ok(), Some(32));
    }

    #[test]
    fn short_or_readable_by_others_or_missing_keys_are_refused_with_the_reason() {
        let short = file(&[7u8; 31], 0o600);
        assert!(matches!(
            load(short.path()),
            Err(KeyError::Length { len: 31, .. })
        ));
        for mode in [0o640, 0o604, 0o644] {
            let f = file(&[7u8; 32], mode);
            let err = load(f.path())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("lets others read"), "{mode:o}: {err}");
        }
        assert!(matches!(
            load(Path::new("/nonexistent/key")),
            Err(KeyError::Read { .. })
        ));
        assert!(matches!(
            load(Path::new("/")),
            Err(KeyError::NotAFile { .. }) | Err(KeyError::Exposed { .. })
        ));
    }
}
