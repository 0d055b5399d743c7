//! Where `run` kills the primary: after the Nth input sent, for each N of `--kill-after`,
//! and K points drawn for `--kill-random K --kill-seed S` (the same S always gives the same
//! points for the same script length).

use std::collections::BTreeSet;

use tetris::rng::SplitMix64;

/// `k` distinct kill points in `1..=inputs`, drawn from `seed` (all of them when `k` is not
/// smaller than `inputs`).
pub fn random_points(k: u64, seed: u64, inputs: u64) -> BTreeSet<u64> {
    if k >= inputs {
        return (1..=inputs).collect();
    }
    // Floyd's algorithm: k draws, each adding one new point.
    let mut rng = SplitMix64::new(seed);
    let mut chosen = BTreeSet::new();
    for top in (inputs - k + 1)..=inputs {
        let t = 1 + rng.below(top);
        if !chosen.insert(t) {
            chosen.insert(top);
        }
    }
    chosen
}

/// The kill points of a run: `after` (any value; those beyond the script never come) and,
/// with `random = Some((k, seed))`, k points drawn over the script's `inputs`.
pub fn plan(after: &[u64], random: Option<(u64, u64)>, inputs: u64) -> BTreeSet<u64> {
    let mut points: BTreeSet<u64> = after.iter().copied().collect();
    if let Some((k, seed)) = random {
        points.extend(random_points(k, seed, inputs));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_points_are_distinct_in_range_and_repeatable() {
        for seed in 0..50 {
            let a = random_points(7, seed, 40);
            assert_eq!(a.len(), 7);
            assert!(a.iter().all(|&p| (1..=40).contains(&p)), "{a:?}");
            assert_eq!(a, random_points(7, seed, 40));
        }
        assert_ne!(random_points(7, 1, 1000), random_points(7, 2, 1000));
        assert_eq!(random_points(9, 3, 4), BTreeSet::from([1, 2, 3, 4]));
        assert!(random_points(3, 3, 0).is_empty());
    }

    #[test]
    fn every_point_can_be_drawn() {
        let mut seen = BTreeSet::new();
        for seed in 0..400 {
            seen.extend(random_points(2, seed, 10));
        }
        assert_eq!(seen, (1..=10).collect());
    }

    #[test]
    fn plan_merges_explicit_and_random_points() {
        let p = plan(&[5, 3, 5, 1000], Some((2, 9)), 20);
        assert!(p.contains(&3) && p.contains(&5) && p.contains(&1000));
        assert_eq!(p.len(), 5);
    }
}
