//! The piece generator: xoshiro256++ seeded by SplitMix64, its state kept in the game state.
//!
//! BSD deals pieces with `random() % 7`; the port keeps the generator state inside
//! [`GameState`](crate::state::GameState) so a restored game deals the same pieces. The
//! algorithm is bit-for-bit `rand_xoshiro`'s `Xoshiro256PlusPlus::seed_from_u64` + `next_u64`.

/// SplitMix64: a small, well-mixed generator whose whole state is one word. It seeds the
/// piece generator here, and draws the failover harness's kill points and test scripts.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Generator state for `seed`: four successive SplitMix64 outputs fill `s[0..4]`.
pub fn seed_state(seed: u64) -> [u64; 4] {
    let mut x = SplitMix64::new(seed);
    [x.next_u64(), x.next_u64(), x.next_u64(), x.next_u64()]
}

/// Next xoshiro256++ output; advances `s`.
pub fn next_u64(s: &mut [u64; 4]) -> u64 {
    let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    result
}

/// BSD's `randshape()`: a spawnable shape 0..7, `next_u64() % 7`.
pub fn randshape(s: &mut [u64; 4]) -> u8 {
    // The remainder is below 7, so the narrowing cannot lose anything.
    (next_u64(s) % 7) as u8
}

/// A seed drawn from the OS (`/dev/urandom`), for games started without `--seed`.
pub fn os_seed() -> std::io::Result<u64> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_42_gives_the_documented_first_outputs() {
        let mut s = seed_state(42);
        assert_eq!(next_u64(&mut s), 15_021_278_609_987_233_951);
        assert_eq!(next_u64(&mut s), 5_881_210_131_331_364_753);
    }

    #[test]
    fn randshape_is_next_u64_mod_7() {
        let mut a = seed_state(7);
        let mut b = a;
        for _ in 0..1000 {
            let want = next_u64(&mut b) % 7;
            assert_eq!(u64::from(randshape(&mut a)), want);
        }
    }
}
