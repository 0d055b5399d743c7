//! `hs-bench floors --json` measures all four floors with its peer processes and prints them
//! in the documented shape, `hs-bench cold --json` every cold cost; bad options are refused
//! with a message.

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

#[test]
fn bad_paper_options_are_refused_at_once_with_what_to_do() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running hs-bench: {e}"));
        assert!(!out.status.success(), "{args:?} succeeded");
        // Nothing measured: every measured point would be a line on stdout.
        assert!(out.stdout.is_empty(), "{args:?} measured before refusing");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["paper", "--strategies", "bogus"]);
    assert!(
        err.contains("\"bogus\"")
            && err.contains("copy-incremental")
            && err.contains("memcpy-limit"),
        "{err}"
    );
    // A file where the directory should be: refused before anything is measured (which
    // would take minutes), naming the path.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap_or_else(|e| panic!("{e}"));
    let err = run(&["paper", "--out", &file.display().to_string()]);
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn version_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running hs-bench: {e}"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hs-bench "));
}

#[test]
fn cold_json_has_every_cost_measured_and_no_samples_is_refused() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hs-bench"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running hs-bench: {e}"))
    };
    let out = run(&["cold", "--json", "--gap-us", "0", "--samples", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    for cost in [
        "code_line_ns",
        "code_line_warm_ns",
        "page_ns",
        "line_ns",
        "copy_4k_ns",
    ] {
        let c = &v[cost];
        let p50 = c["p50"].as_f64().unwrap_or(-1.0);
        let p99 = c["p99"].as_f64().unwrap_or(-1.0);
        assert!(p50 > 0.0 && p99 >= p50, "{cost}: {c}");
    }
    assert_eq!(v["samples"].as_u64(), Some(5));
    assert_eq!(v["gap_us"].as_u64(), Some(0));
    let out = run(&["cold", "--samples", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--samples"));
}
