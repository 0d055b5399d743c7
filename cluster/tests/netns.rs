//! The test-host rig: hosts reach each other over the bridge, the faults do what they say
//! (one-way and two-way partitions, the host axe), heal undoes them, and dropping the rig
//! leaves no namespace behind. Needs root; skipped with the reason printed otherwise, unless
//! `HOTSPARE_REQUIRE_NETNS=1`.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use hotspare_cluster::netns::{Rig, available_for_tests};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn rig(names: &[&str]) -> Option<Rig> {
    if let Err(why) = available_for_tests() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(ok(Rig::new(names)))
}

/// Whether `from` can open a TCP connection to `addr` within 300 ms.
fn connects(rig: &Rig, from: &str, addr: &str) -> bool {
    let addr = ok(addr.parse());
    ok(rig.in_host(from, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    }))
}

/// Whether a datagram from `from` reaches `to`'s socket.
fn datagram_arrives(rig: &Rig, from: &str, to: &str) -> bool {
    let to_ip = ok(rig.host(to)).ip.clone();
    let sock = ok(ok(rig.in_host(to, || UdpSocket::bind(format!("{to_ip}:0")))));
    ok(sock.set_read_timeout(Some(Duration::from_millis(300))));
    let dest = ok(sock.local_addr());
    ok(rig.in_host(from, || {
        let s = ok(UdpSocket::bind("0.0.0.0:0"));
        // A blackholed sender-side route would fail here; the rules are on the receiver.
        let _ = s.send_to(b"x", dest);
    }));
    let mut buf = [0u8; 8];
    match sock.recv_from(&mut buf) {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("recv: {e}"),
    }
}

#[test]
fn hosts_reach_each_other_and_partitions_cut_what_they_name() {
    let Some(mut rig) = rig(&["a", "b", "c"]) else {
        return;
    };
    let b_ip = ok(rig.host("b")).ip.clone();
    let listener = ok(ok(
        rig.in_host("b", || TcpListener::bind(format!("{b_ip}:0")))
    ));
    let b_addr = ok(listener.local_addr()).to_string();
    assert!(connects(&rig, "a", &b_addr), "a cannot reach b");
    assert!(connects(&rig, "c", &b_addr), "c cannot reach b");

    ok(rig.partition("a", "b"));
    assert!(
        !connects(&rig, "a", &b_addr),
        "a reaches b across a partition"
    );
    assert!(connects(&rig, "c", &b_addr), "the a|b partition cut c off");
    ok(rig.heal());
    assert!(connects(&rig, "a", &b_addr), "heal did not restore a -> b");

    ok(rig.partition_one_way("a", "b"));
    assert!(!datagram_arrives(&rig, "a", "b"), "a -> b still arrives");
    assert!(
        datagram_arrives(&rig, "b", "a"),
        "b -> a was cut by a one-way a -> b"
    );
    ok(rig.heal());
    assert!(datagram_arrives(&rig, "a", "b"));
}

#[test]
fn an_axed_host_is_cut_off_and_its_processes_are_dead() {
    let Some(mut rig) = rig(&["a", "b"]) else {
        return;
    };
    let mut sleeper = ok(ok(rig.exec("b", "sleep"))
        .arg("600")
        .stdin(Stdio::null())
        .spawn());
    let b_ip = ok(rig.host("b")).ip.clone();
    let listener = ok(ok(
        rig.in_host("b", || TcpListener::bind(format!("{b_ip}:0")))
    ));
    let b_addr = ok(listener.local_addr()).to_string();
    assert!(connects(&rig, "a", &b_addr));
    ok(rig.axe("b"));
    let status = ok(sleeper.wait());
    assert!(
        !status.success(),
        "the host's process survived its axe: {status}"
    );
    assert!(!connects(&rig, "a", &b_addr), "an axed host still answers");
    assert!(
        !datagram_arrives(&rig, "b", "a"),
        "an axed host still sends"
    );
}

#[test]
fn dropping_the_rig_removes_its_namespaces() {
    let Some(rig) = rig(&["a"]) else { return };
    let ns = ok(rig.host("a")).ns.clone();
    let listed = |ns: &str| {
        let out = ok(std::process::Command::new("ip")
            .args(["netns", "list"])
            .output());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
    };
    assert!(listed(&ns));
    drop(rig);
    assert!(!listed(&ns), "{ns} left behind");
}
