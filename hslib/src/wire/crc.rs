//! CRC-32C combination in time logarithmic in the length with a few hundred cheap steps:
//! `crc32c::crc32c_combine` squares 32x32 bit matrices and took ~20 us per call here, three
//! calls per checkpoint on each side of the stream (a sync checkpoint's round trip was
//! mostly this). The method is zlib's `crc32_combine` (multiplication modulo the polynomial
//! by `x^(8 * len)`, from a table of `x^(2^k)`), with CRC-32C's polynomial; the result is
//! the same as the crate's (tested against it).

use std::sync::atomic::{AtomicU64, Ordering};

/// CRC-32C's polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the polynomial (reflected: bit 31 is `x^0`).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `x^(2^k)` modulo the polynomial, for every k a 64-bit length in bytes needs (3 + 64).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 67 {
        p = multmodp(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// `x^(n * 2^k)` modulo the polynomial.
fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `A ‖ B` from `crc1` (of `A`), `crc2` (of `B`) and `B`'s length.
pub fn combine(crc1: u32, crc2: u32, len2: usize) -> u32 {
    multmodp(factor(len2), crc1) ^ crc2
}

/// `x^(8 * len)` for the lengths met last, by length: a stream's frames come in a few
/// lengths (a one-page frame's, the metadata record's), and the factor is most of the work
/// of [`combine`]. Each entry packs a length (high half) and its factor; 0 is empty (length
/// 0 is not stored). Any thread may fill any entry: a load sees a whole entry or another.
static FACTORS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// `x^(8 * len)` modulo the polynomial.
fn factor(len: usize) -> u32 {
    let key = match u32::try_from(len) {
        Ok(0) => return 1 << 31,
        Ok(k) => k,
        Err(_) => return x2nmodp(len as u64, 3),
    };
    let slot = &FACTORS[(key.wrapping_mul(0x9E37_79B9) >> 28) as usize];
    let entry = slot.load(Ordering::Relaxed);
    if (entry >> 32) as u32 == key {
        return entry as u32;
    }
    let f = x2nmodp(u64::from(key), 3);
    slot.store((u64::from(key) << 32) | u64::from(f), Ordering::Relaxed);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_equals_the_crates_combine_and_the_crc_of_the_concatenation() {
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 3, 40, 4095, 4096, 4112, 8999, 9000] {
            let (a, b) = data.split_at(split);
            let (ca, cb) = (crc32c::crc32c(a), crc32c::crc32c(b));
            let want = crc32c::crc32c(&data);
            assert_eq!(combine(ca, cb, b.len()), want, "split {split}");
            assert_eq!(
                combine(ca, cb, b.len()),
                crc32c::crc32c_combine(ca, cb, b.len()),
                "split {split}"
            );
        }
        // Folding from 0, as the writer and the replica do.
        let mut acc = 0;
        for part in data.chunks(1000) {
            acc = combine(acc, crc32c::crc32c(part), part.len());
        }
        assert_eq!(
            acc,
            crc32c::crc32c_combine(0, crc32c::crc32c(&data), data.len())
        );
        // Twice over lengths that share the remembered factors' slots.
        for _ in 0..2 {
            for len in (1..600).chain([4112, 4112, 4111, 100, 4112]) {
                assert_eq!(
                    combine(0xdead_beef, 0x1234_5678, len),
                    crc32c::crc32c_combine(0xdead_beef, 0x1234_5678, len),
                    "{len}"
                );
            }
        }
        for len in [1usize << 20, 16 << 20, usize::MAX >> 8] {
            assert_eq!(
                combine(5, 9, len),
                crc32c::crc32c_combine(5, 9, len),
                "{len}"
            );
        }
    }
}
