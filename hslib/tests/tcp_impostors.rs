//! Peers that connect to a primary's TCP port and never authenticate (idle ones that send
//! nothing, slow ones that send the greeting a byte at a time) cost a real spare nothing: it
//! joins and is synced at once, however many of them hold connections. An acceptor that
//! authenticated one peer at a time made the spare wait out every impostor ahead of it (a
//! handshake timeout each, and the slow ones far longer).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hslib::replica::{Replica, ReplicaConfig};
use hslib::session::serve_spare;
use hslib::transport::tcp::{self, AuthKey, TcpConfig};
use hslib::transport::{Endpoint, HANDSHAKE_TIMEOUT};
use hslib::{Backend, HotSpare, LinkConfig, Outcome, RegionId, Role};

const REGION: RegionId = RegionId(9);
/// Gives up on a run that never syncs (the old acceptor, with impostors ahead of the spare).
const GIVE_UP: Duration = Duration::from_secs(60);
/// How often a slow impostor sends its next byte.
const SLOW_BYTE_EVERY: Duration = Duration::from_millis(100);

fn config() -> TcpConfig {
    TcpConfig::new(Some(
        AuthKey::new(*b"impostor test key, 32 bytes long").expect("a key"),
    ))
}

/// A port nobody listens on right now (the primary binds it next).
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe listener");
    l.local_addr().expect("the probe's address")
}

/// A connection that the primary's kernel accepted, fed one byte of the greeting at a time
/// until `stop` (`slow`), or never fed at all.
fn impostor(addr: SocketAddr, slow: bool, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let stream = TcpStream::connect(addr).expect("an impostor connects");
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut stream = stream;
        let greeting = b"HSAU\x01\0\0\0";
        let mut i = 0;
        while !stop.load(Ordering::Acquire) {
            if slow && i < greeting.len() && stream.write_all(&greeting[i..=i]).is_ok() {
                i += 1;
            }
            std::thread::sleep(SLOW_BYTE_EVERY);
        }
    })
}

/// A real spare: connects (again after a refused or timed-out handshake, as hslib's spare
/// role does) and replicates until the stream ends.
fn real_spare(addr: SocketAddr) -> std::thread::JoinHandle<Option<u64>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + GIVE_UP;
        while Instant::now() < deadline {
            let Ok(mut ep) = tcp::connect(addr, &config()) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let mut replica = Replica::new(ReplicaConfig::default());
            let _ = serve_spare(&mut replica, &mut ep, HANDSHAKE_TIMEOUT);
            let _ = ep.shutdown();
            if replica.checkpoint().is_some() {
                return replica.checkpoint();
            }
        }
        None
    })
}

/// Starts a primary on TCP with `idle` and `slow` impostors connected before a real spare,
/// and returns how long the spare took from its start until it held a checkpoint.
fn time_to_sync(idle: usize, slow: usize) -> Duration {
    let addr = free_addr();
    let took = Arc::new(std::sync::Mutex::new(None));
    let out = Arc::clone(&took);
    let outcome = HotSpare::new("impostors")
        .region(REGION, 4096)
        .tracker(Backend::Full)
        .role(Role::Primary)
        .spare_wait(Duration::ZERO)
        .link(LinkConfig::Tcp {
            addr,
            config: config(),
        })
        .worker(move |ctx| {
            let stop = Arc::new(AtomicBool::new(false));
            let impostors: Vec<_> = (0..idle)
                .map(|_| impostor(addr, false, &stop))
                .chain((0..slow).map(|_| impostor(addr, true, &stop)))
                .collect();
            // Let the primary's acceptor take the impostors' connections first.
            std::thread::sleep(Duration::from_millis(50));
            let start = Instant::now();
            let spare = real_spare(addr);
            let mut n = 0u8;
            while !ctx.link_stats().synced && start.elapsed() < GIVE_UP {
                n = n.wrapping_add(1);
                ctx.region_mut(REGION)?.as_bytes_mut()[0] = n;
                ctx.checkpoint()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            let elapsed = start.elapsed();
            *out.lock().map_err(|_| "poisoned")? = Some(elapsed);
            stop.store(true, Ordering::Release);
            for i in impostors {
                i.join().map_err(|_| "an impostor thread panicked")?;
            }
            // The spare's stream ends on the primary's goodbye when the worker returns.
            drop(spare);
            Ok(())
        })
        .run()
        .expect("the primary's run");
    assert!(matches!(outcome, Outcome::Finished { .. }), "{outcome:?}");
    let took = took.lock().expect("the lock").take();
    took.expect("the worker measured the sync")
}

/// (idle, slow) impostors per run. 40 idle ones are more than the handshakes the acceptor
/// runs at once: the oldest are cut off to make room, and the real spare, the newest, is not.
const IMPOSTORS: [(usize, usize); 8] = [
    (1, 0),
    (0, 1),
    (2, 0),
    (1, 1),
    (2, 2),
    (8, 0),
    (8, 8),
    (40, 0),
];

#[test]
fn idle_and_slow_impostors_do_not_delay_a_real_spare() {
    // Warm-up and baseline: no impostors.
    let alone = time_to_sync(0, 0);
    assert!(alone < GIVE_UP, "no spare synced even without impostors");
    for (idle, slow) in IMPOSTORS {
        let took = time_to_sync(idle, slow);
        // Authenticating one peer at a time, the spare waited at least one handshake
        // timeout for every impostor ahead of it (a slow one far longer); half of that for
        // all of them together is a bound the old acceptor cannot meet, and one the new
        // one meets whatever the machine's load (its own time is `alone`'s, milliseconds).
        let serial = HANDSHAKE_TIMEOUT * u32::try_from(idle + slow).expect("a small count");
        assert!(
            took < serial / 2,
            "with {idle} idle and {slow} slow impostors the spare synced after {took:?} \
             (alone: {alone:?}); one at a time would take {serial:?}"
        );
    }
}
