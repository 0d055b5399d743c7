//! The metadata record (the paper's section 2.3) against the real kernel: files, listening
//! and connected sockets and signal handlers captured, sent through postcard, and re-created
//! in this process at the same descriptor numbers; kinds that cannot be restored refused at
//! registration; blobs capped.
//!
//! Every test takes the global lock: they close descriptors and restore onto the same
//! numbers (a concurrent test's `open` could take a number in between) or change signal
//! dispositions.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::global_lock;
use hslib::internals::signal as syssig;
use hslib::meta::{
    FdError, FdKind, FdRegistry, Handler, LostConnection, MetaError, Metadata, SignalError,
    SignalFlags, SignalRegistry, SocketName, Unrestorable,
};
use nix::errno::Errno;
use nix::sys::signal::Signal;

/// Encodes and decodes the registry's state as the spare would receive it.
fn ship(fds: &FdRegistry, signals: &SignalRegistry) -> Metadata {
    let meta = Metadata {
        worker: Some("serve".into()),
        fds: fds.records().to_vec(),
        signals: signals.records().to_vec(),
        ..Metadata::default()
    };
    let bytes = meta.encode().expect("encode");
    let back = Metadata::decode(&bytes).expect("decode");
    assert_eq!(back, meta);
    back
}

fn restore(meta: &Metadata) -> Vec<LostConnection> {
    meta.restore(&mut SignalRegistry::new()).expect("restore")
}

fn is_open(fd: RawFd) -> bool {
    hslib::internals::fd::fstat(fd).is_ok()
}

/// Takes ownership of a descriptor that `restore` placed at `fd`.
fn adopt(fd: RawFd) -> OwnedFd {
    assert!(is_open(fd), "fd {fd} was not restored");
    // SAFETY: restore placed a new descriptor at `fd` that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn status_flags(fd: RawFd) -> i32 {
    hslib::internals::fd::status_flags(fd).expect("F_GETFL")
}

#[test]
fn a_files_offset_flags_and_number_survive_capture_postcard_close_and_restore() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    std::fs::write(&path, b"0123456789abcdef").expect("write");
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .expect("open");
    f.seek(SeekFrom::Start(3)).expect("seek");
    let fd = f.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_file(fd, "log", true).expect("register");
    f.seek(SeekFrom::Start(7)).expect("seek");
    fds.capture().expect("capture");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(f);
    // In the spare the number may hold something else (here /dev/null, opened at the lowest
    // free number); restore replaces it.
    let other = File::open("/dev/null").expect("open /dev/null");
    assert_eq!(other.as_raw_fd(), fd);
    std::mem::forget(other);

    assert!(restore(&meta).is_empty());
    let mut f = File::from(adopt(fd));
    let flags = status_flags(fd);
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR, "access mode");
    assert_ne!(flags & libc::O_APPEND, 0, "O_APPEND lost");
    assert!(
        hslib::internals::fd::cloexec(fd).expect("F_GETFD"),
        "FD_CLOEXEC lost"
    );
    let mut rest = String::new();
    f.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "789abcdef", "read from the captured offset");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.write_all(b"XY").expect("write");
    drop(f);
    let content = std::fs::read(&path).expect("read back");
    assert_eq!(content, b"0123456789abcdefXY", "O_APPEND writes at the end");
}

