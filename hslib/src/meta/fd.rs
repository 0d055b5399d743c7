//! Registered file descriptors: inspected at registration (a kind the library cannot
//! restore is refused then, not discovered at failover), refreshed cheaply at each capture,
//! and re-created at the same numbers on restore.
//!
//! What is restorable:
//! - regular files that have a path (reopened by path with the recorded status flags, at the
//!   recorded offset). `O_CREAT`, `O_TRUNC` and `O_EXCL` are never used on restore: the file
//!   must still exist, and its contents are not touched.
//! - listening stream sockets (TCP over IPv4/IPv6, Unix stream/seqpacket bound to a path or an
//!   abstract name): a new socket with `SO_REUSEADDR` is bound to the same address and listens.
//!   A Unix socket file left by the dead primary is unlinked first (only if it is a socket).
//!   A Unix path bound relative to the working directory is recorded as the kernel reports it
//!   (relative) and resolved against the restoring process's working directory.
//! - connected stream sockets are accepted at registration, but a connection cannot move to
//!   another process (the paper's TCP problem). On restore the number gets a fresh, unconnected
//!   socket of the same family and type: `getpeername` fails with `ENOTCONN`, reads fail
//!   (`ENOTCONN` for TCP, `EINVAL` for Unix), `poll` reports `POLLHUP`, so the worker sees a
//!   dead connection as if the peer had gone, and
//!   [`restore`] returns the list of [`LostConnection`]s, which a restored worker reads from
//!   [`crate::Context::lost_connections`]. Leaving the number closed instead
//!   would let a later `open` take it and receive writes meant for the peer.
//!
//! Refused: pipes and FIFOs, anonymous inodes (eventfd, epoll, timerfd, signalfd, ...),
//! deleted files, memfds, directories, terminals and other devices, `O_PATH` descriptors,
//! datagram and raw sockets, families other than inet/inet6/unix, unnamed listening sockets.
//!
//! Restore replaces whatever a recorded number holds in the restoring process; the library
//! keeps its own descriptors away from the application's numbers.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::sockname::SocketName;
use crate::sys::fd as sysfd;

/// The file status flags a restore reopens with; everything else `F_GETFL` reports is
/// dropped, and the creation flags (`O_CREAT`, `O_TRUNC`, `O_EXCL`) are never used.
pub const RESTORABLE_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_LARGEFILE;

/// How long a restore waits for an address a dying process still holds.
pub const BIND_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest registration name.
pub const MAX_NAME_LEN: usize = 255;

/// One registered descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRecord {
    /// The number the descriptor must have after restore.
    pub fd: i32,
    /// The name it was registered under.
    pub name: String,
    /// Whether it is close-on-exec.
    pub cloexec: bool,
    /// What it is and how to re-create it.
    pub kind: FdKind,
}

/// What a registered descriptor is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file.
    File(FileRecord),
    /// A listening socket.
    Listening(ListeningSocket),
    /// A connected socket (restored as a dead connection).
    Connected(ConnectedSocket),
}

/// A regular file, reopened by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The path, as `/proc/self/fd` showed it at registration.
    #[serde(with = "super::path_bytes")]
    pub path: PathBuf,
    /// The status flags (`F_GETFL` masked with [`RESTORABLE_FLAGS`]).
    pub flags: i32,
    /// The file offset: as of the last capture with `refresh`, else as of registration.
    pub offset: u64,
    /// Whether each capture re-reads the offset.
    pub refresh: bool,
}

/// The socket types the library restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketType {
    /// `SOCK_STREAM` (TCP, or Unix stream).
    Stream,
    /// `SOCK_SEQPACKET` (Unix only).
    SeqPacket,
}

impl SocketType {
    fn nix(self) -> SockType {
        match self {
            Self::Stream => SockType::Stream,
            Self::SeqPacket => SockType::SeqPacket,
        }
    }
}

/// A listening socket, re-created by bind and listen at the same address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListeningSocket {
    /// Its type (the family follows from `local`).
    pub sock_type: SocketType,
    /// The address it listens on.
    pub local: SocketName,
    /// The listen backlog, when the application told it; `SOMAXCONN` otherwise.
    pub backlog: Option<u32>,
    /// Whether it was non-blocking (`O_NONBLOCK`).
    pub nonblocking: bool,
    /// For IPv6: whether `IPV6_V6ONLY` was set.
    pub v6only: bool,
}

