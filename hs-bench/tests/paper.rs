//! `hs-bench paper` as a user runs it: the JSON lines have the contract's fields for both
//! experiments and every strategy, and `--out` writes the CSV and the two charts.

use std::process::Command;

const STRATEGIES: [&str; 6] = [
    "fork-full",
    "fork-incremental",
    "copy-full",
    "copy-incremental",
    "adaptive",
    "memcpy-limit",
];

#[test]
fn paper_json_has_every_strategy_at_every_point_and_out_writes_csv_and_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
        .args(["paper", "--json", "--quick", "--out"])
        .arg(dir.path())
        .output()
        .expect("running hs-bench");
    assert!(
        out.status.success(),
        "hs-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let mut seen = std::collections::BTreeSet::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        let o = v.as_object().expect("an object");
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        for k in [
            "experiment",
            "strategy",
            "region_bytes",
            "dirty_pct",
            "stall_us_p50",
            "stall_us_p99",
            "bytes_shipped",
            "x_floor",
        ] {
            assert!(keys.contains(&k), "{line} lacks {k}");
        }
        assert_eq!(keys.len(), 8, "{line} has extra fields");
        // Every strategy is compared with the floor measured at the same point; the floor
        // itself is 1.
        let x = o["x_floor"]
            .as_f64()
            .expect("x_floor: memcpy-limit is measured at every point");
        if o["strategy"] == "memcpy-limit" {
            assert!((x - 1.0).abs() < 1e-9, "{line}");
        } else {
            assert!(x > 0.0, "{line}");
        }
        let experiment = o["experiment"].as_str().expect("experiment");
        let strategy = o["strategy"].as_str().expect("strategy");
        let p50 = o["stall_us_p50"].as_f64().expect("p50");
        let p99 = o["stall_us_p99"].as_f64().expect("p99");
        assert!(p50 > 0.0 && p99 >= p50, "{line}");
        let region = o["region_bytes"].as_u64().expect("region");
        let shipped = o["bytes_shipped"].as_u64().expect("shipped");
        if strategy.ends_with("-full") {
            assert_eq!(shipped, region, "{line}: a full strategy ships every page");
        } else {
            assert!(shipped > 0 && shipped <= region, "{line}");
        }
        seen.insert((experiment.to_owned(), strategy.to_owned()));
    }
    for e in ["size", "dirty"] {
        for s in STRATEGIES {
            assert!(
                seen.contains(&(e.to_owned(), s.to_owned())),
                "no {e}/{s} point"
            );
        }
    }
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).expect("results.csv");
    assert_eq!(csv.lines().count(), stdout.lines().count() + 1);
    for chart in ["stall-vs-size.svg", "stall-vs-dirty.svg"] {
        let svg = std::fs::read_to_string(dir.path().join(chart)).expect("chart");
        assert!(
            svg.starts_with("<svg") && svg.contains("adaptive"),
            "{chart}"
        );
    }
}

#[test]
fn an_unknown_strategy_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_hs-bench"))
        .args(["paper", "--strategies", "teleport"])
        .output()
        .expect("running hs-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("teleport"));
}
