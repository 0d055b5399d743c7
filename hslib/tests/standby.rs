//! A link opened on a standby thread (a promoted spare's sender, started while it waited)
//! returns before it listens: the listener is bound on that thread, so the promoted game
//! never waits for a bind; a spare then connects to it as to any link; and a listener that
//! cannot be bound there fails the next checkpoint instead of going unnoticed.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use hslib::LinkConfig;
use hslib::link::{Link, Standby, StreamParams};
use hslib::replica::{Replica, ReplicaConfig};
use hslib::transport::{self, AuthKey, HANDSHAKE_TIMEOUT, TcpConfig};
use hslib::wire::Hello;

/// How long a step may take before the test gives up (never a speed claim: a bound on a
/// hang).
const PATIENCE: Duration = Duration::from_secs(30);

fn params() -> StreamParams {
    StreamParams {
        epoch: 2,
        first_checkpoint: 1,
        hello: Hello {
            page_size: 4096,
            regions: Vec::new(),
        },
        sync_sink: false,
        heartbeat: None,
        log_max_bytes: None,
        delivery: hslib::link::Delivery::Woken,
        ack_spin: transport::spin::DEFAULT_SPIN,
    }
}

fn standby() -> Option<Standby> {
    Some(Standby::start("hs-sender").expect("a standby thread"))
}

/// Waits (up to [`PATIENCE`]) until `done` holds.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_link_on_a_standby_thread_opens_while_its_address_is_still_held_and_then_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("s");
    std::fs::create_dir(&socks).expect("mkdir");
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // The dead primary's socket, still held: a bind on the caller's thread would wait it out
    // (two seconds) and then fail with the address in use, since it goes only after the open.
    let old = UnixListener::bind(socks.join("p")).expect("bind");
    let config = LinkConfig::Unix {
        dir: socks.clone(),
        name: "p".to_owned(),
    };
    let link = Link::open_on(&config, params(), standby())
        .expect("the open returns without waiting for the address");
    assert!(!link.live(), "no spare yet");
    drop(old);
    // A spare connects to the listener the standby thread bound, and gets a session.
    let mut ep = None;
    until("the standby thread's listener", || {
        ep = transport::unix::connect(&socks, "p").ok();
        ep.is_some()
    });
    let mut ep = ep.expect("connected");
    let spare = std::thread::spawn(move || {
        let mut replica = Replica::new(ReplicaConfig::default());
        hslib::session::serve_spare(&mut replica, &mut ep, HANDSHAKE_TIMEOUT).map(|_| ())
    });
    until("the spare's session", || link.live());
    assert!(link.listen_failed().is_ok());
    link.finish().expect("the link finishes");
    spare
        .join()
        .expect("the spare thread")
        .expect("the spare's session ends cleanly");
}

#[test]
fn a_listener_the_standby_thread_cannot_bind_fails_the_link_afterwards() {
    // A live server keeps its address: the standby thread gives up after the grace.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr");
    let key = AuthKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).expect("key");
    let config = LinkConfig::Tcp {
        addr,
        config: TcpConfig::new(Some(key)),
    };
    let link = Link::open_on(&config, params(), standby()).expect("the open returns at once");
    until("the failed bind to be known", || {
        link.listen_failed().is_err()
    });
    let err = link.listen_failed().expect_err("it failed");
    let text = err.to_string();
    assert!(
        text.contains("listening for spares") && text.contains(&addr.port().to_string()),
        "{text}"
    );
    drop(held);
}
