//! shmpool's shared-memory layer: pools that live in named files under `/dev/shm` (or another
//! directory), attached by any number of processes, with descriptors to pass allocations
//! between them, a blocking allocation woken across processes, and recovery of what crashed
//! processes held or left half done.
//!
//! ```no_run
//! use alloc_shm::Pool;
//!
//! let pool = Pool::create("example", 64 << 20)?;
//! let a = pool.alloc(1024)?;
//! pool.write(a.id(), 0, b"hello")?;
//! let descriptor = pool.alloc_descriptor(&a)?; // ≤ 128 bytes: send it to another process
//! // ... in the other process:
//! let (same_pool, same) = Pool::attach_alloc(&descriptor)?;
//! let mut buffer = [0u8; 5];
//! same_pool.read(same.id(), 0, &mut buffer)?;
//! same_pool.free(same.id())?;
//! pool.destroy()?;
//! # Ok::<(), alloc_shm::PoolError>(())
//! ```
//!
//! Layers: `name` (naming rules), `process` (this process: fork-safe pid, identity, liveness,
//! the process-wide barrier), `segment` (files, mappings, per-thread participants), `futex`
//! (cross-process waiting), `descriptor` (bytes for other processes), `passing` (file
//! descriptors over Unix sockets), `pool` (the API),
//! `handle` (RAII and the cached per-thread view).

pub mod cli;
pub mod descriptor;
mod error;
pub mod futex;
mod handle;
pub mod name;
mod passing;
mod pool;
pub mod process;
mod segment;
pub mod verify;

pub use alloc_core::budget;
pub use alloc_core::layout::CLASS_SIZES;
pub use alloc_core::{
    alloc_type, AllocId, AllocOptions, Allocation, Budget, BudgetUsed, Owner, Reclaimed, Repaired, Stats,
    Uncharged,
};
pub use error::{PoolError, Result};
pub use handle::{Arena, LocalPool, OwnedAlloc};
pub use pool::{list_pools, Attached, Inspection, Pool, PoolInfo, PoolOptions, ReclaimReport, Space};
pub use process::{current_pid, liveness, process_alive, Liveness};
