//! `failover-harness bench-failover`: its JSON contract, and no input lost over a few
//! failovers on each transport. The times themselves are the bench's business, not a test's.

mod common;

use common::{harness, output};

fn bench(args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let mut cmd = harness();
    cmd.args(["bench-failover", "--json"]).args(args);
    let out = output(cmd);
    assert!(out.status.success(), "{args:?}: {}", out.stderr);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    serde_json::from_str(&text).expect("one JSON object")
}

#[test]
fn the_json_line_has_the_contract_keys_and_nothing_is_lost() {
    for transport in ["unix", "tcp"] {
        let v = bench(&["--trials", "5", "--transport", transport]);
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        let mut want = vec![
            "trials",
            "rto_ms_p50",
            "rto_ms_p99",
            "rto_ms_max",
            "lost_inputs",
            "floor_kill_to_eof_ms",
            "x_floor",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want, "{v:?}");
        assert_eq!(v["trials"], 5, "{v:?}");
        assert_eq!(v["lost_inputs"], 0, "{transport}: {v:?}");
        let ms = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v:?}"));
        assert!(0.0 < ms("rto_ms_p50"), "{v:?}");
        assert!(ms("rto_ms_p50") <= ms("rto_ms_p99") && ms("rto_ms_p99") <= ms("rto_ms_max"));
        // The floor is measured in the same run, and the ratio is the median's to it.
        assert!(0.0 < ms("floor_kill_to_eof_ms"), "{v:?}");
        let ratio = ms("rto_ms_p50") / ms("floor_kill_to_eof_ms");
        assert!(
            (ms("x_floor") - ratio).abs() <= 0.01 * ratio + 0.01,
            "x_floor is not rto_ms_p50 / floor_kill_to_eof_ms: {v:?}"
        );
    }
}

#[test]
fn sync_mode_loses_nothing_either() {
    let v = bench(&["--trials", "3", "--sync"]);
    assert_eq!(
        (v["trials"].as_u64(), v["lost_inputs"].as_u64()),
        (Some(3), Some(0)),
        "{v:?}"
    );
}

#[test]
fn the_callers_term_does_not_reach_the_bench_games() {
    // Its games draw on the harness's own ptys: a TERM the game would refuse alone is not
    // theirs.
    let mut cmd = harness();
    cmd.args(["bench-failover", "--json", "--trials", "2"])
        .env("TERM", "dumb");
    let out = output(cmd);
    assert!(out.status.success(), "{}", out.stderr);
}
