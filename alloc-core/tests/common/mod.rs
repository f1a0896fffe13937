//! Test regions: zeroed, 8-byte aligned memory owned by the test, viewed as a `Region`.
#![allow(dead_code)]

use alloc_core::{Allocation, Heap, Region};

/// Zeroed memory for one region; lives as long as the test holds it.
pub struct TestMemory {
    words: Vec<u64>,
}

impl TestMemory {
    pub fn new(bytes: usize) -> TestMemory {
        TestMemory { words: vec![0; bytes / 8] }
    }

    pub fn region(&self) -> Region<'_> {
        // SAFETY: the vector lives as long as the returned region borrows `self`, is 8-byte
        // aligned, and is only touched through regions and allocation-owned byte writes.
        unsafe { Region::from_raw(self.words.as_ptr() as *mut u8, self.words.len() * 8) }.expect("aligned")
    }

    /// A fresh heap with 4 KiB pages.
    pub fn create(&self) -> Heap<'_> {
        Heap::create_default(self.region()).expect("region large enough")
    }

    /// Another participant's view of the same heap.
    pub fn open(&self) -> Heap<'_> {
        Heap::open(self.region()).expect("valid heap")
    }

    pub fn word(&self, index: usize) -> u64 {
        // SAFETY: test-only peek at an in-bounds word while nothing runs concurrently.
        unsafe { std::ptr::read_volatile(self.words.as_ptr().add(index)) }
    }

    pub fn set_word(&self, index: usize, value: u64) {
        // SAFETY: test-only corruption of an in-bounds word while nothing runs concurrently.
        unsafe { std::ptr::write_volatile(self.words.as_ptr().add(index) as *mut u64, value) }
    }
}

/// Fills `allocation` with a pattern derived from `seed`.
pub fn fill(heap: &Heap<'_>, allocation: &Allocation, seed: u64) {
    let base = heap.region().base();
    for i in 0..allocation.size {
        // SAFETY: the allocation is live and owned by the caller; offsets stay inside it.
        unsafe { *base.add((allocation.offset + i) as usize) = pattern(seed, i) };
    }
}

/// Whether `allocation` still holds the pattern of `seed`.
pub fn holds(heap: &Heap<'_>, allocation: &Allocation, seed: u64) -> bool {
    let base = heap.region().base();
    (0..allocation.size).all(|i| {
        // SAFETY: as in `fill`.
        unsafe { *base.add((allocation.offset + i) as usize) == pattern(seed, i) }
    })
}

pub fn pattern(seed: u64, i: u64) -> u8 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i.wrapping_mul(31)) >> 24) as u8
}

/// Helpers over allocations in tests.
pub struct TestAlloc;

impl TestAlloc {
    /// The first `len` bytes of `allocation`, as an allocation for `holds`.
    pub fn prefix(allocation: &Allocation, len: u64) -> Allocation {
        Allocation { size: len, ..*allocation }
    }
}