#[test]
fn capture_rereads_offsets_registered_with_refresh_and_keeps_the_others() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    std::fs::write(&path, b"abcdefghijklmnopqrstuvwxyz").expect("write");
    let mut fresh = File::open(&path).expect("open");
    let mut stale = File::open(&path).expect("open");
    fresh.seek(SeekFrom::Start(2)).expect("seek");
    stale.seek(SeekFrom::Start(2)).expect("seek");
    nix::fcntl::fcntl(
        &stale,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear FD_CLOEXEC");
    let mut fds = FdRegistry::new();
    fds.register_file(fresh.as_raw_fd(), "fresh", true)
        .expect("register");
    fds.register_file(stale.as_raw_fd(), "stale", false)
        .expect("register");
    fresh.seek(SeekFrom::Start(20)).expect("seek");
    stale.seek(SeekFrom::Start(20)).expect("seek");
    fds.capture().expect("capture");
    let offsets: Vec<(String, u64, bool)> = fds
        .records()
        .iter()
        .map(|r| match &r.kind {
            FdKind::File(f) => (r.name.clone(), f.offset, f.refresh),
            other => panic!("not a file: {other:?}"),
        })
        .collect();
    assert_eq!(
        offsets,
        [("fresh".into(), 20, true), ("stale".into(), 2, false)]
    );

    let meta = ship(&fds, &SignalRegistry::new());
    let (a, b) = (fresh.into_raw_fd(), stale.into_raw_fd());
    drop(adopt(a));
    drop(adopt(b));
    restore(&meta);
    assert!(hslib::internals::fd::cloexec(a).expect("F_GETFD"));
    assert!(
        !hslib::internals::fd::cloexec(b).expect("F_GETFD"),
        "FD_CLOEXEC gained"
    );
    let (mut sa, mut sb) = (String::new(), String::new());
    File::from(adopt(a)).read_to_string(&mut sa).expect("read");
    File::from(adopt(b)).read_to_string(&mut sb).expect("read");
    assert_eq!(sa, "uvwxyz");
    assert_eq!(sb, "cdefghijklmnopqrstuvwxyz");
}

#[test]
fn a_listening_tcp_socket_is_recreated_on_the_same_port_and_accepts() {
    let _g = global_lock();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    // A connection the old listener accepted stays in TIME_WAIT after the close below;
    // SO_REUSEADDR on the new listener must make the port bindable anyway.
    let c = TcpStream::connect(addr).expect("connect");
    let (s, _) = l.accept().expect("accept");
    drop(s);
    drop(c);
    let fd = l.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_socket(fd, "http").expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    match &meta.fds[0].kind {
        FdKind::Listening(ls) => {
            assert_eq!(ls.local, SocketName::Inet(addr));
            assert_eq!(ls.backlog, None);
            assert!(!ls.nonblocking);
        }
        other => panic!("recorded as {other:?}"),
    }
    drop(l);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the old listener is gone"
    );

    restore(&meta);
    let l = TcpListener::from(adopt(fd));
    assert_eq!(l.local_addr().expect("local_addr"), addr);
    let mut c = TcpStream::connect(addr).expect("connect to the restored listener");
    let (mut s, _) = l.accept().expect("accept");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
}

#[test]
fn a_listening_ipv6_socket_keeps_its_address_and_v6only() {
    let _g = global_lock();
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let addr = l.local_addr().expect("local_addr");
    let fd = l.as_raw_fd();
    hslib::internals::fd::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .expect("opt");
    let mut fds = FdRegistry::new();
    fds.register_listener(fd, "v6", 7).expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    let FdKind::Listening(ls) = &meta.fds[0].kind else {
        panic!("{:?}", meta.fds[0]);
    };
    assert_eq!(ls.backlog, Some(7));
    // Binding [::1] implies v6-only traffic; the flag is what the socket reported.
    let v6only = hslib::internals::fd::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
        .expect("opt")
        != 0;
    assert_eq!(ls.v6only, v6only);
    drop(l);
    restore(&meta);
    let l = TcpListener::from(adopt(fd));
    assert_eq!(l.local_addr().expect("local_addr"), addr);
    let got =
        hslib::internals::fd::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).expect("opt");
    assert_eq!(got != 0, v6only);
    let _c = TcpStream::connect(addr).expect("connect");
    l.accept().expect("accept");
}

#[test]
fn a_unix_listening_socket_is_recreated_over_its_stale_socket_file() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    let l = UnixListener::bind(&path).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let fd = l.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_socket(fd, "ctl").expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(l);
    // Like a primary that died: the socket file stays behind.
    assert!(path.exists());

    restore(&meta);
    let l = UnixListener::from(adopt(fd));
    assert_ne!(status_flags(fd) & libc::O_NONBLOCK, 0, "O_NONBLOCK lost");
    let local = l.local_addr().expect("local_addr");
    assert_eq!(local.as_pathname(), Some(path.as_path()));
    let mut c = UnixStream::connect(&path).expect("connect to the restored listener");
    let (mut s, _) = l.accept().expect("accept");
    c.write_all(b"hi").expect("write");
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"hi");
}

