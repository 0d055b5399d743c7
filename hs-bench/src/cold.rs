//! `hs-bench cold`: what a short path pays for running cold, the bound of a lazy checkpoint
//! at a person's pace.
//!
//! A lazy checkpoint makes no system call: at a person's pace its cost is the code and data
//! it touches, each line found cold 50 ms after the last checkpoint. This measures, after
//! the same pause, what one such line costs on this machine:
//!
//! - **code line**: 128 cache lines of straight-line code (one `add` and no-ops each) run
//!   cold, per line, and the same run again warm;
//! - **page**: a load that depends on the one before, each from a page not touched since
//!   the pause (the translation and the line both missed);
//! - **line**: the same, each from another line of a page the first chain just touched;
//! - **copy**: 4 KiB copied from a page just written (the application's state) into a
//!   page-aligned buffer not touched since the pause (a staging buffer).
//!
//! Multiplied by a path's footprint (its lines of code, its pages and lines of data,
//! counted with `valgrind --tool=lackey`: see `docs/perf/fastpath.md`), these give what the
//! path cannot go below without touching less.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::floors::{Floor, FloorError, pause, summarise};
use crate::pages::{PAGE, PageBuf};

/// Lines of code in [`code::straight`].
pub const CODE_LINES: usize = 128;
/// Pages (and lines) each load chain visits.
const CHAIN: usize = 16;
/// The line of each page the second chain loads from (far from the first's line 0, so no
/// adjacent-line prefetch brings it in with the first).
const SECOND_LINE: usize = 1024;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct ColdOptions {
    /// The pause before each measurement (50 ms: a person's pace).
    pub gap: Duration,
    /// Measurements.
    pub samples: usize,
}

/// The costs, in nanoseconds per line, per page or per copy.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Cold {
    /// One line of straight-line code run cold, p50 and p99 over the samples.
    pub code_line_ns: Costs,
    /// The same lines run again at once (warm).
    pub code_line_warm_ns: Costs,
    /// A dependent load from a page not touched since the pause.
    pub page_ns: Costs,
    /// A dependent load from another line of a page just touched.
    pub line_ns: Costs,
    /// 4 KiB copied into a page-aligned buffer not touched since the pause.
    pub copy_4k_ns: Costs,
    /// The pause, microseconds.
    pub gap_us: u64,
    /// Measurements.
    pub samples: usize,
}

/// The median and 99th percentile of one cost, nanoseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Costs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Costs {
    /// `floor` (microseconds per measurement) divided among `per` items, in nanoseconds.
    fn per(floor: Floor, per: usize) -> Self {
        let each = |us: f64| (us * 1e3 / per as f64 * 10.0).round() / 10.0;
        Self {
            p50: each(floor.p50_us),
            p99: each(floor.p99_us),
        }
    }
}

/// Measures the costs, `opts.samples` times each, `opts.gap` apart.
pub fn measure(opts: &ColdOptions) -> Result<Cold, FloorError> {
    if opts.samples == 0 {
        return Err(FloorError::Options("--samples must be > 0".to_owned()));
    }
    let mut cold = Vec::with_capacity(opts.samples);
    let mut warm = Vec::with_capacity(opts.samples);
    let mut pages = Vec::with_capacity(opts.samples);
    let mut lines = Vec::with_capacity(opts.samples);
    let mut copies = Vec::with_capacity(opts.samples);
    // Every other page, so no two pages of a chain are neighbours.
    let mut chained = PageBuf::filled(2 * CHAIN * PAGE, 0);
    link_chain(&mut chained, 0);
    link_chain(&mut chained, SECOND_LINE);
    let mut state = PageBuf::filled(PAGE, 1);
    let mut staging = PageBuf::filled(PAGE, 2);
    // The first round warms what the timing itself runs; not counted.
    for i in 0..=opts.samples {
        pause(opts.gap);
        // The clock's own code and data, warmed outside the measurement.
        let _ = Instant::now();
        let t = Instant::now();
        std::hint::black_box(code::straight());
        let first = t.elapsed();
        let t = Instant::now();
        std::hint::black_box(code::straight());
        let again = t.elapsed();
        let t = Instant::now();
        let end = walk(&chained, 0);
        let paged = t.elapsed();
        let t = Instant::now();
        let end2 = walk(&chained, SECOND_LINE);
        let lined = t.elapsed();
        std::hint::black_box((end, end2));
        // The application's state, written just before its checkpoint.
        state.fill(i as u8);
        let t = Instant::now();
        staging.copy_from_slice(&state);
        std::hint::black_box(&mut staging);
        let copied = t.elapsed();
        if i > 0 {
            cold.push(first);
            warm.push(again);
            pages.push(paged);
            lines.push(lined);
            copies.push(copied);
        }
    }
    Ok(Cold {
        code_line_ns: Costs::per(summarise(&mut cold), CODE_LINES),
        code_line_warm_ns: Costs::per(summarise(&mut warm), CODE_LINES),
        page_ns: Costs::per(summarise(&mut pages), CHAIN),
        line_ns: Costs::per(summarise(&mut lines), CHAIN),
        copy_4k_ns: Costs::per(summarise(&mut copies), 1),
        gap_us: u64::try_from(opts.gap.as_micros()).unwrap_or(u64::MAX),
        samples: opts.samples,
    })
}

