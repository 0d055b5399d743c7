//! The coordinator against a real etcd (Debian's etcd-server 3.4) on loopback: campaigns are
//! exclusive, epochs only grow, a lease's end frees the leader key, a stale leader cannot
//! remove a newer one, a watch reports every change in order, and a member that does not
//! answer is passed over (what may be sent twice goes on to the next; a txn is not sent
//! twice, and the next call goes elsewhere).
//!
//! Skipped with the reason printed when `etcd` is not installed, unless
//! `HOTSPARE_REQUIRE_ETCD=1` (CI), which makes that a failure.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hotspare_cluster::coordinator::{
    Campaign, Coordinator, EtcdSession, LeaderChange, NodeInfo, NodeState, SpareSlot,
};
use hotspare_cluster::etcd::{Client, Created, WatchEvent};
use hotspare_cluster::server::{EtcdProcess, available_for_tests};

fn etcd() -> Option<(tempfile::TempDir, EtcdProcess)> {
    if let Err(why) = available_for_tests() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = EtcdProcess::start_local(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    Some((dir, server))
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        stream_addr: format!("{name}:1"),
        client_addr: format!("{name}:2"),
        state: NodeState::Starting,
    }
}

fn session(server: &EtcdProcess, name: &str) -> EtcdSession {
    EtcdSession::new(server.url(), name, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"))
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn of_many_simultaneous_campaigns_exactly_one_wins_and_all_see_it() {
    let Some((_dir, server)) = etcd() else { return };
    let n = 6;
    let barrier = Arc::new(Barrier::new(n));
    let url = server.url().to_owned();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let s = ok(EtcdSession::new(&url, "race", Duration::from_secs(2)));
                let lease = ok(s.grant(5));
                barrier.wait();
                (i, ok(s.campaign(&node(&format!("n{i}")), lease)))
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| panic!("a campaigner panicked")))
        .collect();
    let winners: Vec<_> = results
        .iter()
        .filter_map(|(i, c)| match c {
            Campaign::Won(e) => Some((*i, *e)),
            Campaign::Lost(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (wi, epoch) = winners[0];
    for (_, c) in &results {
        if let Campaign::Lost(l) = c {
            assert_eq!(l.epoch, epoch);
            assert_eq!(l.node.name, format!("n{wi}"));
        }
    }
    let s = session(&server, "race");
    let leader = ok(s.leader()).unwrap_or_else(|| panic!("no leader"));
    assert_eq!((leader.node.name, leader.epoch), (format!("n{wi}"), epoch));
}

#[test]
fn epochs_strictly_increase_across_revoke_depose_and_expiry() {
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "epochs");
    let mut last = 0;
    // Revoked lease: the key goes at once.
    let lease = ok(s.grant(5));
    let Campaign::Won(e1) = ok(s.campaign(&node("a"), lease)) else {
        panic!("first campaign lost")
    };
    assert!(e1 > last);
    last = e1;
    ok(s.revoke(lease));
    assert_eq!(
        ok(s.leader()),
        None,
        "a revoked lease must free the leader key"
    );
    // Deposed by epoch.
    let lease = ok(s.grant(5));
    let Campaign::Won(e2) = ok(s.campaign(&node("b"), lease)) else {
        panic!("campaign after revoke lost")
    };
    assert!(e2 > last, "epoch {e2} after {last}");
    last = e2;
    assert!(
        !ok(s.depose(e1)),
        "a stale epoch must not remove the newer leader"
    );
    assert_eq!(ok(s.leader()).map(|l| l.epoch), Some(e2));
    assert!(ok(s.depose(e2)));
    // Expired lease (TTL 1 s; etcd notices within about half a second more).
    let lease = ok(s.grant(1));
    let Campaign::Won(e3) = ok(s.campaign(&node("c"), lease)) else {
        panic!("campaign after depose lost")
    };
    assert!(e3 > last);
    last = e3;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok(s.leader()).is_some() {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !ok(s.keepalive(lease)),
        "an expired lease must not be kept alive"
    );
    let lease = ok(s.grant(5));
    let Campaign::Won(e4) = ok(s.campaign(&node("d"), lease)) else {
        panic!("campaign after expiry lost")
    };
    assert!(e4 > last);
}

#[test]
fn a_kept_alive_lease_outlives_its_ttl() {
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "keep");
    let lease = ok(s.grant(1));
    let Campaign::Won(epoch) = ok(s.campaign(&node("a"), lease)) else {
        panic!("lost")
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(ok(s.keepalive(lease)), "the lease expired while kept alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ok(s.leader()).map(|l| l.epoch), Some(epoch));
}

#[test]
fn the_leader_watch_reports_the_current_leader_then_every_change_in_order() {
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "watch");
    let lease = ok(s.grant(5));
    let Campaign::Won(e1) = ok(s.campaign(&node("a"), lease)) else {
        panic!("lost")
    };
    let mut w = ok(s.watch_leader());
    let soon = || Instant::now() + Duration::from_secs(5);
    let first = ok(w.next(soon()));
    assert!(
        matches!(&first[..], [LeaderChange::Elected(l)] if l.epoch == e1 && l.node.name == "a"),
        "{first:?}"
    );
    ok(s.revoke(lease));
    let lease = ok(s.grant(5));
    let Campaign::Won(e2) = ok(s.campaign(&node("b"), lease)) else {
        panic!("lost")
    };
    let mut seen = Vec::new();
    let deadline = soon();
    while seen.len() < 2 && Instant::now() < deadline {
        seen.extend(ok(w.next(deadline)));
    }
    assert!(
        matches!(&seen[..], [LeaderChange::Vacant { .. }, LeaderChange::Elected(l)] if l.epoch == e2 && l.node.name == "b"),
        "{seen:?}"
    );
    // Nothing more: a wait that times out returns no change.
    assert!(ok(w.next(Instant::now() + Duration::from_millis(100))).is_empty());
}

#[test]
fn the_config_is_written_once_and_suspicions_are_per_epoch() {
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "cfg");
    assert_eq!(ok(s.config()), None);
    assert_eq!(ok(s.config_or_init(b"--seed 1")), b"--seed 1");
    assert_eq!(ok(s.config_or_init(b"--seed 2")), b"--seed 1");
    assert!(!ok(s.suspected(7)));
    ok(s.suspect(7, None));
    assert!(ok(s.suspected(7)));
    assert!(!ok(s.suspected(8)));
    let lease = ok(s.grant(5));
    ok(s.register(&node("a"), lease));
    ok(s.register(&node("b"), lease));
    let mut names: Vec<_> = ok(s.nodes()).into_iter().map(|n| n.name).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    ok(s.revoke(lease));
    assert!(ok(s.nodes()).is_empty(), "nodes go with their lease");
}

#[test]
fn a_client_with_a_dead_endpoint_first_uses_the_next_one() {
    let Some((_dir, server)) = etcd() else { return };
    let dead = hotspare_cluster::server::free_port().unwrap_or_else(|e| panic!("{e}"));
    let urls = format!("http://127.0.0.1:{dead},{}", server.url());
    let c = ok(Client::new(&urls, Duration::from_secs(2)));
    let rev = ok(c.put(b"k", b"v", None));
    assert_eq!(ok(c.get(b"k")).0.map(|kv| kv.value), Some(b"v".to_vec()));
    assert!(matches!(ok(c.create(b"k", b"w", None)), Created::Held(kv) if kv.value == b"v"));
    let mut w = ok(c.watch(b"k", false, rev));
    let evs = ok(w.next(Instant::now() + Duration::from_secs(5)));
    assert!(
        matches!(&evs[..], [WatchEvent::Put(kv)] if kv.value == b"v"),
        "{evs:?}"
    );
}

#[test]
fn an_unreachable_cluster_fails_within_the_deadline_naming_the_call() {
    let dead = hotspare_cluster::server::free_port().unwrap_or_else(|e| panic!("{e}"));
    let c = ok(Client::new(
        &format!("http://127.0.0.1:{dead}"),
        Duration::from_millis(300),
    ));
    let err = c.get(b"k").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("/v3/kv/range"), "{err}");
    assert!(Client::new("", Duration::from_secs(1)).is_err());
    assert!(Client::new("https://x:1", Duration::from_secs(1)).is_err());
    assert!(EtcdSession::new("http://127.0.0.1:1", "a/b", Duration::from_secs(1)).is_err());
}

