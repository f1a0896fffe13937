//! The heap of shmpool: a lock-free allocator that lives entirely inside a byte region, so that
//! every process mapping the region can allocate, free and look up allocations.
//!
//! `no_std`, no allocation, no system calls: the host (alloc-shm) maps the region, implements
//! waiting ([`WaitHost`]), says which processes are dead, provides the process-wide memory
//! barrier ([`Platform`]) and wakes waiters when a free says so ([`Wake`]). All shared state is
//! reached through the atomics of [`primitive`], which loom replaces in the models.
//!
//! Start at [`Heap`]; the design and what holds under stalls, crashes and fork is described in
//! the `heap` module.
//!
//! ```
//! use alloc_core::{AllocOptions, Cache, Heap, ProcessIdentity, Region};
//!
//! let mut memory = vec![0u64; (8 << 20) / 8]; // any zeroed, 8-byte aligned memory
//! // SAFETY: the memory outlives the region and is only used through it.
//! let region = unsafe { Region::from_raw(memory.as_mut_ptr().cast(), 8 << 20) }?;
//! let heap = Heap::create_default(region)?; // O(1): writes only the header
//! let me = heap.register_process(ProcessIdentity { pid: std::process::id(), start_time: 1, namespace: 0 })?;
//! let mut session = heap.register_participant(me)?; // one per thread
//! let a = heap.alloc(&mut session, 64, AllocOptions::default())?; // a.offset: from the region start
//! assert_eq!(heap.lookup(&mut session, a.id())?.size, 64); // O(1) lookup by id
//! let _wake = heap.free(&mut session, a.id())?;
//! assert!(heap.free(&mut session, a.id()).is_err()); // a double free is an error, and changes nothing
//! heap.check(&mut session)?; // verifies every invariant
//!
//! // The fast path: a cache per thread; cached blocks stay recorded in shared memory.
//! let mut cache = Cache::new(heap.register_participant(me)?);
//! let b = heap.alloc_with(&mut cache, 64, AllocOptions::default())?;
//! let _wake = heap.free_with(&mut cache, b.id())?;
//! let _wake = heap.flush(&mut cache)?; // give cached blocks back (e.g. at exit)
//! # Ok::<(), alloc_core::Error>(())
//! ```
#![cfg_attr(not(test), no_std)]

pub mod bitmap;
pub mod budget;
mod cache;
mod check;
mod crash;
pub mod error;
pub mod heap;
pub mod hier;
pub mod layout;
mod pages;
pub mod participant;
pub mod primitive;
mod reclaim;
pub mod region;
mod repair;
pub mod runs;
pub mod span;
mod wait;

pub use budget::{Budget, BudgetUsed, Uncharged};
pub use cache::{Cache, CACHE_BLOCKS, CACHE_RUNS_PER_SIZE, CACHE_RUN_BYTES, OWN_BLOCKS_AFTER};
#[cfg(feature = "crash-points")]
pub use crash::{clear_hook, set_hook};
pub use error::Error;
pub use heap::{
    alloc_type, AllocId, AllocOptions, Allocation, Backing, ClassStats, Heap, Owner, Platform, Stats, Wake,
};
pub use layout::RecordState;
pub use participant::{ProcessIdentity, ProcessRecord, Session};
pub use reclaim::Reclaimed;
pub use region::Region;
pub use repair::Repaired;
pub use wait::{WaitHost, Waited};
