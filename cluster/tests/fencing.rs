//! The second layer of fencing: a primary whose host loses etcd is told to stop (its lease
//! keeper reports itself fenced) before any other node can lead. Hosts in network namespaces
//! (root; skipped otherwise unless required), etcd on its own host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspare_cluster::coordinator::{Campaign, Coordinator, EtcdSession, NodeInfo, NodeState};
use hotspare_cluster::lease::{LeaseKeeper, LeaseState};
use hotspare_cluster::netns::Rig;
use hotspare_cluster::server::{EtcdProcess, READY_WAIT};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        stream_addr: String::new(),
        client_addr: String::new(),
        state: NodeState::Starting,
    }
}

fn prerequisites() -> bool {
    for check in [
        hotspare_cluster::netns::available_for_tests,
        hotspare_cluster::server::available_for_tests,
    ] {
        if let Err(why) = check() {
            eprintln!("skipped: {why}");
            return false;
        }
    }
    true
}

/// The rig, etcd running on its host "etcd", and etcd's URL.
fn cluster(names: &[&str]) -> (Rig, tempfile::TempDir, EtcdProcess, String) {
    let rig = ok(Rig::new(names));
    let dir = ok(tempfile::tempdir());
    let ip = ok(rig.host("etcd")).ip.clone();
    let ns = ok(rig.host("etcd")).ns.clone();
    let mut etcd = ok(EtcdProcess::start(dir.path(), &ip, 2379, 2380, Some(&ns)));
    ok(ok(rig.in_host("etcd", || etcd.wait_ready(READY_WAIT))));
    let url = etcd.url().to_owned();
    (rig, dir, etcd, url)
}

#[test]
fn a_primary_cut_off_from_etcd_is_fenced_before_another_node_leads() {
    if !prerequisites() {
        return;
    }
    for round in 0..3 {
        let (mut rig, _dir, _etcd, url) = cluster(&["etcd", "a", "b"]);
        let session = format!("fence{round}");
        // a leads with a kept-alive lease.
        let keeper = Arc::new(ok(ok(rig.in_host("a", || {
            LeaseKeeper::start(&url, &session, 1, Duration::from_millis(250))
        }))));
        let a = ok(ok(rig.in_host("a", || {
            EtcdSession::new(&url, &session, Duration::from_millis(500))
        })));
        let won = ok(ok(
            rig.in_host("a", || a.campaign(&node("a"), keeper.lease()))
        ));
        assert!(matches!(won, Campaign::Won(_)), "{won:?}");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(keeper.state(), LeaseState::Held, "fenced while connected");

        // Cut a off from etcd; b campaigns until it wins, a waits for its fence.
        ok(rig.partition("a", "etcd"));
        let cut = Instant::now();
        let (b_won_at, b_epoch) = ok(rig.in_host("b", || {
            let b = ok(EtcdSession::new(&url, &session, Duration::from_millis(500)));
            let lease = ok(b.grant(5));
            loop {
                assert!(cut.elapsed() < Duration::from_secs(10), "b never led");
                if let Campaign::Won(e) = ok(b.campaign(&node("b"), lease)) {
                    return (Instant::now(), e);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        let fenced = keeper.fenced_at().is_some_and(|at| at < b_won_at);
        assert!(
            fenced,
            "round {round}: b led (epoch {b_epoch}) {:?} after the cut, while a still thought \
             it held its lease",
            b_won_at - cut
        );
    }
}