#[test]
fn status_counts_failovers_from_the_history_and_names_a_synced_spare() {
    use hotspare_cluster::status::ClusterStatus;
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "status");
    let st = ok(ClusterStatus::read(&s));
    assert_eq!(
        st.to_json(),
        r#"{"epoch":0,"primary":null,"spare":null,"failovers":0}"#
    );
    let lease_a = ok(s.grant(5));
    let Campaign::Won(e1) = ok(s.campaign(&node("a"), lease_a)) else {
        panic!("lost")
    };
    ok(s.record_leader(e1, "a"));
    let lease_b = ok(s.grant(5));
    let lease_c = ok(s.grant(5));
    let mut b = node("b");
    b.state = NodeState::Spare { synced: true };
    ok(s.register(&b, lease_b));
    let Ok(SpareSlot::Taken(b_slot)) = s.take_spare("b", lease_b) else {
        panic!("b could not take the free spare slot")
    };
    let mut c = node("c");
    c.state = NodeState::Spare { synced: true };
    ok(s.register(&c, lease_c));
    let st = ok(ClusterStatus::read(&s));
    assert_eq!(
        (
            st.epoch,
            st.primary.as_deref(),
            st.spare.as_deref(),
            st.failovers
        ),
        (e1, Some("a"), Some("b"), 0),
        "the spare is the slot's holder, not any synced node"
    );
    // a dies: during the failover nobody leads, the epoch stays the latest leader's.
    ok(s.revoke(lease_a));
    let st = ok(ClusterStatus::read(&s));
    assert_eq!((st.epoch, st.primary.as_deref()), (e1, None));
    let Campaign::Won(e2) = ok(s.campaign(&node("b"), lease_b)) else {
        panic!("lost")
    };
    assert!(ok(s.release_spare(b_slot)));
    ok(s.record_leader(e2, "b"));
    // c takes the slot, but its game holds no checkpoint yet: no spare.
    c.state = NodeState::Spare { synced: false };
    ok(s.register(&c, lease_c));
    assert!(matches!(
        s.take_spare("c", lease_c),
        Ok(SpareSlot::Taken(_))
    ));
    let st = ok(ClusterStatus::read(&s));
    assert_eq!(
        (
            st.epoch,
            st.primary.as_deref(),
            st.spare.as_deref(),
            st.failovers
        ),
        (e2, Some("b"), None, 1)
    );
    c.state = NodeState::Spare { synced: true };
    ok(s.register(&c, lease_c));
    let st = ok(ClusterStatus::read(&s));
    assert_eq!(
        st.to_json(),
        format!(r#"{{"epoch":{e2},"primary":"b","spare":"c","failovers":1}}"#)
    );
    assert_eq!(
        ok(s.history()),
        vec![(e1, "a".to_owned()), (e2, "b".to_owned())]
    );
}

