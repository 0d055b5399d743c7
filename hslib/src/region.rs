//! Checkpoint memory: page-aligned anonymous mappings at addresses that another process of
//! the same binary can map too, so pointers inside a region stay valid after a restore; and
//! a bump allocator placing plain-old-data values in a region, whose header also records
//! the region's root value so that a restored process finds it again without knowing where it
//! lies ([`Region::place`], [`Region::root`]).

use std::marker::PhantomData;

use nix::errno::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::sys::PAGE_SIZE;
use crate::sys::mman;

/// Where derived region addresses start: far above the heap and executable, far below the
/// kernel's default mmap base, so the range is free in every process of the binary.
pub const DERIVED_BASE: usize = 0x2000_0000_0000;
/// Address distance between regions of consecutive ids, and the largest derived-address
/// region (4 GiB; a multiple of the 2 MiB huge page size).
pub const DERIVED_STRIDE: usize = 1 << 32;
/// Ids from 0 up to (not including) this have a derived address.
pub const DERIVED_IDS: u32 = 4096;

/// Identifies a region; the same id maps to the same derived address in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u32);

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What went wrong with a region.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RegionError {
    /// The length is zero or not a multiple of the page size.
    #[error("region {id}: length {len} is not a positive multiple of the page size {PAGE_SIZE}")]
    BadLength {
        /// The region.
        id: RegionId,
        /// The length asked for.
        len: usize,
    },
    /// The address is zero or not page aligned.
    #[error("region {id}: address {addr:#x} is not a non-zero multiple of the page size")]
    BadAddress {
        /// The region.
        id: RegionId,
        /// The address asked for.
        addr: usize,
    },
    /// The id has no derived address.
    #[error("region {id}: ids at or above {DERIVED_IDS} have no derived address; give one")]
    IdOutOfRange {
        /// The region.
        id: RegionId,
    },
    /// The region is larger than the spacing of derived addresses.
    #[error("region {id}: {len} bytes exceed the {DERIVED_STRIDE}-byte limit of derived addresses")]
    TooLarge {
        /// The region.
        id: RegionId,
        /// The length asked for.
        len: usize,
    },
    /// Something is already mapped in the range.
    #[error("region {id}: address range {addr:#x}..{end:#x} is already in use", end = addr + len)]
    AddressTaken {
        /// The region.
        id: RegionId,
        /// The address asked for.
        addr: usize,
        /// The length asked for.
        len: usize,
    },
    /// `mmap` failed for another reason.
    #[error("region {id}: mmap of {len} bytes at {addr:#x} failed: {}", os_error(*code))]
    Map {
        /// The region.
        id: RegionId,
        /// The address asked for.
        addr: usize,
        /// The length asked for.
        len: usize,
        /// The OS error number (`errno`).
        code: i32,
    },
    /// `madvise` failed.
    #[error("region {id}: madvise({advice}) failed: {}", os_error(*code))]
    Advise {
        /// The region.
        id: RegionId,
        /// The advice given.
        advice: &'static str,
        /// The OS error number (`errno`).
        code: i32,
    },
    /// The region has no root value yet ([`Region::place`] puts one there).
    #[error("region {id} holds no root value")]
    NoRoot {
        /// The region.
        id: RegionId,
    },
    /// The region's root value is of another type than asked for.
    #[error("region {id}: its root value is not a {want} ({size} bytes)")]
    RootType {
        /// The region.
        id: RegionId,
        /// The type asked for.
        want: &'static str,
        /// That type's size.
        size: usize,
    },
    /// The allocator has no room left.
    #[error("region {id}: no room for {size} bytes aligned to {align} ({used} of {len} used)")]
    OutOfSpace {
        /// The region.
        id: RegionId,
        /// Size of the value.
        size: usize,
        /// Alignment of the value.
        align: usize,
        /// Bytes already allocated, including the header.
        used: usize,
        /// The region's length.
        len: usize,
    },
    /// A slot does not describe an in-bounds, aligned value.
    #[error("region {id}: no {size}-byte value aligned to {align} at offset {offset}")]
    BadSlot {
        /// The region.
        id: RegionId,
        /// The slot's offset.
        offset: usize,
        /// Size of the value.
        size: usize,
        /// Alignment of the value.
        align: usize,
    },
    /// The region's first bytes are not an allocator header.
    #[error("region {id}: the allocator header is corrupt (magic {magic:#x}, next {next})")]
    BadHeader {
        /// The region.
        id: RegionId,
        /// The magic found.
        magic: u64,
        /// The next-free offset found.
        next: u64,
    },
}

