//! Socket addresses as the metadata record carries them, and their conversion from and to
//! the kernel's `sockaddr`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, UnixAddr};
use serde::{Deserialize, Serialize};

/// A socket's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketName {
    /// An IPv4 or IPv6 address and port (with an IPv6 address's flow info and scope id).
    Inet(#[serde(with = "inet")] SocketAddr),
    /// A Unix socket bound to a filesystem path.
    Unix(#[serde(with = "super::path_bytes")] PathBuf),
    /// A Unix socket in the abstract namespace (the name without the leading NUL).
    Abstract(Vec<u8>),
    /// An unbound Unix socket (only ever a connected socket's end).
    Unnamed,
}

impl fmt::Display for SocketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Abstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
            Self::Unnamed => f.write_str("unix:(unnamed)"),
        }
    }
}

impl SocketName {
    /// Converts a kernel address; `None` for families other than inet, inet6 and unix.
    pub fn from_storage(addr: &SockaddrStorage) -> Option<Self> {
        if let Some(a) = addr.as_sockaddr_in() {
            return Some(Self::Inet(SocketAddr::from(*a)));
        }
        if let Some(a) = addr.as_sockaddr_in6() {
            return Some(Self::Inet(SocketAddr::from(*a)));
        }
        let u = addr.as_unix_addr()?;
        Some(if let Some(p) = u.path() {
            Self::Unix(p.to_path_buf())
        } else if let Some(n) = u.as_abstract() {
            Self::Abstract(n.to_vec())
        } else {
            Self::Unnamed
        })
    }

    /// The address family a socket with this name belongs to.
    pub fn family(&self) -> AddressFamily {
        match self {
            Self::Inet(SocketAddr::V4(_)) => AddressFamily::Inet,
            Self::Inet(SocketAddr::V6(_)) => AddressFamily::Inet6,
            Self::Unix(_) | Self::Abstract(_) | Self::Unnamed => AddressFamily::Unix,
        }
    }

    /// The kernel address to bind to; `None` for [`SocketName::Unnamed`] or a name the
    /// kernel cannot hold (too long, or containing NUL).
    pub fn to_sockaddr(&self) -> Option<Box<dyn SockaddrLike>> {
        match self {
            Self::Inet(a) => Some(Box::new(SockaddrStorage::from(*a))),
            Self::Unix(p) => Some(Box::new(UnixAddr::new(p.as_path()).ok()?)),
            Self::Abstract(n) => Some(Box::new(UnixAddr::new_abstract(n).ok()?)),
            Self::Unnamed => None,
        }
    }
}

/// Serde for inet addresses that keeps an IPv6 address's flow info and scope id (serde's
/// own `SocketAddr` drops them, and a link-local listener needs its scope to bind again).
mod inet {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Repr {
        V4(Ipv4Addr, u16),
        V6(Ipv6Addr, u16, u32, u32),
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        match a {
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