#[test]
fn the_spare_slot_has_one_holder_until_its_lease_ends_or_it_is_released() {
    let Some((_dir, server)) = etcd() else { return };
    let s = session(&server, "slot");
    assert_eq!(ok(s.spare_holder()), None);
    let lease_b = ok(s.grant(5));
    let lease_c = ok(s.grant(5));
    let Ok(SpareSlot::Taken(rev)) = s.take_spare("b", lease_b) else {
        panic!("the free slot was not taken")
    };
    assert_eq!(
        ok(s.take_spare("c", lease_c)),
        SpareSlot::Held("b".to_owned())
    );
    assert_eq!(ok(s.spare_holder()).as_deref(), Some("b"));
    // The slot's end with b's lease frees it for c; b's stale release cannot remove c's.
    ok(s.revoke(lease_b));
    let Ok(SpareSlot::Taken(rev_c)) = s.take_spare("c", lease_c) else {
        panic!("the slot of a revoked lease stayed taken")
    };
    assert!(rev_c > rev);
    assert!(
        !ok(s.release_spare(rev)),
        "a stale release removed a newer holder"
    );
    assert_eq!(ok(s.spare_holder()).as_deref(), Some("c"));
    assert!(ok(s.release_spare(rev_c)));
    assert_eq!(ok(s.spare_holder()), None);
}

/// A member that hangs as an axed host does: a connection to it opens (the listener's
/// backlog) but no request is ever answered, and nothing is reset.
fn hung_member() -> (std::net::TcpListener, String) {
    let l = ok(std::net::TcpListener::bind("127.0.0.1:0"));
    let url = format!("http://{}", ok(l.local_addr()));
    (l, url)
}