/// A page-aligned private anonymous mapping, unmapped on drop.
///
/// Unregister a region from its tracker before dropping it.
#[derive(Debug)]
pub struct Region {
    id: RegionId,
    base: usize,
    len: usize,
}

impl Region {
    /// The address a region with this id is mapped at by [`Region::map`].
    pub fn derived_address(id: RegionId) -> Result<usize, RegionError> {
        if id.0 >= DERIVED_IDS {
            return Err(RegionError::IdOutOfRange { id });
        }
        Ok(DERIVED_BASE + id.0 as usize * DERIVED_STRIDE)
    }

    /// Maps `len` zeroed bytes at the address derived from `id`.
    pub fn map(id: RegionId, len: usize) -> Result<Self, RegionError> {
        if len > DERIVED_STRIDE {
            return Err(RegionError::TooLarge { id, len });
        }
        Self::map_at(id, Self::derived_address(id)?, len)
    }

    /// Maps `len` zeroed bytes at exactly `addr`; fails with [`RegionError::AddressTaken`]
    /// when anything is mapped there already.
    pub fn map_at(id: RegionId, addr: usize, len: usize) -> Result<Self, RegionError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::BadLength { id, len });
        }
        if addr == 0 || !addr.is_multiple_of(PAGE_SIZE) || addr.checked_add(len).is_none() {
            return Err(RegionError::BadAddress { id, addr });
        }
        match mman::map_fixed_noreplace(addr, len) {
            Ok(()) => Ok(Self {
                id,
                base: addr,
                len,
            }),
            Err(Errno::EEXIST) => Err(RegionError::AddressTaken { id, addr, len }),
            Err(errno) => Err(RegionError::Map {
                id,
                addr,
                len,
                code: errno as i32,
            }),
        }
    }

    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The address of the first byte.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are at least one page long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The length in pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// The whole region as bytes, for copying out.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for `len` bytes while `self` lives, and writes
        // through Rust need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len) }
    }

    /// The whole region as mutable bytes, for writing in (tracked by the active tracker).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is writable for `len` bytes while `self` lives (a tracker's
        // write protection is resolved on fault), and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len) }
    }

    /// Asks for transparent huge pages (`true`) or forbids them (`false`) for this region.
    pub fn set_huge_pages(&self, on: bool) -> Result<(), RegionError> {
        let advice = if on {
            mman::Advice::HugePage
        } else {
            mman::Advice::NoHugePage
        };
        mman::advise(self.base, self.len, advice).map_err(|errno| RegionError::Advise {
            id: self.id,
            advice: if on {
                "MADV_HUGEPAGE"
            } else {
                "MADV_NOHUGEPAGE"
            },
            code: errno as i32,
        })
    }

    /// Zeroes `[offset, offset + len)` with `MADV_DONTNEED`, returning the memory to the
    /// kernel, without telling any tracker: on a tracked region the zeroing may go unreported
    /// (use [`crate::Context::discard`] or [`crate::Tracker::discard`] there).
    pub fn discard_untracked(&mut self, offset: usize, len: usize) -> Result<(), std::io::Error> {
        Ok(self.discard(offset, len)?)
    }

    /// [`Region::discard_untracked`], for the trackers (which count the pages as written).
    pub(crate) fn discard(&mut self, offset: usize, len: usize) -> Result<(), Errno> {
        let in_range = offset.checked_add(len).is_some_and(|e| e <= self.len);
        if !in_range || !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: `&mut self` proves no reference into the region is alive; every value the
        // region holds is plain old data, for which zero bytes are valid.
        unsafe { mman::discard(self.base + offset, len) }
    }

    /// Places `value` in the region with the bump allocator and returns where it is.
    ///
    /// The allocator's state (a 16-byte header at offset 0) lives in the region itself, so a
    /// region copied into another process continues allocating where the original stopped.
    pub fn alloc<T>(&mut self, value: T) -> Result<Slot<T>, RegionError>
    where
        T: FromBytes + IntoBytes + KnownLayout + Immutable,
    {
        let id = self.id;
        let len = self.len;
        let header = self.header_mut()?;
        let used = header.next as usize;
        let (size, align) = (size_of::<T>(), align_of::<T>());
        let offset = used.next_multiple_of(align);
        let end = offset.checked_add(size).filter(|&e| e <= len);
        let Some(end) = end else {
            return Err(RegionError::OutOfSpace {
                id,
                size,
                align,
                used,
                len,
            });
        };
        header.next = end as u64;
        let slot = Slot::at(offset);
        *self.get_mut(slot)? = value;
        Ok(slot)
    }

    /// Places `value` with [`Region::alloc`] and records it as the region's root, which
    /// [`Region::root`] finds again in any process the region is restored in. A region has one
    /// root; placing another replaces it (the old value stays allocated).
    pub fn place<T>(&mut self, value: T) -> Result<Slot<T>, RegionError>
    where
        T: FromBytes + IntoBytes + KnownLayout + Immutable,
    {
        let slot = self.alloc(value)?;
        let header = self.header_mut()?;
        header.root = slot.offset as u64;
        header.root_type = type_tag::<T>();
        Ok(slot)
    }

    /// The slot of the root value [`Region::place`] recorded, checked to be a `T` (by its
    /// type name and size, the same in every process of the binary).
    pub fn root<T>(&self) -> Result<Slot<T>, RegionError>
    where
        T: FromBytes + KnownLayout + Immutable,
    {
        let bytes = &self.as_bytes()[..size_of::<Header>()];
        let h = Header::ref_from_bytes(bytes).map_err(|_| self.bad_header(0, 0))?;
        if h.magic != HEADER_MAGIC || h.root == 0 {
            return Err(RegionError::NoRoot { id: self.id });
        }
        if h.root_type != type_tag::<T>() {
            return Err(RegionError::RootType {
                id: self.id,
                want: std::any::type_name::<T>(),
                size: size_of::<T>(),
            });
        }
        let slot = Slot::at(h.root as usize);
        self.get(slot)?;
        Ok(slot)
    }

    /// Where the first value of type `T` placed in a fresh region lands: for tools that look
    /// at another process's memory (`/proc/PID/mem`), which cannot call [`Region::root`].
    pub fn first_offset<T>() -> usize {
        size_of::<Header>().next_multiple_of(align_of::<T>())
    }

    /// Bytes allocated so far by [`Region::alloc`], including the header.
    pub fn allocated(&self) -> Result<usize, RegionError> {
        let bytes = &self.as_bytes()[..size_of::<Header>()];
        let h = Header::ref_from_bytes(bytes).map_err(|_| self.bad_header(0, 0))?;
        match h.magic {
            0 if h.next == 0 => Ok(size_of::<Header>()),
            HEADER_MAGIC => Ok(h.next as usize),
            _ => Err(self.bad_header(h.magic, h.next)),
        }
    }

    fn header_mut(&mut self) -> Result<&mut Header, RegionError> {
        let (id, len) = (self.id, self.len);
        let bytes = &mut self.as_bytes_mut()[..size_of::<Header>()];
        let h = Header::mut_from_bytes(bytes).map_err(|_| RegionError::BadHeader {
            id,
            magic: 0,
            next: 0,
        })?;
        if h.magic == 0 && h.next == 0 {
            h.magic = HEADER_MAGIC;
            h.next = size_of::<Header>() as u64;
            h.root = 0;
            h.root_type = 0;
        }
        if h.magic != HEADER_MAGIC
            || (h.next as usize) < size_of::<Header>()
            || h.next as usize > len
        {
            return Err(RegionError::BadHeader {
                id,
                magic: h.magic,
                next: h.next,
            });
        }
        Ok(h)
    }

    fn bad_header(&self, magic: u64, next: u64) -> RegionError {
        RegionError::BadHeader {
            id: self.id,
            magic,
            next,
        }
    }

    /// The value at `slot`.
    pub fn get<T>(&self, slot: Slot<T>) -> Result<&T, RegionError>
    where
        T: FromBytes + KnownLayout + Immutable,
    {
        let err = self.bad_slot::<T>(slot.offset);
        let bytes = self
            .as_bytes()
            .get(slot.offset..slot.offset.saturating_add(size_of::<T>()))
            .ok_or(err.clone())?;
        T::ref_from_bytes(bytes).map_err(|_| err)
    }

    /// The value at `slot`, mutably.
    pub fn get_mut<T>(&mut self, slot: Slot<T>) -> Result<&mut T, RegionError>
    where
        T: FromBytes + IntoBytes + KnownLayout,
    {
        let err = self.bad_slot::<T>(slot.offset);
        let bytes = self
            .as_bytes_mut()
            .get_mut(slot.offset..slot.offset.saturating_add(size_of::<T>()))
            .ok_or(err.clone())?;
        T::mut_from_bytes(bytes).map_err(|_| err)
    }

    /// The address of the value at `slot`, for storing pointers inside the region.
    pub fn addr_of<T>(&self, slot: Slot<T>) -> usize {
        self.base + slot.offset
    }

    /// The slot of a value at address `addr` inside this region.
    pub fn slot_at<T>(&self, addr: usize) -> Result<Slot<T>, RegionError> {
        let offset = addr.wrapping_sub(self.base);
        if addr < self.base || offset + size_of::<T>() > self.len {
            return Err(self.bad_slot::<T>(offset));
        }
        Ok(Slot::at(offset))
    }

    fn bad_slot<T>(&self, offset: usize) -> RegionError {
        RegionError::BadSlot {
            id: self.id,
            offset,
            size: size_of::<T>(),
            align: align_of::<T>(),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region owns its mapping and borrows of it cannot outlive `self`.
        if let Err(e) = unsafe { mman::unmap(self.base, self.len) } {
            tracing::warn!(region = self.id.0, error = %e, "munmap of region failed");
        }
    }
}