/// A connected socket's names (the connection itself cannot be restored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedSocket {
    /// Its type.
    pub sock_type: SocketType,
    /// The local address.
    pub local: SocketName,
    /// The peer's address.
    pub peer: SocketName,
}

/// A connected socket that [`restore`] could only restore as a dead connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostConnection {
    /// Its number.
    pub fd: i32,
    /// Its registration name.
    pub name: String,
    /// The local address it had.
    pub local: SocketName,
    /// The peer it was connected to.
    pub peer: SocketName,
}

/// Why a descriptor cannot be restored, as found at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrestorable {
    /// A pipe or FIFO (its buffered data lives in the kernel).
    Pipe(OsString),
    /// An anonymous inode: eventfd, epoll, timerfd, signalfd, pidfd, userfaultfd, ...
    AnonInode(OsString),
    /// A memfd (it has no path to reopen).
    Memfd(OsString),
    /// A regular file whose last link was removed.
    Deleted(PathBuf),
    /// The path no longer names the file the descriptor has open.
    Replaced(PathBuf),
    /// A directory.
    Directory(PathBuf),
    /// A terminal.
    Tty(PathBuf),
    /// A character or block device.
    Device(PathBuf),
    /// An `O_PATH` descriptor.
    PathOnly(PathBuf),
    /// A socket passed to `register_file`.
    Socket,
    /// Not a socket, passed to `register_socket`.
    NotASocket(OsString),
    /// A socket family other than inet, inet6 and unix.
    Family(i32),
    /// A socket type other than stream and seqpacket (datagram, raw).
    SocketType(i32),
    /// An inet socket whose protocol is not TCP (SCTP, MPTCP, ...).
    Protocol(i32),
    /// A listening Unix socket without a name.
    UnnamedListener,
    /// A socket neither listening nor connected.
    Unconnected,
}

impl fmt::Display for Unrestorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pipe(t) => write!(f, "a pipe or FIFO ({})", t.to_string_lossy()),
            Self::AnonInode(t) => write!(f, "an anonymous inode ({})", t.to_string_lossy()),
            Self::Memfd(t) => write!(f, "a memfd ({})", t.to_string_lossy()),
            Self::Deleted(p) => write!(f, "a deleted file ({})", p.display()),
            Self::Replaced(p) => write!(f, "a file no longer at its path {}", p.display()),
            Self::Directory(p) => write!(f, "a directory ({})", p.display()),
            Self::Tty(p) => write!(f, "a terminal ({})", p.display()),
            Self::Device(p) => write!(f, "a device ({})", p.display()),
            Self::PathOnly(p) => write!(f, "an O_PATH descriptor ({})", p.display()),
            Self::Socket => f.write_str("a socket; register it with register_socket"),
            Self::NotASocket(t) => write!(f, "not a socket ({})", t.to_string_lossy()),
            Self::Family(d) => write!(f, "a socket of unsupported family {d}"),
            Self::SocketType(t) => write!(f, "a socket of unsupported type {t}"),
            Self::Protocol(p) => write!(f, "an inet socket of unsupported protocol {p}"),
            Self::UnnamedListener => f.write_str("a listening unix socket without a name"),
            Self::Unconnected => f.write_str("a socket neither listening nor connected"),
        }
    }
}