#[test]
fn restore_refuses_to_unlink_a_non_socket_at_a_unix_listeners_path() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let fd = l.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_socket(fd, "ctl").expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(l);
    std::fs::remove_file(&path).expect("unlink");
    std::fs::write(&path, b"precious").expect("write");
    let err = meta
        .restore(&mut SignalRegistry::new())
        .expect_err("restored");
    assert!(
        matches!(&err, MetaError::Fd(FdError::PathInUse { fd: f, path: p, .. }) if *f == fd && *p == path),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    assert!(!is_open(fd));
}

#[test]
fn a_connected_socket_is_restored_as_a_dead_connection_the_worker_can_see() {
    let _g = global_lock();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (_s, _) = l.accept().expect("accept");
    let (local, peer) = (c.local_addr().expect("local"), c.peer_addr().expect("peer"));
    let fd = c.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_socket(fd, "client").expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(c);

    let lost = restore(&meta);
    assert_eq!(
        lost,
        [LostConnection {
            fd,
            name: "client".into(),
            local: SocketName::Inet(local),
            peer: SocketName::Inet(peer),
        }]
    );
    let mut s = TcpStream::from(adopt(fd));
    let st = hslib::internals::fd::fstat(fd).expect("fstat");
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFSOCK);
    let e = s
        .peer_addr()
        .expect_err("a restored connection has no peer");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    let mut buf = [0u8; 1];
    let e = s.read(&mut buf).expect_err("reading a dead connection");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&s),
        nix::poll::PollFlags::POLLIN,
    )];
    nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).expect("poll");
    let revents = pfd[0].revents().expect("revents");
    assert!(
        revents.contains(nix::poll::PollFlags::POLLHUP),
        "poll says {revents:?}"
    );
}

#[test]
fn a_unix_connection_is_restored_dead_too() {
    let _g = global_lock();
    let (a, _b) = UnixStream::pair().expect("pair");
    let fd = a.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_socket(fd, "pair").expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(a);
    let lost = restore(&meta);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].fd, &lost[0].peer), (fd, &SocketName::Unnamed));
    let mut s = UnixStream::from(adopt(fd));
    let e = s
        .peer_addr()
        .expect_err("a restored connection has no peer");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    let mut buf = [0u8; 1];
    assert!(
        s.read(&mut buf).is_err(),
        "read from a dead unix connection"
    );
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&s),
        nix::poll::PollFlags::POLLIN,
    )];
    nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).expect("poll");
    let revents = pfd[0].revents().expect("revents");
    assert!(
        revents.contains(nix::poll::PollFlags::POLLHUP),
        "{revents:?}"
    );
}

#[test]
fn an_abstract_seqpacket_listener_is_recreated_with_its_type() {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let _g = global_lock();
    let name = format!("hslib-meta-test-{}", std::process::id());
    let addr = UnixAddr::new_abstract(name.as_bytes()).expect("addr");
    let l = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    socket::bind(l.as_raw_fd(), &addr).expect("bind");
    socket::listen(&l, Backlog::new(4).expect("backlog")).expect("listen");
    let fd = l.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_listener(fd, "seq", 4).expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    match &meta.fds[0].kind {
        FdKind::Listening(ls) => {
            assert_eq!(ls.local, SocketName::Abstract(name.clone().into_bytes()));
            assert_eq!(ls.sock_type, hslib::meta::SocketType::SeqPacket);
        }
        other => panic!("{other:?}"),
    }
    drop(l);

    restore(&meta);
    let l = adopt(fd);
    let ty =
        hslib::internals::fd::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).expect("SO_TYPE");
    assert_eq!(ty, libc::SOCK_SEQPACKET);
    let c = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    socket::connect(c.as_raw_fd(), &addr).expect("connect to the restored listener");
    socket::accept(&l).expect("accept");
}

