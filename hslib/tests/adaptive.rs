//! The adaptive strategy's cost model: the choice follows the measured costs, learns from
//! what it observes, and re-measures a strategy it has not tried for a while.

use std::time::Duration;

use hslib::snapshot::CostModel;
use hslib::{Region, RegionId, Strategy};

#[test]
fn copies_below_the_crossover_and_forks_above_it() {
    // 1 us fixed + 0.1 ns/byte for a copy; 200 us for a fork: crossover near 1.99 MB.
    let mut m = CostModel::new(1_000.0, 0.1, 200_000.0);
    assert_eq!(m.crossover_bytes(), 1_990_000);
    assert_eq!(m.choose(100_000), Strategy::Copy);
    assert_eq!(m.choose(1_900_000), Strategy::Copy);
    assert_eq!(m.choose(2_100_000), Strategy::Fork);
    assert_eq!(m.choose(64 << 20), Strategy::Fork);
}

#[test]
fn observations_move_the_estimates_toward_what_was_measured() {
    let mut m = CostModel::new(1_000.0, 0.1, 200_000.0);
    for _ in 0..200 {
        m.observe(Strategy::Fork, 1 << 20, Duration::from_micros(50));
        m.observe(
            Strategy::Copy,
            1 << 20,
            Duration::from_nanos(1_000 + (1 << 20)),
        );
    }
    assert!((m.fork_ns - 50_000.0).abs() < 1_000.0, "{m:?}");
    assert!((m.copy_ns_per_byte - 1.0).abs() < 0.05, "{m:?}");
    // Now a 1 MiB checkpoint costs ~1 ms to copy and 50 us to fork.
    assert_eq!(m.choose(1 << 20), Strategy::Fork);
}

#[test]
fn a_close_alternative_with_few_measurements_is_tried_every_8_checkpoints() {
    let mut m = CostModel::new(0.0, 1.0, 120_000.0);
    // 100 KB: copy 100 us, fork 120 us (within 1.5x), fork never measured.
    for _ in 0..8 {
        assert_eq!(m.choose(100_000), Strategy::Copy);
        m.observe(Strategy::Copy, 100_000, Duration::from_micros(100));
    }
    assert_eq!(m.choose(100_000), Strategy::Fork);
}

#[test]
fn a_close_alternative_not_tried_for_64_checkpoints_is_tried_once() {
    let mut m = CostModel::new(0.0, 1.0, 120_000.0);
    // Fork measured enough: four observations of 120 us.
    for _ in 0..4 {
        m.observe(Strategy::Fork, 100_000, Duration::from_micros(120));
    }
    // 100 KB: copy 100 us, fork 120 us (within 1.5x).
    for _ in 0..63 {
        assert_eq!(m.choose(100_000), Strategy::Copy);
        m.observe(Strategy::Copy, 100_000, Duration::from_micros(100));
    }
    // The model has a fork cost only from calibration, 64 checkpoints old: try it.
    m.observe(Strategy::Copy, 100_000, Duration::from_micros(100));
    assert_eq!(m.choose(100_000), Strategy::Fork);
    m.observe(Strategy::Fork, 100_000, Duration::from_micros(120));
    assert_eq!(m.choose(100_000), Strategy::Copy);
    // A far costlier alternative is never tried.
    let mut far = CostModel::new(0.0, 1.0, 1_000_000.0);
    for _ in 0..200 {
        assert_eq!(far.choose(100_000), Strategy::Copy);
        far.observe(Strategy::Copy, 100_000, Duration::from_micros(100));
    }
}

#[test]
fn calibration_measures_this_process() {
    let mut r = Region::map(RegionId(3100), 1 << 20).expect("region");
    r.as_bytes_mut().fill(7);
    let m = CostModel::calibrate(std::slice::from_ref(&r)).expect("calibrate");
    assert!(
        m.copy_ns_per_byte > 0.0 && m.copy_ns_per_byte.is_finite(),
        "{m:?}"
    );
    assert!(m.fork_ns > 0.0 && m.fork_ns.is_finite(), "{m:?}");
    assert!(m.cbw_ns > 0.0 && m.cbw_ns.is_finite(), "{m:?}");
}

#[test]
fn cbw_is_chosen_where_it_measures_cheapest_and_dropped_when_it_stops_being() {
    // Copies 1 ns/byte, forks 1 s, a cbw stall 50 us: cbw above 50 kB, copy below.
    let mut m = CostModel::new(0.0, 1.0, 1e9).with_cbw(50_000.0);
    assert_eq!(m.choose(10_000), Strategy::Copy);
    assert_eq!(m.choose(100_000), Strategy::Cbw);
    // Its stalls turn out at 200 us: copying 100 kB (100 us) is cheaper.
    for _ in 0..4 {
        m.observe(Strategy::Cbw, 100_000, Duration::from_micros(200));
    }
    assert_eq!(m.choose(100_000), Strategy::Copy, "{m:?}");
    // Before any cbw is measured, its calibrated cost is scaled by how much slower the
    // copies measured than their calibration: 50 us calibrated, copies 3x slower than
    // calibrated, so 150 us, against 100 kB copied at 1 ns/byte (100 us): copy (unscaled,
    // 50 us would have looked cheaper).
    let mut cold = CostModel::new(0.0, 1.0 / 3.0, 1e9).with_cbw(50_000.0);
    for _ in 0..4 {
        cold.observe(Strategy::Copy, 100_000, Duration::from_micros(100));
    }
    assert_eq!(cold.choose(100_000), Strategy::Copy, "{cold:?}");
    // A model without a cbw cost never chooses it.
    let mut plain = CostModel::new(0.0, 1.0, 1e9);
    assert_eq!(plain.choose(1 << 20), Strategy::Copy);
}

#[test]
fn one_preempted_copy_does_not_flip_the_choice() {
    // 2 MiB copies take ~210 us, forks 300 us.
    let mut m = CostModel::new(0.0, 0.1, 300_000.0);
    for _ in 0..4 {
        m.observe(Strategy::Fork, 2 << 20, Duration::from_micros(300));
    }
    for _ in 0..8 {
        m.observe(Strategy::Copy, 2 << 20, Duration::from_micros(210));
    }
    m.observe(Strategy::Copy, 2 << 20, Duration::from_micros(900));
    assert_eq!(m.choose(2 << 20), Strategy::Copy, "{m:?}");
    // Copies that stay slow do flip it.
    for _ in 0..4 {
        m.observe(Strategy::Copy, 2 << 20, Duration::from_micros(900));
    }
    assert_eq!(m.choose(2 << 20), Strategy::Fork, "{m:?}");
}

#[test]
fn the_model_copies_only_small_checkpoints_whose_alternatives_are_far_costlier() {
    // 1 us fixed + 0.1 ns/byte: a 4 KiB copy ~1.4 us.
    let far = CostModel::new(1_000.0, 0.1, 200_000.0).with_cbw(50_000.0);
    assert!(far.copies_only(4096));
    // An alternative within 1.5x may be tried: not only copies.
    assert!(!CostModel::new(1_000.0, 0.1, 2_000.0).copies_only(4096));
    assert!(
        !CostModel::new(1_000.0, 0.1, 200_000.0)
            .with_cbw(2_000.0)
            .copies_only(4096)
    );
    // 64 pages and up, a copy's time teaches the model its per-byte cost.
    assert!(far.copies_only(63 * 4096));
    assert!(!far.copies_only(64 * 4096));
}
