//! The piece generator against its documented test vector and against `rand_xoshiro`.

use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use tetris::rng::{next_u64, randshape, seed_state};

#[test]
fn seed_42_test_vector() {
    let mut s = seed_state(42);
    assert_eq!(next_u64(&mut s), 15_021_278_609_987_233_951);
    assert_eq!(next_u64(&mut s), 5_881_210_131_331_364_753);
}

#[test]
fn seed_0_matches_rand_xoshiro() {
    let mut ours = seed_state(0);
    let mut theirs = Xoshiro256PlusPlus::seed_from_u64(0);
    for _ in 0..100 {
        assert_eq!(next_u64(&mut ours), theirs.next_u64());
    }
}

proptest! {
    #[test]
    fn matches_rand_xoshiro_for_any_seed(seed in any::<u64>()) {
        let mut ours = seed_state(seed);
        let mut theirs = Xoshiro256PlusPlus::seed_from_u64(seed);
        for _ in 0..64 {
            prop_assert_eq!(next_u64(&mut ours), theirs.next_u64());
        }
    }

    #[test]
    fn randshape_is_rand_xoshiro_mod_7(seed in any::<u64>()) {
        let mut ours = seed_state(seed);
        let mut theirs = Xoshiro256PlusPlus::seed_from_u64(seed);
        for _ in 0..64 {
            let shape = randshape(&mut ours);
            prop_assert!(shape < 7);
            prop_assert_eq!(u64::from(shape), theirs.next_u64() % 7);
        }
    }
}
