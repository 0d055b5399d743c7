//! A promoted spare binds its listener where the dead primary's was, while the kernel may
//! still be releasing the old socket: the bind waits the address out (both transports), and
//! refuses a server that stays alive there.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use hslib::LinkConfig;
use hslib::link::{Link, StreamParams};
use hslib::transport::{AuthKey, TcpConfig};
use hslib::wire::Hello;

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
        ack_spin: hslib::transport::spin::DEFAULT_SPIN,
    }
}

fn tcp(addr: std::net::SocketAddr) -> LinkConfig {
    let key = AuthKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).expect("key");
    LinkConfig::Tcp {
        addr,
        config: TcpConfig::new(Some(key)),
    }
}

/// Holds `old` for `hold`, in a thread, then lets it go.
fn release_after<T: Send + 'static>(old: T, hold: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(old);
    })
}

#[test]
fn a_tcp_listener_waits_for_the_old_one_to_go() {
    let old = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = old.local_addr().expect("addr");
    let released = release_after(old, Duration::from_millis(100));
    let start = Instant::now();
    let link = Link::open(&tcp(addr), params()).expect("the bind waited the old socket out");
    assert!(start.elapsed() >= Duration::from_millis(90), "it did wait");
    assert!(link.describe().contains(&addr.port().to_string()));
    released.join().expect("the releasing thread");
}

#[test]
fn a_unix_listener_waits_for_the_old_one_to_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socks = dir.path().join("s");
    std::fs::create_dir(&socks).expect("mkdir");
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let old = UnixListener::bind(socks.join("p")).expect("bind");
    let released = release_after(old, Duration::from_millis(100));
    let config = LinkConfig::Unix {
        dir: socks.clone(),
        name: "p".to_owned(),
    };
    let start = Instant::now();
    Link::open(&config, params()).expect("the bind waited the old socket out");
    assert!(start.elapsed() >= Duration::from_millis(90), "it did wait");
    released.join().expect("the releasing thread");
}

#[test]
fn a_live_tcp_server_keeps_its_address() {
    let old = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = old.local_addr().expect("addr");
    let err = Link::open(&tcp(addr), params()).expect_err("two primaries on one address");
    assert!(err.to_string().contains("binding"), "{err}");
    drop(old);
}