/// A TCP relay to `target` that goes silent when `frozen` is set, as a member whose host is
/// cut off: what was open stays open, bytes go nowhere, nothing is reset.
fn freezable_relay(target: &str) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = ok(std::net::TcpListener::bind("127.0.0.1:0"));
    let url = format!("http://{}", ok(l.local_addr()));
    let target = target.trim_start_matches("http://").to_owned();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(down) = conn else { return };
            let Ok(up) = std::net::TcpStream::connect(&target) else {
                return;
            };
            for (mut from, mut to) in [(ok(down.try_clone()), ok(up.try_clone())), (up, down)] {
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        if !f.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (url, frozen)
}

#[test]
fn every_call_reaches_the_next_member_within_its_deadline_while_the_first_one_hangs() {
    let Some((_dir, server)) = etcd() else { return };
    let (_hung, hung) = hung_member();
    let deadline = Duration::from_millis(300);
    let c = ok(Client::new(&format!("{hung},{}", server.url()), deadline));
    // A fresh client's first call: its first endpoint hangs.
    let t = Instant::now();
    let (_, rev) = ok(c.get(b"k"));
    assert!(t.elapsed() < deadline * 2, "took {:?}", t.elapsed());
    for i in 0..5u8 {
        ok(c.put(b"k", &[b'0' + i], None));
        assert_eq!(ok(c.get(b"k")).0.map(|kv| kv.value), Some(vec![b'0' + i]));
    }
    assert!(matches!(ok(c.create(b"k", b"w", None)), Created::Held(_)));
    let (lease, _) = ok(c.grant(5));
    assert!(ok(c.keepalive(lease)).is_some());
    // A fresh client's watch, too.
    let w = ok(Client::new(&format!("{hung},{}", server.url()), deadline));
    let mut watch = ok(w.watch(b"k", false, rev));
    assert!(!ok(watch.next(Instant::now() + Duration::from_secs(5))).is_empty());
}

#[test]
fn a_lease_is_never_fenced_when_the_member_its_keepalives_go_to_is_cut_off() {
    use hotspare_cluster::lease::LeaseKeeper;
    use std::sync::atomic::Ordering;
    let Some((_dir, server)) = etcd() else { return };
    // The first endpoint reaches etcd until it is cut off (the axed member of a cluster of
    // three: the others still answer).
    let (relay, frozen) = freezable_relay(server.url());
    let urls = format!("{relay},{}", server.url());
    let keeper = ok(LeaseKeeper::start(
        &urls,
        "cut",
        1,
        Duration::from_millis(300),
    ));
    assert!(!keeper.wait_fenced(Duration::from_millis(600)));
    frozen.store(true, Ordering::Relaxed);
    assert!(
        !keeper.wait_fenced(Duration::from_secs(3)),
        "fenced while another member answered"
    );
    // And a new session's calls reach the member that answers: its first read finds it (a
    // txn is never sent twice, so it would wait out its deadline on the member it was sent
    // to; the endpoint a read found is where it goes).
    let s = EtcdSession::new(&urls, "cut", Duration::from_millis(500))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok(s.leader()), None);
    let Campaign::Won(_) = ok(s.campaign(&node("a"), keeper.lease())) else {
        panic!("lost")
    };
    assert!(ok(s.keepalive(keeper.lease())));
}

#[test]
fn a_txn_is_not_sent_twice_and_the_next_call_goes_to_another_member() {
    let Some((_dir, server)) = etcd() else { return };
    let (_hung, hung) = hung_member();
    let c = ok(Client::new(
        &format!("{hung},{}", server.url()),
        Duration::from_millis(300),
    ));
    // Sent to the hung member, perhaps applied there: an error, not a second send.
    assert!(c.create(b"k", b"1", None).is_err(), "a txn was sent twice");
    let reader = ok(Client::new(server.url(), Duration::from_secs(2)));
    assert_eq!(ok(reader.get(b"k")).0, None, "the txn reached etcd");
    // The next one goes to the member that may answer.
    assert!(matches!(ok(c.create(b"k", b"2", None)), Created::Won(_)));
    assert_eq!(
        ok(reader.get(b"k")).0.map(|kv| kv.value),
        Some(b"2".to_vec())
    );
}
