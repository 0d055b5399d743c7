//! The transports' guards: the Unix socket directory is private (0700, ours, not a link) on
//! both sides; TCP refuses to start without a key, and a peer with a wrong key, or none, is
//! refused in both directions; the authentication exchange is bounded by its timeout; the
//! null endpoint discards.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::thread;
use std::time::Duration;

use hslib::transport::tcp::{self, AuthKey, TcpConfig, TcpServer};
use hslib::transport::unix::{self, UnixServer};
use hslib::transport::{Endpoint, NullEndpoint, TransportError};

#[test]
fn unix_socket_directory_is_created_with_mode_0700() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hs");
    let server = UnixServer::bind(&dir, "s").expect("bind");
    let meta = fs::symlink_metadata(&dir).expect("stat");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    // And it works: a client in the same directory connects.
    let mut c = unix::connect(&dir, "s").expect("connect");
    let mut s = server.accept().expect("accept");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
    assert!(c.describe().starts_with("unix:"));
}

#[test]
fn unix_replaces_a_stale_socket_but_not_a_live_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hs");
    let live = UnixServer::bind(&dir, "s").expect("bind");
    match UnixServer::bind(&dir, "s") {
        Err(TransportError::Path { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("second bind on a live socket: {other:?}"),
    }
    drop(live);
    // A socket file left behind by a process that died: std's listener does not unlink it.
    let path = dir.join("s");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let again = UnixServer::bind(&dir, "s").expect("rebind over a stale socket");
    assert_eq!(again.path(), path);
}

#[test]
fn unix_refuses_an_existing_directory_open_to_others_on_both_sides() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("loose");
    fs::create_dir(&dir).expect("mkdir");
    for mode in [0o755, 0o770, 0o701, 0o1777] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
        match UnixServer::bind(&dir, "s") {
            Err(TransportError::DirectoryMode { mode: m, .. }) => assert_eq!(m, mode),
            other => panic!("mode {mode:o}: bind gave {other:?}"),
        }
        assert!(matches!(
            unix::connect(&dir, "s"),
            Err(TransportError::DirectoryMode { .. })
        ));
        // Refused, not repaired.
        let now = fs::metadata(&dir).expect("stat").mode() & 0o7777;
        assert_eq!(now, mode);
    }
}

#[test]
fn unix_refuses_a_symlinked_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).expect("chmod");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    assert!(matches!(
        UnixServer::bind(&link, "s"),
        Err(TransportError::NotADirectory { .. })
    ));
}

#[test]
fn unix_refuses_a_directory_owned_by_another_user() {
    if !nix::unistd::geteuid().is_root() {
        // Only root can hand a directory to someone else; the mode check covers the rest.
        eprintln!("skipped: needs root to chown");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("theirs");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    match UnixServer::bind(&dir, "s") {
        Err(TransportError::DirectoryOwner { owner, .. }) => assert_eq!(owner, 65534),
        other => panic!("bind gave {other:?}"),
    }
}

fn key(b: u8) -> AuthKey {
    AuthKey::new(vec![b; 32]).expect("key")
}

fn quick(key: Option<AuthKey>) -> TcpConfig {
    TcpConfig {
        key,
        handshake_timeout: Duration::from_secs(10),
    }
}

#[test]
fn tcp_without_a_key_refuses_to_start_on_either_side() {
    let cfg = quick(None);
    let e = TcpServer::bind("127.0.0.1:0", &cfg).expect_err("bind without key");
    assert!(matches!(e, TransportError::MissingKey { var: "HS_KEY" }));
    assert!(e.to_string().contains("refuses to start"), "{e}");
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = l.local_addr().expect("addr");
    assert!(matches!(
        tcp::connect(addr, &cfg),
        Err(TransportError::MissingKey { .. })
    ));
    // A key too short to be a secret is refused too.
    assert!(matches!(
        AuthKey::new(b"short".to_vec()),
        Err(TransportError::KeyTooShort { len: 5, min: 16 })
    ));
}

#[test]
fn tcp_with_the_same_key_connects_and_carries_bytes() {
    let server = TcpServer::bind("127.0.0.1:0", &quick(Some(key(1)))).expect("bind");
    let addr = server.local_addr().expect("addr");
    let t = thread::spawn(move || {
        let mut s = server.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        buf
    });
    let mut c = tcp::connect(addr, &quick(Some(key(1)))).expect("connect");
    c.write_all(b"hello").expect("write");
    assert_eq!(&t.join().expect("server"), b"hello");
}

#[test]
fn tcp_with_a_wrong_key_is_refused_on_both_sides() {
    let server = TcpServer::bind("127.0.0.1:0", &quick(Some(key(1)))).expect("bind");
    let addr = server.local_addr().expect("addr");
    let t = thread::spawn(move || server.accept().map(|_| ()));
    let client = tcp::connect(addr, &quick(Some(key(2))));
    // The server proves itself first, so the client sees a server without its key.
    assert!(
        matches!(client, Err(TransportError::PeerNotAuthenticated { .. })),
        "{client:?}"
    );
    let server = t.join().expect("server");
    // The client hung up without a proof: the server did not accept it.
    assert!(server.is_err(), "server accepted a peer with another key");
}

/// A client that speaks the exchange but has no key: it sends a greeting, skips checking the
/// server, and answers with a made-up proof.
#[test]
fn tcp_server_refuses_a_client_without_the_key() {
    let server = TcpServer::bind("127.0.0.1:0", &quick(Some(key(1)))).expect("bind");
    let addr = server.local_addr().expect("addr");
    let t = thread::spawn(move || server.accept().map(|_| ()));
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut greeting = b"HSAU\x01\0\0\0".to_vec();
    greeting.extend([7u8; 32]);
    s.write_all(&greeting).expect("greeting");
    let mut reply = [0u8; 8 + 32 + 32];
    s.read_exact(&mut reply).expect("server's proof");
    s.write_all(&[0u8; 32]).expect("fake proof");
    let mut verdict = Vec::new();
    s.read_to_end(&mut verdict).expect("verdict");
    assert_eq!(verdict, [0], "the server said it refused");
    assert!(matches!(
        t.join().expect("server"),
        Err(TransportError::PeerNotAuthenticated { .. })
    ));
}

/// A server that speaks the exchange but has no key: it answers with a made-up proof, and
/// would accept anything.
#[test]
fn tcp_client_refuses_a_server_without_the_key() {
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = l.local_addr().expect("addr");
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut greeting = [0u8; 8 + 32];
        s.read_exact(&mut greeting).expect("greeting");
        let mut reply = b"HSAU\x01\0\0\0".to_vec();
        reply.extend([3u8; 64]);
        s.write_all(&reply).expect("reply");
        // Whatever the client sends next: it must not be a proof.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        rest
    });
    let r = tcp::connect(addr, &quick(Some(key(1))));
    assert!(
        matches!(r, Err(TransportError::PeerNotAuthenticated { .. })),
        "{r:?}"
    );
    assert!(
        t.join().expect("fake server").is_empty(),
        "the client sent its proof to an unproven server"
    );
}

