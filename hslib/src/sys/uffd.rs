//! userfaultfd: creating one, negotiating features, registering and write-protecting ranges.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use linux_raw_sys::general::{
    __NR_userfaultfd, _UFFDIO_API, _UFFDIO_REGISTER, _UFFDIO_UNREGISTER, _UFFDIO_WRITEPROTECT,
    UFFD_API, UFFD_USER_MODE_ONLY, UFFDIO_REGISTER_MODE_WP, USERFAULTFD_IOC, uffdio_api,
    uffdio_range, uffdio_register, uffdio_writeprotect,
};
use linux_raw_sys::ioctl::{UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT};
use nix::errno::Errno;

pub use linux_raw_sys::general::{UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED};

/// `UFFDIO_WRITEPROTECT_MODE_WP` from `<linux/userfaultfd.h>`; linux-raw-sys lacks it.
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;

/// `USERFAULTFD_IOC_NEW` = `_IO(USERFAULTFD_IOC, 0x00)` from `<linux/userfaultfd.h>`.
const USERFAULTFD_IOC_NEW: u32 = ioc(0, USERFAULTFD_IOC, 0x00, 0);

/// The `_IOC` macro of `<asm-generic/ioctl.h>` (x86_64, aarch64, riscv64 layout).
pub(crate) const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const IOC_READ: u32 = 2;
const IOC_WRITE: u32 = 1;

// The ioctl numbers we take from linux-raw-sys must match the struct layouts we pass.
const _: () = assert!(size_of::<uffdio_api>() == 24);
const _: () = assert!(size_of::<uffdio_range>() == 16);
const _: () = assert!(size_of::<uffdio_register>() == 32);
const _: () = assert!(size_of::<uffdio_writeprotect>() == 24);
const _: () = assert!(
    UFFDIO_API
        == ioc(
            IOC_READ | IOC_WRITE,
            USERFAULTFD_IOC,
            _UFFDIO_API,
            size_of::<uffdio_api>()
        )
);
const _: () = assert!(
    UFFDIO_REGISTER
        == ioc(
            IOC_READ | IOC_WRITE,
            USERFAULTFD_IOC,
            _UFFDIO_REGISTER,
            size_of::<uffdio_register>()
        )
);
const _: () = assert!(
    UFFDIO_UNREGISTER
        == ioc(
            IOC_READ,
            USERFAULTFD_IOC,
            _UFFDIO_UNREGISTER,
            size_of::<uffdio_range>()
        )
);
const _: () = assert!(
    UFFDIO_WRITEPROTECT
        == ioc(
            IOC_READ | IOC_WRITE,
            USERFAULTFD_IOC,
            _UFFDIO_WRITEPROTECT,
            size_of::<uffdio_writeprotect>()
        )
);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xAA00);

/// How a userfaultfd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `userfaultfd(2)` system call with `UFFD_USER_MODE_ONLY`.
    Syscall,
    /// `/dev/userfaultfd` with `USERFAULTFD_IOC_NEW`, used when the system call is refused.
    Device,
}

/// Why no userfaultfd could be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError {
    /// The error of the `userfaultfd(2)` system call.
    pub syscall: Errno,
    /// The error of opening `/dev/userfaultfd` or its `USERFAULTFD_IOC_NEW` ioctl.
    pub device: Errno,
}

/// An open userfaultfd. Closing it drops every write protection it installed.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    source: Source,
}

impl Uffd {
    /// Creates a userfaultfd that handles user-mode faults only (which is what an unprivileged
    /// process may create when `vm.unprivileged_userfaultfd` is 0), close-on-exec, non-blocking.
    pub fn open() -> Result<Self, OpenError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY as libc::c_int;
        // SAFETY: userfaultfd takes only a flags integer and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::c_long::from(__NR_userfaultfd), flags) };
        let syscall = match Errno::result(raw) {
            Ok(fd) => return Ok(Self::own(fd, Source::Syscall)),
            Err(e) => e,
        };
        match Self::open_device(flags) {
            Ok(fd) => Ok(Self::own(libc::c_long::from(fd), Source::Device)),
            Err(device) => Err(OpenError { syscall, device }),
        }
    }

    fn own(raw: libc::c_long, source: Source) -> Self {
        // The kernel returns descriptors that fit in c_int.
        let raw = raw as libc::c_int;
        // SAFETY: `raw` is a descriptor the kernel just returned to us and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Self { fd, source }
    }

    fn open_device(flags: libc::c_int) -> Result<libc::c_int, Errno> {
        let dev = nix::fcntl::open(
            "/dev/userfaultfd",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags by value.
        let raw = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                libc::c_ulong::from(USERFAULTFD_IOC_NEW),
                flags,
            )
        };
        Errno::result(raw)
    }

    /// How this descriptor was obtained.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Performs the `UFFDIO_API` handshake requesting `features`; returns the features the
    /// kernel supports. Fails with `EINVAL` when a requested feature is unsupported.
    pub fn api(&self, features: u32) -> Result<u64, Errno> {
        let mut arg = uffdio_api {
            api: u64::from(UFFD_API),
            features: u64::from(features),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes exactly one uffdio_api, which `arg` is.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(UFFDIO_API),
                &raw mut arg,
            )
        };
        Errno::result(rc)?;
        Ok(arg.features)
    }

    /// Registers `[start, start + len)` for write-protect tracking (`UFFDIO_REGISTER_MODE_WP`).
    pub fn register_wp(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut arg = uffdio_register {
            range: range(start, len),
            mode: u64::from(UFFDIO_REGISTER_MODE_WP),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes exactly one uffdio_register. Registration
        // changes fault handling of the range, never its contents.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(UFFDIO_REGISTER),
                &raw mut arg,
            )
        };
        Errno::result(rc).map(drop)
    }

    /// Unregisters `[start, start + len)`, dropping its write protection.
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut arg = range(start, len);
        // SAFETY: UFFDIO_UNREGISTER reads exactly one uffdio_range.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(UFFDIO_UNREGISTER),
                &raw mut arg,
            )
        };
        Errno::result(rc).map(drop)
    }

    /// Sets (`protect`) or clears the write protection of `[start, start + len)`.
    pub fn writeprotect(&self, start: usize, len: usize, protect: bool) -> Result<(), Errno> {
        let mut arg = uffdio_writeprotect {
            range: range(start, len),
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads exactly one uffdio_writeprotect; in WP_ASYNC mode
        // a write to a protected page is resolved by the kernel, so no thread can block.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::c_ulong::from(UFFDIO_WRITEPROTECT),
                &raw mut arg,
            )
        };
        Errno::result(rc).map(drop)
    }
}

fn range(start: usize, len: usize) -> uffdio_range {
    uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}