const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"HSREGION");

/// The bump allocator's state at offset 0 of a region that uses [`Region::alloc`].
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Header {
    magic: u64,
    next: u64,
    /// The root value's offset; 0 when there is none (offset 0 is the header).
    root: u64,
    /// [`type_tag`] of the root value's type.
    root_type: u64,
}

/// A tag for `T`: FNV-1a of its type name and size. Every process of one binary computes the
/// same; a root placed as one type is not read back as another by mistake.
fn type_tag<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let size = (size_of::<T>() as u64).to_le_bytes();
    for &b in std::any::type_name::<T>().as_bytes().iter().chain(&size) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The text of OS error number `code`.
fn os_error(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

/// Where a value of type `T` sits in a region (an offset, valid in every process).
pub struct Slot<T> {
    offset: usize,
    _type: PhantomData<fn() -> T>,
}

// By hand: derives would demand the same traits of `T`, which a slot never touches.
impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.offset)
    }
}

impl<T> PartialEq for Slot<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}

impl<T> Eq for Slot<T> {}

impl<T> std::hash::Hash for Slot<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.offset.hash(state);
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slot<T> {}

impl<T> Slot<T> {
    /// A slot at byte `offset`; [`Region::get`] checks bounds and alignment.
    pub fn at(offset: usize) -> Self {
        Self {
            offset,
            _type: PhantomData,
        }
    }

