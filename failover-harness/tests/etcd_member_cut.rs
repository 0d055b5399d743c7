//! An etcd member cut off from its peers (not from the agents) while a headless game runs on
//! two agent hosts: the agents' kept connections go to that member (the first of their
//! endpoints), whose watches go quiet and whose reads and writes cannot reach a quorum. A
//! failover must still come (the agents move to a member that can answer) and the game
//! must end exactly as `tetris --headless` says.
//!
//! Needs root and etcd (skipped with the reason printed otherwise, unless
//! `HOTSPARE_REQUIRE_NETNS=1` / `HOTSPARE_REQUIRE_ETCD=1`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{cluster_prerequisites, ok};
use failover_harness::cluster::bench_hosts::{
    self, Fault, HeadlessGame, Recovery, SETTLE_WAIT, agent_events, fault_and_recover, long_script,
};
use failover_harness::cluster::hosts::{HostsOptions, HostsRig};
use failover_harness::cluster::hosts_events;

#[test]
fn a_failover_comes_while_the_agents_etcd_member_is_cut_off_from_its_peers() {
    if !cluster_prerequisites() {
        return;
    }
    let mut opts = HostsOptions::new(PathBuf::from(env!("CARGO_BIN_EXE_failover-harness")));
    opts.etcd_members = 3;
    let mut rig = ok(HostsRig::new(opts));
    ok(rig.start_session());
    let script = long_script(11, 12_000);
    let mut game = ok(HeadlessGame::start(&rig, "cut", 11, &script, 1000));
    let whole = ok(bench_hosts::settle(&rig, &mut game, SETTLE_WAIT))
        .unwrap_or_else(|| panic!("the session never became whole: {}", game.stderr_tail()));
    // The member every agent and the client try first, alone on its side of the cut.
    let members = rig.etcd_hosts();
    let (cut, rest) = members.split_first().expect("three etcd members");
    for other in rest {
        ok(rig.partition(cut, other));
    }
    // Long enough for the cut member to know it has no leader (election timeout 100 ms).
    std::thread::sleep(Duration::from_millis(500));
    let mut outside = Vec::new();
    let recovery = ok(fault_and_recover(
        &mut rig,
        &mut game,
        Fault::Kill,
        &whole.primary,
        whole.epoch,
        &mut outside,
    ));
    eprintln!(
        "member {cut} cut off; SIGKILL of {}'s game: {recovery:?}",
        whole.primary
    );
    ok(rig.heal());
    let end = ok(game.finish(&rig, Duration::from_secs(120)));
    assert!(
        matches!(recovery, Recovery::Took(_)),
        "no failover with member {cut} cut off: {recovery:?}\n{}\n{}",
        game.stderr_tail(),
        rig.agent_logs()
    );
    assert!(
        end.success && end.lost_inputs == 0,
        "the game differs from tetris --headless: got {} want {}\n{}",
        end.output,
        end.reference,
        game.stderr_tail()
    );
    let v = hosts_events::violations(&agent_events(&rig), &game.client_events(), &outside);
    assert!(v.is_empty(), "{v:?}");
}