/// What went wrong registering, capturing or restoring a descriptor.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// The descriptor is of a kind the library cannot restore.
    #[error("fd {fd} ({name:?}) cannot be restored: it is {what}")]
    Refused {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// What it is.
        what: Unrestorable,
    },
    /// Inspecting the descriptor failed (`EBADF`: it is not open).
    #[error("fd {fd} ({name:?}): {call} failed: {errno}")]
    Inspect {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// The call that failed.
        call: &'static str,
        /// The OS error.
        errno: std::io::Error,
    },
    /// The number is registered already.
    #[error("fd {fd} is registered already, as {existing:?}")]
    DuplicateFd {
        /// The number.
        fd: i32,
        /// The name it has.
        existing: String,
    },
    /// The name is registered already.
    #[error("fd name {name:?} is registered already, for fd {existing}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The number registered under it.
        existing: i32,
    },
    /// The name is empty or too long.
    #[error("fd {fd}: registration names are 1 to {MAX_NAME_LEN} bytes, not {len}")]
    BadName {
        /// The number.
        fd: i32,
        /// The name's length.
        len: usize,
    },
    /// Re-reading the offset at capture failed (the descriptor was closed?).
    #[error("fd {fd} ({name:?}, {path}): reading the offset at capture failed: {errno}", path = path.display())]
    Refresh {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// The file's path.
        path: PathBuf,
        /// The OS error.
        errno: std::io::Error,
    },
    /// Reopening a file failed.
    #[error("restoring fd {fd} ({name:?}): {call} of {path} failed: {errno}", path = path.display())]
    RestoreFile {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// The call that failed.
        call: &'static str,
        /// The file's path.
        path: PathBuf,
        /// The OS error.
        errno: std::io::Error,
    },
    /// Re-creating a socket failed.
    #[error("restoring fd {fd} ({name:?}): {call} for {addr} failed: {errno}")]
    RestoreSocket {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// The call that failed.
        call: &'static str,
        /// The socket's address.
        addr: SocketName,
        /// The OS error.
        errno: std::io::Error,
    },
    /// [`FdRegistry::take`] of a name the registry holds no descriptor for.
    #[error(
        "no descriptor registered as {name:?} is held by the registry (registered by number, taken already, or never registered)"
    )]
    NotHeld {
        /// The name asked for.
        name: String,
    },
    /// Something other than a socket sits at a Unix listening socket's path.
    #[error("restoring fd {fd} ({name:?}): {path} exists and is not a socket", path = path.display())]
    PathInUse {
        /// The number.
        fd: i32,
        /// The registration name.
        name: String,
        /// The path.
        path: PathBuf,
    },
}

/// The descriptors the application registered, with what it takes to restore each.
///
/// Hand a descriptor over with the `register_*_owned` methods (the registry keeps it open at
/// its number) and get it back with [`FdRegistry::take`], on a fresh start and after a
/// restore alike: no raw descriptor numbers, no `unsafe`. The `register_*` methods that take
/// a number leave its ownership with the caller; but in a restored process the registry owns
/// every listener and file the restore re-created (and closes them when the run ends): take
/// them with [`FdRegistry::take`] rather than wrapping their numbers.
#[derive(Debug, Default)]
pub struct FdRegistry {
    records: Vec<FdRecord>,
    /// Indices into `records` of files registered with refresh.
    refreshed: Vec<usize>,
    /// The registered descriptors the registry owns, by name, until taken.
    owned: Vec<(String, OwnedFd)>,
}

impl FdRegistry {
    /// No descriptors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the regular file open at `fd` under `name`. With `refresh`, each
    /// [`FdRegistry::capture`] re-reads its offset; without, the offset stays as it is now.
    pub fn register_file(&mut self, fd: RawFd, name: &str, refresh: bool) -> Result<(), FdError> {
        self.check_new(fd, name)?;
        let file = inspect_file(fd, name, refresh)?;
        let cloexec = sysfd::cloexec(fd).map_err(|e| inspect(fd, name, "fcntl(F_GETFD)", e))?;
        if refresh {
            self.refreshed.push(self.records.len());
        }
        self.records.push(FdRecord {
            fd,
            name: name.to_owned(),
            cloexec,
            kind: FdKind::File(file),
        });
        Ok(())
    }

    /// Registers the socket open at `fd` under `name`: a listening socket (restored at the
    /// same address) or a connected one (restored as a dead connection).
    pub fn register_socket(&mut self, fd: RawFd, name: &str) -> Result<(), FdError> {
        self.register_socket_inner(fd, name, None)
    }

    /// Registers a listening socket as [`FdRegistry::register_socket`] does, recording the
    /// backlog it listens with (the kernel does not tell it) for the restore.
    pub fn register_listener(
        &mut self,
        fd: RawFd,
        name: &str,
        backlog: u32,
    ) -> Result<(), FdError> {
        self.register_socket_inner(fd, name, Some(backlog))
    }

    /// Registers the regular file `file` under `name` as [`FdRegistry::register_file`] does
    /// and keeps it until [`FdRegistry::take`]; on error it is closed.
    pub fn register_file_owned(
        &mut self,
        name: &str,
        file: impl Into<OwnedFd>,
        refresh: bool,
    ) -> Result<(), FdError> {
        let fd = file.into();
        self.register_file(fd.as_raw_fd(), name, refresh)?;
        self.owned.push((name.to_owned(), fd));
        Ok(())
    }