    /// The byte offset from the region's base.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Debug, PartialEq, Clone, Copy)]
    #[repr(C)]
    struct Pair {
        a: u32,
        b: u32,
    }

    #[test]
    fn alloc_places_aligned_values_that_read_back_and_refuses_when_full() {
        let mut r = Region::map(RegionId(4000), PAGE_SIZE).expect("map");
        let x = r.alloc(7u8).expect("u8");
        let p = r.alloc(Pair { a: 1, b: 2 }).expect("pair");
        let q = r.alloc(0x1122_3344_5566_7788u64).expect("u64");
        assert_eq!(p.offset() % 4, 0);
        assert_eq!(q.offset() % 8, 0);
        assert_eq!(*r.get(x).expect("get"), 7);
        assert_eq!(*r.get(p).expect("get"), Pair { a: 1, b: 2 });
        r.get_mut(p).expect("get_mut").b = 9;
        assert_eq!(r.get(p).expect("get").b, 9);
        assert_eq!(*r.get(q).expect("get"), 0x1122_3344_5566_7788);
        assert_eq!(r.allocated().expect("allocated"), q.offset() + 8);
        let big = r.alloc([0u8; PAGE_SIZE]);
        assert!(
            matches!(big, Err(RegionError::OutOfSpace { .. })),
            "{big:?}"
        );
        assert!(r.get(Slot::<u64>::at(PAGE_SIZE - 4)).is_err());
        assert!(
            r.get(Slot::<u64>::at(3)).is_err(),
            "misaligned slot must be refused"
        );
    }

