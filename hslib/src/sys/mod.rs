//! The only place in hslib that makes raw system calls and ioctls.
//!
//! Everything above this module works with safe wrappers; every `unsafe` block here says why
//! it is sound.

pub mod cow;
#[cfg(feature = "probe")]
pub mod cycles;
pub mod fd;
pub mod mman;
pub mod pagemap;
pub mod passfd;
pub mod process;
pub mod segv;
pub mod signal;
pub mod uffd;

/// The page size hslib tracks at. Checked against `sysconf(_SC_PAGESIZE)` by [`check_page_size`].
pub const PAGE_SIZE: usize = 4096;

/// Whether the running kernel uses [`PAGE_SIZE`] pages; trackers refuse to start otherwise.
pub fn check_page_size() -> Result<(), usize> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let got = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(got) {
        Ok(PAGE_SIZE) => Ok(()),
        Ok(other) => Err(other),
        Err(_) => Err(0),
    }
}