    /// Registers the socket `socket` under `name` as [`FdRegistry::register_socket`] does
    /// and keeps it until [`FdRegistry::take`]; on error it is closed.
    pub fn register_socket_owned(
        &mut self,
        name: &str,
        socket: impl Into<OwnedFd>,
    ) -> Result<(), FdError> {
        let fd = socket.into();
        self.register_socket(fd.as_raw_fd(), name)?;
        self.owned.push((name.to_owned(), fd));
        Ok(())
    }

    /// Registers the listening socket `listener` under `name` with its `backlog` as
    /// [`FdRegistry::register_listener`] does, and keeps it until [`FdRegistry::take`]; on
    /// error it is closed.
    pub fn register_listener_owned(
        &mut self,
        name: &str,
        listener: impl Into<OwnedFd>,
        backlog: u32,
    ) -> Result<(), FdError> {
        let fd = listener.into();
        self.register_listener(fd.as_raw_fd(), name, backlog)?;
        self.owned.push((name.to_owned(), fd));
        Ok(())
    }

    /// Hands over the descriptor registered as `name` that the registry holds: one given with
    /// a `register_*_owned` method, or, in a restored process, any descriptor the restore
    /// re-created (listeners and files). It stays registered: keep it open (or
    /// [`FdRegistry::unregister`] it before closing it), or a later checkpoint records a
    /// number that holds something else.
    pub fn take(&mut self, name: &str) -> Result<OwnedFd, FdError> {
        let i = self
            .owned
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| FdError::NotHeld {
                name: name.to_owned(),
            })?;
        Ok(self.owned.swap_remove(i).1)
    }

    /// The number of the descriptor registered as `name`, if one is.
    pub fn number(&self, name: &str) -> Option<RawFd> {
        self.records.iter().find(|r| r.name == name).map(|r| r.fd)
    }

    fn register_socket_inner(
        &mut self,
        fd: RawFd,
        name: &str,
        backlog: Option<u32>,
    ) -> Result<(), FdError> {
        self.check_new(fd, name)?;
        let kind = inspect_socket(fd, name, backlog)?;
        let cloexec = sysfd::cloexec(fd).map_err(|e| inspect(fd, name, "fcntl(F_GETFD)", e))?;
        self.records.push(FdRecord {
            fd,
            name: name.to_owned(),
            cloexec,
            kind,
        });
        Ok(())
    }

    fn check_new(&self, fd: RawFd, name: &str) -> Result<(), FdError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(FdError::BadName {
                fd,
                len: name.len(),
            });
        }
        for r in &self.records {
            if r.fd == fd {
                return Err(FdError::DuplicateFd {
                    fd,
                    existing: r.name.clone(),
                });
            }
            if r.name == name {
                return Err(FdError::DuplicateName {
                    name: name.to_owned(),
                    existing: r.fd,
                });
            }
        }
        Ok(())
    }

    /// Takes over the records of a restored checkpoint (after [`restore`] re-created them at
    /// their numbers): later captures carry them on, refreshing files registered with refresh.
    /// Connected sockets are dropped: their connections were lost in the restore.
    pub fn adopt(records: &[FdRecord]) -> Self {
        let mut reg = Self::new();
        for r in records {
            if matches!(r.kind, FdKind::Connected(_)) {
                continue;
            }
            if matches!(&r.kind, FdKind::File(f) if f.refresh) {
                reg.refreshed.push(reg.records.len());
            }
            reg.records.push(r.clone());
        }
        reg
    }

    /// Like [`FdRegistry::adopt`], in the process where [`restore`] has just re-created
    /// `records` at their numbers: the registry also takes ownership of the re-created
    /// listeners and files, for [`FdRegistry::take`].
    pub(crate) fn adopt_restored(records: &[FdRecord]) -> Self {
        let mut reg = Self::adopt(records);
        let held: Vec<(String, OwnedFd)> = reg
            .records
            .iter()
            .map(|r| {
                // SAFETY: `restore` re-created this number for the record and gave up its
                // ownership (`place_at` keeps no handle); nothing else in the process was
                // given it, so this is its only owner.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r.fd) };
                (r.name.clone(), fd)
            })
            .collect();
        reg.owned = held;
        reg
    }

    /// Forgets the descriptor at `fd` (call it before closing a registered descriptor);
    /// whether it was registered. One the registry held is closed.
    pub fn unregister(&mut self, fd: RawFd) -> bool {
        let Some(i) = self.records.iter().position(|r| r.fd == fd) else {
            return false;
        };
        let name = self.records.remove(i).name;
        self.owned.retain(|(n, _)| *n != name);
        self.refreshed.retain(|&j| j != i);
        for j in &mut self.refreshed {
            if *j > i {
                *j -= 1;
            }
        }
        true
    }

    /// The checkpoint-time step: re-reads the offset of every file registered with refresh
    /// (one `lseek` each, no allocation); the others keep their recorded values.
    pub fn capture(&mut self) -> Result<(), FdError> {
        for &i in &self.refreshed {
            let r = &mut self.records[i];
            if let FdKind::File(f) = &mut r.kind {
                match sysfd::offset(r.fd) {
                    Ok(off) => f.offset = off,
                    Err(errno) => {
                        return Err(FdError::Refresh {
                            fd: r.fd,
                            name: r.name.clone(),
                            path: f.path.clone(),
                            errno: errno.into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The records as of the last capture, in registration order.
    pub fn records(&self) -> &[FdRecord] {
        &self.records
    }
}

fn inspect(fd: RawFd, name: &str, call: &'static str, errno: Errno) -> FdError {
    FdError::Inspect {
        fd,
        name: name.to_owned(),
        call,
        errno: errno.into(),
    }
}

fn refused(fd: RawFd, name: &str, what: Unrestorable) -> FdError {
    FdError::Refused {
        fd,
        name: name.to_owned(),
        what,
    }
}

/// Where `/proc/self/fd/N` points: a path, or `pipe:[ino]`, `anon_inode:[eventfd]`, ...
fn link_target(fd: RawFd, name: &str) -> Result<OsString, FdError> {
    nix::fcntl::readlink(format!("/proc/self/fd/{fd}").as_str())
        .map_err(|e| inspect(fd, name, "readlink(/proc/self/fd)", e))
}

fn inspect_file(fd: RawFd, name: &str, refresh: bool) -> Result<FileRecord, FdError> {
    let st = sysfd::fstat(fd).map_err(|e| inspect(fd, name, "fstat", e))?;
    let target = link_target(fd, name)?;
    let path = PathBuf::from(&target);
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFSOCK => Some(Unrestorable::Socket),
        libc::S_IFIFO => Some(Unrestorable::Pipe(target.clone())),
        libc::S_IFDIR => Some(Unrestorable::Directory(path.clone())),
        libc::S_IFCHR if sysfd::is_tty(fd) => Some(Unrestorable::Tty(path.clone())),
        libc::S_IFCHR | libc::S_IFBLK => Some(Unrestorable::Device(path.clone())),
        _ => Some(Unrestorable::AnonInode(target.clone())),
    };
    if let Some(what) = what {
        return Err(refused(fd, name, what));
    }
    let bytes = target.as_bytes();
    if !bytes.starts_with(b"/") {
        // Anonymous inodes may report a regular file type; their link is not a path.
        return Err(refused(fd, name, Unrestorable::AnonInode(target)));
    }
    if bytes.starts_with(b"/memfd:") && st.st_nlink == 0 {
        return Err(refused(fd, name, Unrestorable::Memfd(target)));
    }
    if st.st_nlink == 0 {
        let shown = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
        let shown = PathBuf::from(std::ffi::OsStr::from_bytes(shown));
        return Err(refused(fd, name, Unrestorable::Deleted(shown)));
    }
    let same = nix::sys::stat::stat(path.as_path())
        .is_ok_and(|now| now.st_dev == st.st_dev && now.st_ino == st.st_ino);
    if !same {
        return Err(refused(fd, name, Unrestorable::Replaced(path)));
    }
    let flags = sysfd::status_flags(fd).map_err(|e| inspect(fd, name, "fcntl(F_GETFL)", e))?;
    if flags & libc::O_PATH != 0 {
        return Err(refused(fd, name, Unrestorable::PathOnly(path)));
    }
    let offset = sysfd::offset(fd).map_err(|e| inspect(fd, name, "lseek", e))?;
    Ok(FileRecord {
        path,
        flags: flags & RESTORABLE_FLAGS,
        offset,
        refresh,
    })
}

fn inspect_socket(fd: RawFd, name: &str, backlog: Option<u32>) -> Result<FdKind, FdError> {
    let st = sysfd::fstat(fd).map_err(|e| inspect(fd, name, "fstat", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        let target = link_target(fd, name)?;
        return Err(refused(fd, name, Unrestorable::NotASocket(target)));
    }
    let opt = |level, opt, call| {
        sysfd::sockopt_int(fd, level, opt).map_err(|e| inspect(fd, name, call, e))
    };
    let domain = opt(libc::SOL_SOCKET, libc::SO_DOMAIN, "getsockopt(SO_DOMAIN)")?;
    let inet = match domain {
        libc::AF_INET | libc::AF_INET6 => true,
        libc::AF_UNIX => false,
        other => return Err(refused(fd, name, Unrestorable::Family(other))),
    };
    let sock_type = match opt(libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)")? {
        libc::SOCK_STREAM => SocketType::Stream,
        libc::SOCK_SEQPACKET if !inet => SocketType::SeqPacket,
        other => return Err(refused(fd, name, Unrestorable::SocketType(other))),
    };
    if inet {
        let proto = opt(
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            "getsockopt(SO_PROTOCOL)",
        )?;
        if proto != libc::IPPROTO_TCP {
            return Err(refused(fd, name, Unrestorable::Protocol(proto)));
        }
    }
    let name_of = |addr: Result<_, Errno>, call| {
        let addr = addr.map_err(|e| inspect(fd, name, call, e))?;
        SocketName::from_storage(&addr)
            .ok_or_else(|| refused(fd, name, Unrestorable::Family(domain)))
    };
    let local = name_of(sysfd::sock_name(fd), "getsockname")?;
    let listening = opt(
        libc::SOL_SOCKET,
        libc::SO_ACCEPTCONN,
        "getsockopt(SO_ACCEPTCONN)",
    )? != 0;
    if listening {
        if local == SocketName::Unnamed {
            return Err(refused(fd, name, Unrestorable::UnnamedListener));
        }
        let flags = sysfd::status_flags(fd).map_err(|e| inspect(fd, name, "fcntl(F_GETFL)", e))?;
        let v6only = domain == libc::AF_INET6
            && opt(
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                "getsockopt(IPV6_V6ONLY)",
            )? != 0;
        return Ok(FdKind::Listening(ListeningSocket {
            sock_type,
            local,
            backlog,
            nonblocking: flags & libc::O_NONBLOCK != 0,
            v6only,
        }));
    }
    let peer = match sysfd::peer_name(fd) {
        Err(Errno::ENOTCONN) => return Err(refused(fd, name, Unrestorable::Unconnected)),
        other => name_of(other, "getpeername")?,
    };
    Ok(FdKind::Connected(ConnectedSocket {
        sock_type,
        local,
        peer,
    }))
}

/// Re-creates every recorded descriptor at its number, in order, replacing whatever the
/// number holds. Stops at the first failure, which names the descriptor; the ones before it
/// stay restored. Returns the connected sockets, which are restored as dead connections.
pub fn restore(records: &[FdRecord]) -> Result<Vec<LostConnection>, FdError> {
    let mut lost = Vec::new();
    for r in records {
        match &r.kind {
            FdKind::File(f) => restore_file(r, f)?,
            FdKind::Listening(l) => restore_listener(r, l)?,
            FdKind::Connected(c) => {
                restore_dead_connection(r, c)?;
                lost.push(LostConnection {
                    fd: r.fd,
                    name: r.name.clone(),
                    local: c.local.clone(),
                    peer: c.peer.clone(),
                });
            }
        }
    }
    Ok(lost)
}

fn restore_file(r: &FdRecord, f: &FileRecord) -> Result<(), FdError> {
    let err = |call, errno: Errno| FdError::RestoreFile {
        fd: r.fd,
        name: r.name.clone(),
        call,
        path: f.path.clone(),
        errno: errno.into(),
    };
    let flags = OFlag::from_bits_retain((f.flags & RESTORABLE_FLAGS) | libc::O_CLOEXEC);
    let file =
        nix::fcntl::open(f.path.as_path(), flags, Mode::empty()).map_err(|e| err("open", e))?;
    sysfd::seek_to(file.as_raw_fd(), f.offset).map_err(|e| err("lseek", e))?;
    sysfd::place_at(file, r.fd, r.cloexec).map_err(|e| err("dup3", e))
}

fn new_socket(
    r: &FdRecord,
    family: AddressFamily,
    sock_type: SocketType,
    nonblocking: bool,
    addr: &SocketName,
) -> Result<OwnedFd, FdError> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socket::socket(family, sock_type.nix(), flags, None).map_err(|errno| FdError::RestoreSocket {
        fd: r.fd,
        name: r.name.clone(),
        call: "socket",
        addr: addr.clone(),
        errno: errno.into(),
    })
}

fn restore_listener(r: &FdRecord, l: &ListeningSocket) -> Result<(), FdError> {
    let err = |call, errno: Errno| FdError::RestoreSocket {
        fd: r.fd,
        name: r.name.clone(),
        call,
        addr: l.local.clone(),
        errno: errno.into(),
    };
    let family = l.local.family();
    let sock = new_socket(r, family, l.sock_type, l.nonblocking, &l.local)?;
    let raw = sock.as_raw_fd();
    match &l.local {
        SocketName::Inet(a) => {
            // A restarted listener must not wait for the old one's TIME_WAIT connections.
            sysfd::set_sockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                .map_err(|e| err("setsockopt(SO_REUSEADDR)", e))?;
            if a.is_ipv6() {
                sysfd::set_sockopt_int(
                    raw,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    i32::from(l.v6only),
                )
                .map_err(|e| err("setsockopt(IPV6_V6ONLY)", e))?;
            }
        }
        SocketName::Unix(path) => remove_stale_socket(r, path)?,
        SocketName::Abstract(_) | SocketName::Unnamed => {}
    }
    let addr = l.local.to_sockaddr().ok_or(err("bind", Errno::EINVAL))?;
    // A promoted spare restores as soon as the primary's stream ends, while the kernel may
    // still be releasing the dead primary's listener: give it a moment.
    let start = std::time::Instant::now();
    loop {
        match socket::bind(raw, addr.as_ref()) {
            Err(Errno::EADDRINUSE) if start.elapsed() < BIND_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => break other.map_err(|e| err("bind", e))?,
        }
    }
    // The kernel caps the backlog at net.core.somaxconn anyway; nix refuses larger values.
    let backlog = l.backlog.map_or(Ok(Backlog::MAXCONN), |b| {
        Backlog::new(i32::try_from(b).unwrap_or(i32::MAX).min(libc::SOMAXCONN))
    });
    let backlog = backlog.map_err(|e| err("listen", e))?;
    socket::listen(&sock, backlog).map_err(|e| err("listen", e))?;
    sysfd::place_at(sock, r.fd, r.cloexec).map_err(|e| err("dup3", e))
}

/// Unlinks a Unix socket file the dead primary left at `path`; anything else is an error.
fn remove_stale_socket(r: &FdRecord, path: &Path) -> Result<(), FdError> {
    let st = match nix::sys::stat::lstat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => {
            return Err(FdError::RestoreFile {
                fd: r.fd,
                name: r.name.clone(),
                call: "lstat",
                path: path.to_path_buf(),
                errno: errno.into(),
            });
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(FdError::PathInUse {
            fd: r.fd,
            name: r.name.clone(),
            path: path.to_path_buf(),
        });
    }
    nix::unistd::unlink(path).map_err(|errno| FdError::RestoreFile {
        fd: r.fd,
        name: r.name.clone(),
        call: "unlink",
        path: path.to_path_buf(),
        errno: errno.into(),
    })
}

fn restore_dead_connection(r: &FdRecord, c: &ConnectedSocket) -> Result<(), FdError> {
    let sock = new_socket(r, c.local.family(), c.sock_type, false, &c.peer)?;
    sysfd::place_at(sock, r.fd, r.cloexec).map_err(|errno| FdError::RestoreSocket {
        fd: r.fd,
        name: r.name.clone(),
        call: "dup3",
        addr: c.peer.clone(),
        errno: errno.into(),
    })
}
