//! The heap of shmpool: a lock-free allocator that lives entirely inside a byte region, so that
//! every process mapping the region can allocate, free and look up allocations.
//!
//! `no_std`, no allocation, no system calls: the host (alloc-shm) maps the region, implements
//! waiting ([`WaitHost`]) and wakes waiters when a free says so ([`Wake`]). All shared state is
//! reached through the atomics of [`primitive`], which loom replaces in the models.
//!
//! Start at [`Heap`]; the design and its invariants are described in the `heap` module.
#![cfg_attr(not(test), no_std)]

pub mod bitmap;
mod cache;
mod check;
pub mod error;
pub mod heap;
pub mod layout;
pub mod primitive;
pub mod region;
pub mod span;
pub mod stack;

pub use cache::{Cache, CACHE_BLOCKS};
pub use error::Error;
pub use heap::{
    alloc_type, AllocId, AllocOptions, Allocation, Allocations, ClassStats, Heap, Owner, Stats, WaitHost,
    Waited, Wake,
};
pub use region::Region;