/// Writes a chain through every other page of `buf` at byte `line` of each page: the word
/// there holds the offset of the next hop (the last one's holds `usize::MAX`).
fn link_chain(buf: &mut PageBuf, line: usize) {
    let hops: Vec<usize> = (0..CHAIN).map(|k| 2 * k * PAGE + line).collect();
    for (k, &at) in hops.iter().enumerate() {
        let next = hops.get(k + 1).copied().unwrap_or(usize::MAX);
        buf[at..at + 8].copy_from_slice(&(next as u64).to_ne_bytes());
    }
}

/// Follows the chain that starts at byte `line` of the first page: each load's address
/// comes from the one before, so none starts before the last one ends. Returns the hops.
fn walk(buf: &PageBuf, line: usize) -> usize {
    let mut at = line;
    let mut hops = 0;
    while let Some(word) = at.checked_add(8).and_then(|end| buf.get(at..end)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        at = usize::try_from(u64::from_ne_bytes(bytes)).unwrap_or(usize::MAX);
        hops += 1;
    }
    hops
}

impl Cold {
    /// A table for people.
    pub fn report(&self) -> String {
        let row = |name: &str, c: &Costs, what: &str| {
            format!(
                "{name:<16} p50 {:>8.1} ns  p99 {:>8.1} ns  ({what})\n",
                c.p50, c.p99
            )
        };
        let mut s = format!(
            "cold costs, {} us after the last touch ({} samples)\n",
            self.gap_us, self.samples
        );
        s += &row(
            "code line",
            &self.code_line_ns,
            &format!("each of {CODE_LINES} lines of straight-line code"),
        );
        s += &row("code line, warm", &self.code_line_warm_ns, "the same again");
        s += &row(
            "page",
            &self.page_ns,
            "a dependent load from an untouched page",
        );
        s += &row(
            "line",
            &self.line_ns,
            "a dependent load from another line of a touched page",
        );
        s += &row(
            "copy 4 KiB",
            &self.copy_4k_ns,
            "into a page-aligned buffer not touched since",
        );
        s
    }
}

/// The straight-line code: the only `unsafe` in hs-bench.
mod code {
    /// Runs [`super::CODE_LINES`] cache lines of straight-line code, each one `add` to a
    /// counter and no-ops, and returns the counter ([`super::CODE_LINES`] on x86-64; 0
    /// elsewhere, where nothing runs).
    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    pub fn straight() -> u32 {
        let mut n: u32 = 0;
        // SAFETY: the block adds 1 to `eax` 128 times between multi-byte no-ops: it reads
        // and writes no memory, does not touch the stack, and changes only `eax` (declared)
        // and the flags (which `asm!` assumes clobbered unless told otherwise). Each
        // repetition is 64 bytes: `add eax, 1` (83 C0 01, 3 bytes), seven 8-byte no-ops
        // (0F 1F 84 00 00 00 00 00) and one 5-byte no-op (0F 1F 44 00 00); the first starts
        // on a 64-byte boundary, so each fills one cache line.
        unsafe {
            std::arch::asm!(
                ".p2align 6",
                ".rept 128",
                ".byte 0x83, 0xc0, 0x01",
                ".rept 7",
                ".byte 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00",
                ".endr",
                ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                ".endr",
                inout("eax") n,
                options(nomem, nostack),
            );
        }
        n
    }

    /// See the x86-64 version.
    #[cfg(not(target_arch = "x86_64"))]
    pub fn straight() -> u32 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_straight_code_runs_one_add_per_line() {
        assert_eq!(code::straight() as usize, CODE_LINES);
    }

    #[test]
    fn each_chain_visits_every_other_page_once_at_its_own_line() {
        let mut buf = PageBuf::filled(2 * CHAIN * PAGE, 0);
        link_chain(&mut buf, 0);
        link_chain(&mut buf, SECOND_LINE);
        assert_eq!(walk(&buf, 0), CHAIN);
        assert_eq!(walk(&buf, SECOND_LINE), CHAIN);
        // The two chains do not share a word, and no hop lands on an odd page.
        let mut at = SECOND_LINE;
        while at != usize::MAX {
            assert_eq!(at % PAGE, SECOND_LINE, "hop at {at}");
            assert_eq!((at / PAGE) % 2, 0, "hop at {at}");
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[at..at + 8]);
            at = u64::from_ne_bytes(w) as usize;
        }
    }

    #[test]
    fn costs_are_shared_among_the_items_measured_together() {
        let floor = Floor {
            p50_us: 3.2,
            p99_us: 6.4,
            samples: 5,
        };
        assert_eq!(
            Costs::per(floor, 128),
            Costs {
                p50: 25.0,
                p99: 50.0
            }
        );
    }

    #[test]
    fn the_json_names_every_cost() {
        let cold = measure(&ColdOptions {
            gap: Duration::ZERO,
            samples: 3,
        })
        .expect("measure");
        assert_eq!(cold.samples, 3);
        let json = serde_json::to_string(&cold).expect("json");
        for key in [
            "code_line_ns",
            "code_line_warm_ns",
            "page_ns",
            "line_ns",
            "copy_4k_ns",
            "gap_us",
        ] {
            assert!(json.contains(&format!("\"{key}\"")), "{key} in {json}");
        }
    }
}
