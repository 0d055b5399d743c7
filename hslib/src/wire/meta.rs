//! The serde records of the stream (postcard-encoded bodies): the hello and the metadata
//! record of a checkpoint (the paper's section 2.3). Capturing these from the OS and restoring
//! them is the snapshot/promote code's job; here they are only types and their encoding.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One region of the checkpointed memory: its id, the address it lives at in every process,
/// and its length in bytes (a multiple of the page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The region's id.
    pub id: u32,
    /// Its base address.
    pub base: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The first frame of a session, primary to spare: what the image looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The page size the primary tracks at; the replica refuses another.
    pub page_size: u32,
    /// The regions, which fix the shape of the image for the session.
    pub regions: Vec<RegionInfo>,
}

/// A regular file open in the primary, reopened on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The descriptor number to restore it at.
    pub fd: i32,
    /// The path it was opened with (any bytes; Linux paths need not be UTF-8).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// The `open(2)` flags (`O_RDWR`, `O_APPEND`, ...).
    pub flags: i32,
    /// The file offset as of the checkpoint.
    pub offset: u64,
}

/// A socket's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketName {
    /// An IPv4 or IPv6 address and port (IPv6 with its flow info and scope id, which
    /// serde's own encoding of `SocketAddr` drops).
    Inet(#[serde(with = "inet")] SocketAddr),
    /// A Unix socket bound to a path.
    Unix(#[serde(with = "path_bytes")] PathBuf),
    /// A Unix socket in the abstract namespace (the name without the leading NUL).
    Abstract(Vec<u8>),
    /// An unbound Unix socket.
    Unnamed,
}

/// A socket open in the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketRecord {
    /// A listening stream socket, re-bound to the same address on restore.
    Listening {
        /// The descriptor number.
        fd: i32,
        /// The address it listens on.
        local: SocketName,
    },
    /// A connected stream socket (its peer has to reconnect; the names say who it was).
    Connected {
        /// The descriptor number.
        fd: i32,
        /// The local address.
        local: SocketName,
        /// The peer's address.
        peer: SocketName,
    },
}

/// A signal handler registered through the library, reinstalled on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRecord {
    /// The signal number.
    pub signal: i32,
    /// The name the handler was registered under (addresses are not trusted across builds).
    pub handler: String,
}

/// Everything of a checkpoint that is not page data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The region table; must equal the session's hello.
    pub regions: Vec<RegionInfo>,
    /// Open files.
    pub files: Vec<FileRecord>,
    /// Open sockets.
    pub sockets: Vec<SocketRecord>,
    /// Registered signal handlers.
    pub signals: Vec<SignalRecord>,
    /// The registered name of the worker the spare calls on promotion.
    pub worker: Option<String>,
    /// Application blobs: small serialised values by name.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Serialises a socket address with every field, the IPv6 scope id included (a link-local
/// listener needs it to bind again).
mod inet {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Repr {
        V4(Ipv4Addr, u16),
        V6(Ipv6Addr, u16, u32, u32),
    }

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            SocketAddr::V4(a) => Repr::V4(*a.ip(), a.port()),
            SocketAddr::V6(a) => Repr::V6(*a.ip(), a.port(), a.flowinfo(), a.scope_id()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::V4(ip, port) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
            Repr::V6(ip, port, flow, scope) => {
                SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope))
            }
        })
    }
}

/// Serialises a path as its raw bytes.
mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(d)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}