#[test]
fn tcp_refuses_a_peer_that_does_not_speak_the_exchange() {
    let server = TcpServer::bind("127.0.0.1:0", &quick(Some(key(1)))).expect("bind");
    let addr = server.local_addr().expect("addr");
    let t = thread::spawn(move || server.accept().map(|_| ()));
    let mut s = TcpStream::connect(addr).expect("connect");
    // At least the greeting's 40 bytes, so the server has all it reads before judging.
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    request.resize(64, b' ');
    s.write_all(&request).expect("write");
    assert!(matches!(
        t.join().expect("server"),
        Err(TransportError::BadGreeting { .. })
    ));
}

#[test]
fn tcp_handshake_gives_up_on_a_silent_peer_after_its_timeout() {
    let cfg = TcpConfig {
        key: Some(key(1)),
        handshake_timeout: Duration::from_millis(200),
    };
    let server = TcpServer::bind("127.0.0.1:0", &cfg).expect("bind");
    let addr = server.local_addr().expect("addr");
    let _silent = TcpStream::connect(addr).expect("connect");
    match server.accept() {
        Err(TransportError::Handshake { source, stage, .. }) => {
            assert!(
                matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{stage}: {source}"
            );
        }
        other => panic!("want a handshake timeout, got {other:?}"),
    }
}

#[test]
fn null_endpoint_discards_writes_and_reads_nothing() {
    let mut n = NullEndpoint::new();
    n.write_all(&[1u8; 10_000]).expect("write");
    assert_eq!(n.written(), 10_000);
    let mut buf = [0u8; 8];
    assert_eq!(n.read(&mut buf).expect("read"), 0);
}

#[test]
fn a_peer_trickling_its_greeting_is_cut_off_at_the_handshake_deadline() {
    let timeout = Duration::from_millis(500);
    let cfg = TcpConfig {
        key: Some(AuthKey::new(*b"trickle test key, 16+ bytes").expect("key")),
        handshake_timeout: timeout,
    };
    let server = TcpServer::bind("127.0.0.1:0", &cfg).expect("bind");
    let addr = server.local_addr().expect("addr");
    // One byte of the 40 the greeting takes every fifth of the timeout: each read finishes
    // well within it, so only a deadline for the whole exchange ends it early.
    let every = timeout / 5;
    let trickle = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let greeting = *b"HSAU\x01\0\0\0";
        for i in 0..40 {
            let byte = greeting.get(i).copied().unwrap_or(0);
            if s.write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(every);
        }
    });
    let start = std::time::Instant::now();
    let err = server.accept().expect_err("the trickling peer is refused");
    let took = start.elapsed();
    assert!(
        matches!(err, TransportError::Handshake { .. }),
        "unexpected error {err}"
    );
    // A per-read timeout lets the trickle take its 40 steps; the deadline stops it in far
    // fewer.
    assert!(
        took < every * 20,
        "the trickling peer held the handshake for {took:?}"
    );
    trickle.join().expect("the trickling peer");
}
