//! The processor's time-stamp counter: a clock read that touches no memory, for
//! [`crate::probe`]'s marks inside a checkpoint (a `clock_gettime` reads the vDSO's data page,
//! which at a person's pace is itself a cold miss and would be counted in the step it marks).

/// The counter now, in the processor's ticks (x86-64); elsewhere nanoseconds of a monotonic
/// clock, which the probe's report converts alike.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: `rdtsc` reads a register; it has no memory effects or preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// See the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
pub fn now() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
