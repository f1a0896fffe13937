//! The heap of shmpool: a lock-free allocator that lives entirely inside a byte region, so that
//! every process mapping the region can allocate, free and look up allocations.
//!
//! `no_std`, no allocation, no system calls: the host (alloc-shm) maps the region, implements
//! waiting ([`WaitHost`]) and wakes waiters when a free says so ([`Wake`]). All shared state is
//! reached through the atomics of [`primitive`], which loom replaces in the models.
//!
//! Start at [`Heap`]; the design and its invariants are described in the `heap` module.
//!
//! ```
//! use alloc_core::{AllocOptions, Heap, Owner, Region};
//!
//! let mut memory = vec![0u64; (8 << 20) / 8]; // any zeroed, 8-byte aligned memory
//! // SAFETY: the memory outlives the region and is only used through it.
//! let region = unsafe { Region::from_raw(memory.as_mut_ptr().cast(), 8 << 20) }?;
//! let heap = Heap::create_default(region)?; // O(1): writes only the header
//! let a = heap.alloc(64, AllocOptions::default())?; // a.offset: bytes from the region start
//! assert_eq!(heap.lookup(a.id)?.size, 64); // O(1) lookup by 64-bit id
//! let _wake = heap.free(a.id)?;
//! assert!(heap.free(a.id).is_err()); // a double free is an error, and changes nothing
//! heap.check()?; // verifies every invariant
//!
//! // The fast path: one cache per thread; cached blocks stay recorded in shared memory.
//! let mut cache = heap.new_cache(Owner(std::process::id()));
//! let b = heap.alloc_with(&mut cache, 64, AllocOptions::default())?;
//! let _wake = heap.free_with(&mut cache, b.id)?;
//! let _wake = heap.flush(&mut cache)?; // give cached blocks back (e.g. at exit)
//! # Ok::<(), alloc_core::Error>(())
//! ```
#![cfg_attr(not(test), no_std)]

pub mod bitmap;
mod cache;
mod check;
pub mod error;
pub mod heap;
pub mod layout;
pub mod primitive;
mod reclaim;
pub mod region;
mod repair;
pub mod span;
pub mod stack;

pub use cache::{Cache, CACHE_BLOCKS};
pub use error::Error;
pub use heap::{
    alloc_type, AllocId, AllocOptions, Allocation, Allocations, ClassStats, Heap, Owner, Stats, WaitHost,
    Waited, Wake,
};
pub use reclaim::Reclaimed;
pub use region::Region;
pub use repair::Repaired;
