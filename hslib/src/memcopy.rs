//! Copying page data between buffers whose relative alignment is not known.
//!
//! glibc's `memcpy` copies from about 2 KiB up with `rep movsb`, and on the AMD EPYC VMs this
//! project runs on that instruction is ~20x slower when the destination starts 1 to 31 bytes
//! past the source modulo 64: 4 KiB in 1.37 us instead of 0.07 us, 416 KiB in 143 us instead
//! of 10 us (`cargo bench -p hslib --bench copy`). The spare meets that distance by chance:
//! a checkpoint's pages come out of the read buffer at a frame offset (the page data is 56
//! bytes into a page frame), into a body and then into the image, all allocated by `malloc`.
//! The primary's sync path has the same lottery: it encodes a checkpoint's frames into one
//! buffer for one `write`, each page at the offset the frames before it leave ([`Gather`]).
//! Copied in pieces below the `rep movsb` threshold, the copy takes glibc's vector loop,
//! which is as fast at every distance (and as fast as `rep movsb` at its best one); on other
//! libcs and CPUs pieces of 2 KiB cost nothing measurable either.

/// The largest piece copied at once: below glibc's `rep movsb` threshold (2048 x vector
/// bytes / 16, or 2112 with fast short `rep movsb`).
const PIECE: usize = 2048;

/// Copies `src` into `dst` (same lengths), fast whatever the distance between them.
///
/// # Panics
/// If the lengths differ, as `copy_from_slice` does.
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy_bytes: destination and source lengths differ"
    );
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
    }
}

/// A `Vec<u8>` that frames are encoded into (`io::Write`): what it is given is appended in
/// pieces, as [`copy_bytes`] copies, so that a page's bytes land fast at whatever offset
/// the frames before them leave.
#[derive(Debug)]
pub struct Gather<'a>(pub &'a mut Vec<u8>);

impl std::io::Write for Gather<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.reserve(bytes.len());
        for piece in bytes.chunks(PIECE) {
            self.0.extend_from_slice(piece);
        }
        Ok(bytes.len())
    }

    fn write_vectored(&mut self, slices: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let mut n = 0;
        for s in slices {
            n += self.write(s)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_gathered_is_appended_whole_and_in_order() {
        use std::io::Write as _;
        let mut buf = b"head".to_vec();
        let big: Vec<u8> = (0..3 * PIECE + 5).map(|i| (i % 253) as u8).collect();
        let mut g = Gather(&mut buf);
        g.write_all(&big).expect("gather");
        let parts = [std::io::IoSlice::new(b"ta"), std::io::IoSlice::new(b"il")];
        assert_eq!(
            g.write_vectored(&parts).expect("gather"),
            4,
            "every slice at once"
        );
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..4 + big.len()], &big[..]);
        assert_eq!(&buf[4 + big.len()..], b"tail");
    }

    #[test]
    fn every_byte_arrives_at_every_length_and_distance() {
        let src: Vec<u8> = (0..3 * PIECE + 100)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        for len in [
            0,
            1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            2 * PIECE + 16,
            3 * PIECE + 99,
        ] {
            for shift in [0, 1, 16, 40, 63] {
                let mut dst = vec![0u8; len + 64];
                copy_bytes(&mut dst[shift..shift + len], &src[1..=len]);
                assert_eq!(
                    &dst[shift..shift + len],
                    &src[1..=len],
                    "len {len} shift {shift}"
                );
                assert!(dst[..shift].iter().all(|&b| b == 0), "nothing before");
                assert!(dst[shift + len..].iter().all(|&b| b == 0), "nothing after");
            }
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn buffers_of_different_lengths_are_refused() {
        copy_bytes(&mut [0u8; 3], &[1u8; 4]);
    }
}
