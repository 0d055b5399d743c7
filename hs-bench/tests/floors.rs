//! `hs-bench floors --json` measures all four floors with its peer processes and prints them
//! in the documented shape; bad options are refused with a message.

use std::process::Command;

#[test]
fn floors_json_has_all_four_floors_measured() {
    let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
        .args(["floors", "--json", "--samples", "20", "--region-kib", "256"])
        .output()
        .unwrap_or_else(|e| panic!("running hs-bench: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    for floor in ["memcpy", "handoff", "sync_round_trip", "kill_to_eof"] {
        let f = &v[floor];
        let p50 = f["p50_us"].as_f64().unwrap_or(-1.0);
        let p99 = f["p99_us"].as_f64().unwrap_or(-1.0);
        assert!(p50 > 0.0 && p99 >= p50, "{floor}: {f}");
        assert!(f["samples"].as_u64().unwrap_or(0) >= 10, "{floor}: {f}");
    }
    // 256 KiB is 16 runs of four pages; 10% of them is one run.
    assert_eq!(v["memcpy_bytes"].as_u64(), Some(4 * 4096));
}

#[test]
fn floors_refuses_a_share_outside_1_to_100() {
    let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
        .args(["floors", "--dirty-pct", "0"])
        .output()
        .unwrap_or_else(|e| panic!("running hs-bench: {e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dirty-pct 0"));
}
