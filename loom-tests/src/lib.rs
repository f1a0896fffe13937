//! Helpers for the loom models in `tests/`. Everything here only exists under
//! `--cfg shmpool_loom` (see `scripts/loom`); a normal build compiles an empty crate.
#![cfg(shmpool_loom)]

use alloc_core::primitive::{AtomicU32, AtomicU64};
use alloc_core::Region;

/// A region made of loom atomics: the two views the core expects, as separate arrays.
pub struct LoomRegion {
    words: Vec<AtomicU64>,
    halves: Vec<AtomicU32>,
}

impl LoomRegion {
    /// A zeroed region of `bytes` bytes (a multiple of 8).
    pub fn new(bytes: usize) -> LoomRegion {
        LoomRegion {
            words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(),
            halves: (0..bytes / 4).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The region over these atomics.
    pub fn region(&self) -> Region<'_> {
        Region::from_parts(&self.words, &self.halves)
    }
}

/// Bytes of the smallest heap: 64-byte pages, one span's worth of data pages.
pub const SMALLEST_HEAP: usize = 2304;
/// Bytes of a heap with 64-byte pages and room for two spans.
pub const TWO_SPAN_HEAP: usize = 4096;

/// A vector of `n` zeroed loom atomics.
pub fn words(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}
