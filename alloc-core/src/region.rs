//! The memory a heap lives in, seen as slices of the shim's atomics.
//!
//! In production a region is one mapping viewed twice: as 64-bit words (all metadata) and as
//! 32-bit words (the owner arrays of spans). The core never touches the same bytes through both
//! views while they may race: a byte changes view only when its span or run is released and
//! claimed again, and that hand-over is ordered by the bitmap's release/acquire. Under loom the
//! two views are separate boxed arrays, since loom's atomics cannot be laid over raw bytes.
//!
//! This is the only module that turns raw pointers into references.

use crate::error::Error;
use crate::primitive::{AtomicU32, AtomicU64};

/// A byte region holding (or about to hold) a heap.
pub struct Region<'a> {
    words: &'a [AtomicU64],
    halves: &'a [AtomicU32],
    /// Start of the mapping, for copying allocation contents; null when the views are separate.
    base: *mut u8,
}

// SAFETY: a `Region` only hands out shared references to atomics and copies bytes through
// `base` on behalf of callers that own both allocations involved; nothing in it is tied to the
// thread that made it.
unsafe impl Send for Region<'_> {}
// SAFETY: as above; every access through a shared `Region` is an atomic access or a copy
// between allocations the caller owns.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Views `len` bytes at `base` as a region.
    ///
    /// # Safety
    /// 1. `base..base + len` is readable memory that stays mapped for `'a`, and writable
    ///    unless the heap over it is only opened ([`crate::Heap::open`]) and read through
    ///    functions that never write ([`crate::Heap::inspect`], records and header words).
    /// 2. Every other access to that memory during `'a` goes through a `Region` over it, or
    ///    touches only the bytes of allocations the accessor owns.
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> Result<Region<'a>, Error> {
        if base.is_null() || base.align_offset(8) != 0 || !len.is_multiple_of(8) {
            return Err(Error::RegionTooSmall { bytes: len as u64 });
        }
        // SAFETY: (1) the memory is valid for `'a` and 8-byte aligned, as checked above; atomics
        // have the size and alignment of their integers and may alias each other because they
        // are `UnsafeCell`s; (2) the caller promises no conflicting non-atomic access.
        let (words, halves) = unsafe {
            (
                core::slice::from_raw_parts(base.cast::<AtomicU64>(), len / 8),
                core::slice::from_raw_parts(base.cast::<AtomicU32>(), len / 4),
            )
        };
        Ok(Region { words, halves, base })
    }

    /// A region made of two separate arrays, for loom models. Allocation contents are not
    /// modelled: `realloc` does not copy them.
    #[cfg(all(shmpool_loom, feature = "loom"))]
    pub fn from_parts(words: &'a [AtomicU64], halves: &'a [AtomicU32]) -> Region<'a> {
        assert_eq!(words.len() * 2, halves.len(), "the two views must cover the same bytes");
        Region { words, halves, base: core::ptr::null_mut() }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// True for an empty region.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The 64-bit word at `index`.
    #[inline]
    pub(crate) fn word(&self, index: usize) -> &AtomicU64 {
        &self.words[index]
    }

    /// The 32-bit word at `index` (counted in 32-bit words from the region start).
    #[inline]
    pub(crate) fn half(&self, index: usize) -> &AtomicU32 {
        &self.halves[index]
    }

    /// `count` 64-bit words starting at byte `offset` (8-aligned).
    #[inline]
    pub(crate) fn words_at(&self, offset: u64, count: u64) -> &[AtomicU64] {
        let first = (offset / 8) as usize;
        &self.words[first..first + count as usize]
    }

    /// `count` 32-bit words starting at byte `offset` (4-aligned).
    #[inline]
    pub(crate) fn halves_at(&self, offset: u64, count: u64) -> &[AtomicU32] {
        let first = (offset / 4) as usize;
        &self.halves[first..first + count as usize]
    }

    /// Identifies this mapping within the process (caches are tied to it).
    #[inline]
    pub fn key(&self) -> usize {
        self.words.as_ptr() as usize
    }

    /// The mapping's first byte (null for loom's separate views).
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Copies `len` bytes from offset `from` to offset `to`.
    ///
    /// # Safety
    /// Both ranges lie inside the region's data area, do not overlap, and belong to allocations
    /// the caller owns for the duration of the call.
    pub(crate) unsafe fn copy(&self, from: u64, to: u64, len: u64) {
        if self.base.is_null() {
            return;
        }
        debug_assert!(from.max(to) + len <= self.len());
        // SAFETY: the caller guarantees both ranges are in bounds, disjoint and owned by it, so
        // no other access races with this copy.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.base.add(from as usize),
                self.base.add(to as usize),
                len as usize,
            )
        };
    }
}
