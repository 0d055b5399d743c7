//! `PAGEMAP_SCAN` on `/proc/self/pagemap`: find the pages written since they were last
//! write-protected, and write-protect them again, in one ioctl.

use std::os::fd::{AsRawFd, OwnedFd};

use linux_raw_sys::general::{
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, page_region, pm_scan_arg,
};
use nix::errno::Errno;

use super::PAGE_SIZE;
use super::uffd::ioc;

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)` from `<linux/fs.h>`; linux-raw-sys
/// lacks the ioctl number.
const PAGEMAP_SCAN: u32 = ioc(3, b'f' as u32, 16, size_of::<pm_scan_arg>());

const _: () = assert!(size_of::<pm_scan_arg>() == 96);
const _: () = assert!(size_of::<page_region>() == 24);
const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);

/// How many runs one ioctl may return before we loop on `walk_end`.
const VEC_LEN: usize = 512;

/// An open `/proc/self/pagemap` with a reusable output vector.
#[derive(Debug)]
pub struct Pagemap {
    fd: OwnedFd,
    vec: Vec<page_region>,
}

impl Pagemap {
    /// Opens `/proc/self/pagemap` for `PAGEMAP_SCAN`.
    pub fn open() -> Result<Self, Errno> {
        let fd = nix::fcntl::open(
            "/proc/self/pagemap",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let empty = page_region {
            start: 0,
            end: 0,
            categories: 0,
        };
        Ok(Self {
            fd,
            vec: vec![empty; VEC_LEN],
        })
    }

    /// Reports every page of `[start, end)` written since it was last write-protected, as
    /// page-aligned `(run_start, run_end)` address pairs in ascending order, and write-protects
    /// those pages again (`PM_SCAN_WP_MATCHING`). Fails with `EPERM` (`PM_SCAN_CHECK_WPASYNC`)
    /// when part of the range is not registered with an async write-protect userfaultfd.
    pub fn scan_written_and_protect(
        &mut self,
        start: usize,
        end: usize,
        mut out: impl FnMut(usize, usize),
    ) -> Result<(), Errno> {
        let mut from = start as u64;
        let end = end as u64;
        while from < end {
            let mut arg = pm_scan_arg {
                size: size_of::<pm_scan_arg>() as u64,
                flags: u64::from(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC),
                start: from,
                end,
                walk_end: 0,
                vec: self.vec.as_mut_ptr() as u64,
                vec_len: self.vec.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: u64::from(PAGE_IS_WRITTEN),
                category_anyof_mask: 0,
                return_mask: u64::from(PAGE_IS_WRITTEN),
            };
            // SAFETY: PAGEMAP_SCAN reads one pm_scan_arg and writes it back (walk_end) plus at
            // most `vec_len` page_region entries into `vec`, which points at `self.vec`.
            // Write-protecting pages of a WP_ASYNC userfaultfd never blocks a later write.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::c_ulong::from(PAGEMAP_SCAN),
                    &raw mut arg,
                )
            };
            let filled = Errno::result(rc)?;
            let filled = usize::try_from(filled).map_err(|_| Errno::EOVERFLOW)?;
            for r in self.vec.iter().take(filled) {
                out(r.start as usize, r.end as usize);
            }
            if arg.walk_end <= from || !arg.walk_end.is_multiple_of(PAGE_SIZE as u64) {
                // The kernel must make progress; anything else would loop forever.
                return Err(Errno::EIO);
            }
            from = arg.walk_end;
        }
        Ok(())
    }
}
