//! CRC-32C combination in time logarithmic in the length with a few hundred cheap steps:
//! `crc32c::crc32c_combine` squares 32x32 bit matrices and took ~20 us per call here, three
//! calls per checkpoint on each side of the stream (a sync checkpoint's round trip was
//! mostly this). The method is zlib's `crc32_combine` (multiplication modulo the polynomial
//! by `x^(8 * len)`, from a table of `x^(2^k)`), with CRC-32C's polynomial; the result is
//! the same as the crate's (tested against it).

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
    multmodp(x2nmodp(len2 as u64, 3), crc1) ^ crc2
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
        for len in [1usize << 20, 16 << 20, usize::MAX >> 8] {
            assert_eq!(
                combine(5, 9, len),
                crc32c::crc32c_combine(5, 9, len),
                "{len}"
            );
        }
    }
}