    #[test]
    fn mapping_over_a_taken_address_fails_with_address_taken() {
        let r = Region::map(RegionId(4001), 2 * PAGE_SIZE).expect("map");
        let again = Region::map_at(RegionId(4002), r.base() + PAGE_SIZE, PAGE_SIZE);
        assert_eq!(
            again.err(),
            Some(RegionError::AddressTaken {
                id: RegionId(4002),
                addr: r.base() + PAGE_SIZE,
                len: PAGE_SIZE
            })
        );
        assert!(matches!(
            Region::map(RegionId(1), 0),
            Err(RegionError::BadLength { .. })
        ));
        assert!(matches!(
            Region::map(RegionId(DERIVED_IDS), PAGE_SIZE),
            Err(RegionError::IdOutOfRange { .. })
        ));
    }

    #[test]
    fn a_placed_root_is_found_again_in_a_copy_and_refused_as_another_type() {
        let mut r = Region::map(RegionId(4004), PAGE_SIZE).expect("map");
        assert!(matches!(r.root::<Pair>(), Err(RegionError::NoRoot { .. })));
        r.alloc(7u8).expect("u8");
        let p = r.place(Pair { a: 3, b: 4 }).expect("place");
        // Another process gets the bytes, not the slot: copy them into a second region.
        let mut copy = Region::map(RegionId(4005), PAGE_SIZE).expect("map");
        copy.as_bytes_mut().copy_from_slice(r.as_bytes());
        let found = copy.root::<Pair>().expect("root");
        assert_eq!(found, p);
        assert_eq!(*copy.get(found).expect("get"), Pair { a: 3, b: 4 });
        assert!(matches!(
            copy.root::<u64>(),
            Err(RegionError::RootType { .. })
        ));
        let mut fresh = Region::map(RegionId(4006), PAGE_SIZE).expect("map");
        let first = fresh.place(Pair { a: 0, b: 0 }).expect("place");
        assert_eq!(first.offset(), Region::first_offset::<Pair>());
    }

    #[test]
    fn a_corrupt_header_is_reported() {
        let mut r = Region::map(RegionId(4003), PAGE_SIZE).expect("map");
        r.as_bytes_mut()[0] = 1;
        assert!(matches!(r.alloc(1u8), Err(RegionError::BadHeader { .. })));
    }
}