fn refusal(fds: &mut FdRegistry, fd: RawFd, file: bool) -> Unrestorable {
    let res = if file {
        fds.register_file(fd, "x", false)
    } else {
        fds.register_socket(fd, "x")
    };
    match res {
        Err(FdError::Refused { fd: f, what, .. }) => {
            assert_eq!(f, fd);
            assert!(fds.records().is_empty());
            what
        }
        other => panic!("fd {fd}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn pipes_eventfds_memfds_and_deleted_files_are_refused_at_registration() {
    let _g = global_lock();
    let mut fds = FdRegistry::new();
    let (r, w) = std::io::pipe().expect("pipe");
    assert!(
        matches!(refusal(&mut fds, r.as_raw_fd(), true), Unrestorable::Pipe(t) if t.to_string_lossy().starts_with("pipe:["))
    );
    assert!(matches!(
        refusal(&mut fds, w.as_raw_fd(), true),
        Unrestorable::Pipe(_)
    ));

    // SAFETY: eventfd takes no pointers.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0, "eventfd: {}", Errno::last());
    // SAFETY: `efd` is a new descriptor nothing else owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    match refusal(&mut fds, efd.as_raw_fd(), true) {
        Unrestorable::AnonInode(t) => assert_eq!(t, "anon_inode:[eventfd]"),
        other => panic!("eventfd refused as {other:?}"),
    }

    // SAFETY: the name is a NUL-terminated string literal.
    let mfd = unsafe { libc::memfd_create(c"scratch".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(mfd >= 0, "memfd_create: {}", Errno::last());
    // SAFETY: `mfd` is a new descriptor nothing else owns.
    let mfd = unsafe { OwnedFd::from_raw_fd(mfd) };
    match refusal(&mut fds, mfd.as_raw_fd(), true) {
        Unrestorable::Memfd(t) => assert!(t.to_string_lossy().starts_with("/memfd:scratch")),
        other => panic!("memfd refused as {other:?}"),
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let gone = dir.path().join("gone");
    let f = File::create(&gone).expect("create");
    std::fs::remove_file(&gone).expect("unlink");
    let err = fds
        .register_file(f.as_raw_fd(), "gone", true)
        .expect_err("deleted file registered");
    let msg = err.to_string();
    assert!(
        matches!(&err, FdError::Refused { what: Unrestorable::Deleted(p), .. } if *p == gone),
        "{err:?}"
    );
    assert!(
        msg.contains(&format!("fd {}", f.as_raw_fd())) && msg.contains("deleted"),
        "{msg}"
    );

    // A renamed file is not refused: /proc shows (and the record keeps) its new path.
    let moved = dir.path().join("moved");
    let f2 = File::create(&moved).expect("create");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(&moved, &elsewhere).expect("rename");
    File::create(&moved).expect("a new file at the old path");
    fds.register_file(f2.as_raw_fd(), "moved", false)
        .expect("register a renamed file");
    assert!(
        matches!(&fds.records()[0].kind, FdKind::File(r) if r.path == elsewhere),
        "{:?}",
        fds.records()[0]
    );
}

#[test]
fn directories_devices_terminals_and_mismatched_kinds_are_refused_at_registration() {
    let _g = global_lock();
    let mut fds = FdRegistry::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = File::open(dir.path()).expect("open dir");
    assert!(matches!(
        refusal(&mut fds, d.as_raw_fd(), true),
        Unrestorable::Directory(_)
    ));
    let null = File::open("/dev/null").expect("open /dev/null");
    assert!(
        matches!(refusal(&mut fds, null.as_raw_fd(), true), Unrestorable::Device(p) if p == Path::new("/dev/null"))
    );
    if let Ok(pty) = OpenOptions::new().read(true).write(true).open("/dev/ptmx") {
        assert!(matches!(
            refusal(&mut fds, pty.as_raw_fd(), true),
            Unrestorable::Tty(_)
        ));
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    assert_eq!(refusal(&mut fds, l.as_raw_fd(), true), Unrestorable::Socket);
    let path = dir.path().join("f");
    let f = File::create(&path).expect("create");
    assert!(matches!(
        refusal(&mut fds, f.as_raw_fd(), false),
        Unrestorable::NotASocket(_)
    ));
}

#[test]
fn datagram_unnamed_and_unconnected_sockets_are_refused_at_registration() {
    let _g = global_lock();
    let mut fds = FdRegistry::new();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    assert_eq!(
        refusal(&mut fds, udp.as_raw_fd(), false),
        Unrestorable::SocketType(libc::SOCK_DGRAM)
    );
    let (a, _b) = UnixDatagram::pair().expect("pair");
    assert_eq!(
        refusal(&mut fds, a.as_raw_fd(), false),
        Unrestorable::SocketType(libc::SOCK_DGRAM)
    );
    let s = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    assert_eq!(
        refusal(&mut fds, s.as_raw_fd(), false),
        Unrestorable::Unconnected
    );
    let nl = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Netlink,
        nix::sys::socket::SockType::Raw,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("netlink socket");
    assert_eq!(
        refusal(&mut fds, nl.as_raw_fd(), false),
        Unrestorable::Family(libc::AF_NETLINK)
    );
}

#[test]
fn duplicate_numbers_names_and_closed_fds_are_errors() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = File::create(dir.path().join("a")).expect("create");
    let b = File::create(dir.path().join("b")).expect("create");
    let mut fds = FdRegistry::new();
    fds.register_file(a.as_raw_fd(), "a", true)
        .expect("register");
    assert!(matches!(
        fds.register_file(a.as_raw_fd(), "again", false),
        Err(FdError::DuplicateFd { .. })
    ));
    assert!(matches!(
        fds.register_file(b.as_raw_fd(), "a", false),
        Err(FdError::DuplicateName { .. })
    ));
    let fd = a.as_raw_fd();
    drop(a);
    let err = fds.capture().expect_err("capture of a closed fd");
    assert!(
        matches!(&err, FdError::Refresh { fd: f, errno, .. }
            if *f == fd && errno.raw_os_error() == Some(libc::EBADF)),
        "{err}"
    );
    assert!(fds.unregister(fd));
    fds.capture().expect("capture after unregister");
    assert!(matches!(
        fds.register_file(fd, "closed", false),
        Err(FdError::Inspect { errno, .. }) if errno.raw_os_error() == Some(libc::EBADF)
    ));
    drop(b);
}

#[test]
fn decoding_rejects_duplicate_fd_numbers() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = File::create(dir.path().join("a")).expect("create");
    let mut fds = FdRegistry::new();
    fds.register_file(a.as_raw_fd(), "a", true)
        .expect("register");
    let meta = Metadata {
        fds: vec![fds.records()[0].clone(), fds.records()[0].clone()],
        ..Metadata::default()
    };
    let bytes = meta.encode().expect("encode");
    assert!(matches!(
        Metadata::decode(&bytes),
        Err(MetaError::DuplicateFd { fd }) if fd == a.as_raw_fd()
    ));
}

static HITS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_hit(_: libc::c_int) {
    HITS.fetch_add(1, Ordering::SeqCst);
}

/// SIGURG's default action is to ignore it, so a handler that is not restored shows as a
/// missing count, not a dead test binary.
const SIG: Signal = Signal::SIGURG;

fn spare_handlers() -> SignalRegistry {
    let mut s = SignalRegistry::new();
    // SAFETY: count_hit only increments an atomic.
    unsafe { s.define("count", Handler::plain(count_hit)) }.expect("define");
    s
}

#[test]
fn a_signal_handler_is_captured_reset_restored_by_name_and_delivered() {
    let _g = global_lock();
    let mut primary = spare_handlers();
    let flags = SignalFlags {
        restart: true,
        ..SignalFlags::default()
    };
    primary
        .register(SIG, "count", flags, &[Signal::SIGUSR2])
        .expect("register");
    let before = HITS.load(Ordering::SeqCst);
    nix::sys::signal::raise(SIG).expect("raise");
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        before + 1,
        "installed at register"
    );

    let meta = ship(&FdRegistry::new(), &primary);
    assert_eq!(meta.signals[0].handler, "count");
    syssig::set_default(SIG as i32).expect("reset");
    assert_eq!(
        syssig::query(SIG as i32).expect("query").handler,
        libc::SIG_DFL
    );
    nix::sys::signal::raise(SIG).expect("raise");
    assert_eq!(HITS.load(Ordering::SeqCst), before + 1, "reset to default");

    let mut spare = spare_handlers();
    meta.restore(&mut spare).expect("restore");
    let d = syssig::query(SIG as i32).expect("query");
    assert_eq!(
        d.handler,
        count_hit as extern "C" fn(_) as libc::sighandler_t
    );
    assert_ne!(
        d.flags & libc::SA_RESTART,
        0,
        "SA_RESTART lost: {:#x}",
        d.flags
    );
    assert!(
        d.mask.contains(&(Signal::SIGUSR2 as i32)),
        "mask {:?}",
        d.mask
    );
    assert_eq!(spare.records(), primary.records());
    nix::sys::signal::raise(SIG).expect("raise");
    assert_eq!(
        HITS.load(Ordering::SeqCst),
        before + 2,
        "delivered after restore"
    );
    syssig::set_default(SIG as i32).expect("reset");
}

#[test]
fn an_unknown_handler_name_at_restore_is_an_error_and_restores_nothing() {
    let _g = global_lock();
    let mut primary = SignalRegistry::new();
    // SAFETY: count_hit only increments an atomic.
    unsafe { primary.define("tick", Handler::plain(count_hit)) }.expect("define");
    primary
        .register(SIG, "tick", SignalFlags::default(), &[])
        .expect("register");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = File::create(dir.path().join("f")).expect("create");
    let fd = f.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_file(fd, "f", false).expect("register");
    let meta = ship(&fds, &primary);
    drop(f);
    syssig::set_default(SIG as i32).expect("reset");

    let err = meta
        .restore(&mut spare_handlers())
        .expect_err("restored with an unknown name");
    assert!(
        matches!(&err, MetaError::Signal(SignalError::UnknownHandler { signal, name })
            if *signal == SIG as i32 && name == "tick"),
        "{err}"
    );
    assert!(err.to_string().contains("\"tick\""), "{err}");
    assert_eq!(
        syssig::query(SIG as i32).expect("query").handler,
        libc::SIG_DFL
    );
    assert!(!is_open(fd), "fds restored despite the error");
}

#[test]
fn reserved_signals_and_undefined_names_are_refused_at_registration() {
    let _g = global_lock();
    let mut s = spare_handlers();
    for sig in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGKILL,
        Signal::SIGSTOP,
    ] {
        let err = s
            .register(sig, "count", SignalFlags::default(), &[])
            .expect_err("reserved signal registered");
        assert!(matches!(err, SignalError::Reserved { signal } if signal == sig as i32));
    }
    assert!(matches!(
        s.register(SIG, "nope", SignalFlags::default(), &[]),
        Err(SignalError::UnknownHandler { .. })
    ));
    // SAFETY: count_hit only increments an atomic.
    let again = unsafe { s.define("count", Handler::plain(count_hit)) };
    assert!(matches!(again, Err(SignalError::DuplicateHandler { .. })));
    assert!(s.records().is_empty());
}

#[test]
fn restore_reports_which_file_failed() {
    let _g = global_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vanishes");
    let f = File::create(&path).expect("create");
    let fd = f.as_raw_fd();
    let mut fds = FdRegistry::new();
    fds.register_file(fd, "v", false).expect("register");
    let meta = ship(&fds, &SignalRegistry::new());
    drop(f);
    std::fs::remove_file(&path).expect("unlink");
    let err = meta
        .restore(&mut SignalRegistry::new())
        .expect_err("restored");
    assert!(
        matches!(&err, MetaError::Fd(FdError::RestoreFile { fd: f, call: "open", errno, path: p, .. })
            if *f == fd && *p == path && errno.raw_os_error() == Some(libc::ENOENT)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("fd {fd}")) && msg.contains("vanishes"),
        "{msg}"
    );
    // O_CREAT is never used: the file was not re-created.
    assert!(!path.exists());
}

mod encoding {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use hslib::meta::blob::{BlobError, Blobs};
    use hslib::meta::{
        ConnectedSocket, FdKind, FdRecord, FileRecord, ListeningSocket, MetaError, Metadata,
        RegionInfo, SignalFlags, SignalRecord, SocketName, SocketType,
    };
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,12}"
    }

    fn path() -> impl Strategy<Value = PathBuf> {
        // Linux paths are bytes, not necessarily UTF-8.
        proptest::collection::vec(1u8..=255, 1..40).prop_map(|b| {
            use std::os::unix::ffi::OsStringExt;
            PathBuf::from(std::ffi::OsString::from_vec(b))
        })
    }

    fn sockname() -> impl Strategy<Value = SocketName> {
        prop_oneof![
            any::<SocketAddr>().prop_map(SocketName::Inet),
            path().prop_map(SocketName::Unix),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(SocketName::Abstract),
            Just(SocketName::Unnamed),
        ]
    }

    fn sock_type() -> impl Strategy<Value = SocketType> {
        prop_oneof![Just(SocketType::Stream), Just(SocketType::SeqPacket)]
    }

    fn kind() -> impl Strategy<Value = FdKind> {
        prop_oneof![
            (path(), any::<i32>(), any::<u64>(), any::<bool>()).prop_map(
                |(path, flags, offset, refresh)| FdKind::File(FileRecord {
                    path,
                    flags,
                    offset,
                    refresh
                })
            ),
            (
                sock_type(),
                sockname(),
                any::<Option<u32>>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(sock_type, local, backlog, nonblocking, v6only)| {
                    FdKind::Listening(ListeningSocket {
                        sock_type,
                        local,
                        backlog,
                        nonblocking,
                        v6only,
                    })
                }),
            (sock_type(), sockname(), sockname()).prop_map(|(sock_type, local, peer)| {
                FdKind::Connected(ConnectedSocket {
                    sock_type,
                    local,
                    peer,
                })
            }),
        ]
    }

    fn metadata() -> impl Strategy<Value = Metadata> {
        let fds =
            proptest::collection::btree_map(0i32..4096, (name(), any::<bool>(), kind()), 0..6)
                .prop_map(|m| {
                    m.into_iter()
                        .map(|(fd, (name, cloexec, kind))| FdRecord {
                            fd,
                            name,
                            cloexec,
                            kind,
                        })
                        .collect::<Vec<_>>()
                });
        let signals = proptest::collection::vec(
            (
                1i32..65,
                name(),
                any::<(bool, bool, bool, bool)>(),
                proptest::collection::vec(1i32..65, 0..4),
            )
                .prop_map(|(signal, handler, (a, b, c, d), mask)| SignalRecord {
                    signal,
                    handler,
                    flags: SignalFlags {
                        restart: a,
                        no_defer: b,
                        reset_hand: c,
                        on_stack: d,
                    },
                    mask,
                }),
            0..4,
        );
        let regions = proptest::collection::vec(
            any::<(u32, u64, u64)>().prop_map(|(id, base, len)| RegionInfo { id, base, len }),
            0..5,
        );
        let blobs = proptest::collection::btree_map(
            name(),
            proptest::collection::vec(any::<u8>(), 0..300),
            0..4,
        );
        (proptest::option::of(name()), regions, fds, signals, blobs).prop_map(
            |(worker, regions, fds, signals, blobs)| Metadata {
                worker,
                regions,
                fds,
                signals,
                blobs,
            },
        )
    }

    proptest! {
        #[test]
        fn any_metadata_round_trips_through_postcard_and_the_borrowed_view_encodes_the_same(
            meta in metadata()
        ) {
            let bytes = meta.encode().expect("encode");
            let mut buf = vec![0xAA; 3];
            meta.as_ref().encode_into(&mut buf).expect("encode_into");
            prop_assert_eq!(&buf, &bytes);
            prop_assert_eq!(Metadata::decode(&bytes).expect("decode"), meta);
        }

        #[test]
        fn truncated_or_extended_metadata_is_an_error_not_a_panic(
            meta in metadata(),
            cut in any::<proptest::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let bytes = meta.encode().expect("encode");
            let cut = cut.index(bytes.len());
            prop_assert!(Metadata::decode(&bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.extend_from_slice(&extra);
            let is_trailing = matches!(Metadata::decode(&longer), Err(MetaError::Trailing { .. }));
            prop_assert!(is_trailing);
        }

        #[test]
        fn random_bytes_decode_to_an_error_or_a_valid_record(
            bytes in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            if let Ok(meta) = Metadata::decode(&bytes) {
                prop_assert!(meta.validate().is_ok());
            }
        }
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Score {
        points: u32,
        name: String,
    }

    #[test]
    fn blobs_round_trip_typed_values_and_refuse_oversize_ones_keeping_the_old_value() {
        let mut b = Blobs::with_caps(32, 32);
        let s = Score {
            points: 7,
            name: "ann".into(),
        };
        b.put("score", &s).expect("put");
        assert_eq!(b.get::<Score>("score").expect("get"), Some(s));
        assert_eq!(b.get::<Score>("absent").expect("get"), None);

        let big = vec![1u8; 40];
        let err = b.put("big", &big).expect_err("over the per-blob cap");
        assert!(
            matches!(&err, BlobError::TooLarge { name, size: 41, cap: 32 } if name == "big"),
            "{err}"
        );
        let before = b.total();
        let err = b
            .put("more", &vec![2u8; 30])
            .expect_err("over the total cap");
        assert!(
            matches!(
                err,
                BlobError::TotalTooLarge {
                    total: 36,
                    cap: 32,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(b.total(), before);
        assert!(b.get::<Vec<u8>>("more").expect("get").is_none());
        b.put("score", &0u8).expect("replace with a smaller value");
        assert_eq!(b.total(), 1);

        let err = b.get::<Score>("score").expect_err("wrong type");
        assert!(matches!(err, BlobError::Decode { .. }), "{err}");
        assert!(b.remove("score"));
        assert_eq!(b.total(), 0);
        assert!(matches!(
            b.put("", &1u8),
            Err(BlobError::BadName { len: 0 })
        ));
    }

    #[test]
    fn blobs_carried_by_metadata_come_back_and_oversize_ones_are_refused_on_decode() {
        let mut b = Blobs::default();
        b.put("cfg", &("x", 3u64)).expect("put");
        let meta = Metadata {
            blobs: b.as_map().clone(),
            ..Metadata::default()
        };
        let back = Metadata::decode(&meta.encode().expect("encode")).expect("decode");
        let b2 = Blobs::from_map(back.blobs, &Blobs::default()).expect("from_map");
        assert_eq!(
            b2.get::<(String, u64)>("cfg").expect("get"),
            Some(("x".into(), 3))
        );

        // Caps above the limits a spare accepts are lowered to them.
        let mut wide = Blobs::with_caps(usize::MAX, usize::MAX);
        let err = wide
            .put("big", &vec![0u8; hslib::meta::blob::MAX_BLOB_BYTES])
            .expect_err("over the largest cap");
        assert!(
            matches!(err, BlobError::TooLarge { cap, .. } if cap == hslib::meta::blob::MAX_BLOB_BYTES),
            "{err}"
        );

        let mut huge = BTreeMap::new();
        huge.insert(
            "huge".to_string(),
            vec![0u8; hslib::meta::blob::MAX_BLOB_BYTES + 1],
        );
        let meta = Metadata {
            blobs: huge,
            ..Metadata::default()
        };
        let bytes = meta.encode().expect("encode");
        assert!(matches!(
            Metadata::decode(&bytes),
            Err(MetaError::Blob(BlobError::TooLarge { .. }))
        ));
    }
}
