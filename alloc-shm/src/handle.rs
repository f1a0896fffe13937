//! Owning handles: an allocation freed when its handle drops, an arena that frees everything it
//! handed out when it drops (cymem's idea, across processes), and a per-thread cached view of a
//! pool for hot loops.

use std::sync::Mutex;

use alloc_core::{AllocId, Allocation, Cache};

use crate::error::{PoolError, Result};
use crate::pool::Pool;
use crate::process::current_pid;

/// An allocation freed when dropped. Keeps its pool mapped.
#[derive(Debug)]
pub struct OwnedAlloc {
    pool: Pool,
    allocation: Allocation,
}

impl OwnedAlloc {
    /// The allocation.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// Its pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Its descriptor, for another process.
    pub fn descriptor(&self) -> Result<Vec<u8>> {
        self.pool.alloc_descriptor(&self.allocation)
    }

    /// Gives up ownership without freeing (e.g. after handing the allocation to another
    /// process, which will free it).
    pub fn into_inner(self) -> Allocation {
        let allocation = self.allocation;
        std::mem::forget(self);
        allocation
    }
}

impl Drop for OwnedAlloc {
    fn drop(&mut self) {
        // Already freed elsewhere, or the pool destroyed: nothing left to give back.
        let _ = self.pool.free(self.allocation.id());
    }
}

/// Allocations that are all freed when the arena is dropped.
#[derive(Debug)]
pub struct Arena {
    pool: Pool,
    ids: Mutex<Vec<AllocId>>,
}

impl Arena {
    /// Allocates `size` bytes that live as long as the arena.
    pub fn alloc(&self, size: u64) -> Result<Allocation> {
        let allocation = self.pool.alloc(size)?;
        self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(allocation.id());
        Ok(allocation)
    }

    /// Number of allocations the arena holds.
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    /// Whether the arena holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The arena's pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let ids = std::mem::take(self.ids.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for id in ids {
            // Freed explicitly meanwhile, or the pool destroyed: nothing to do.
            let _ = self.pool.free(id);
        }
    }
}

/// A per-thread view of a pool with its own block cache: the fast path for hot loops. Cached
/// blocks are recorded as held by this process, go back on [`LocalPool::flush`] and on drop,
/// and are reclaimed by `reclaim_dead` should the process die.
///
/// Fork-safe: a `LocalPool` copied into a fork child (directly, or inside any object holding
/// one) never uses or gives back its parent's cache; on its first use in the child it starts a
/// new, empty one, and dropping it in the child touches nothing of the parent's.
pub struct LocalPool {
    pool: Pool,
    /// The process the cache was made in (its blocks are that process's).
    pid: u32,
    cache: Option<Box<Cache>>,
}

impl LocalPool {
    /// The pool and the cache, made anew on first use and in a fork child (the inherited one
    /// is the parent's: forgotten, never touched).
    #[inline]
    fn parts(&mut self) -> Result<(&Pool, &mut Cache)> {
        let pid = current_pid();
        if self.pid != pid || self.cache.is_none() {
            self.renew(pid)?;
        }
        match self.cache.as_deref_mut() {
            Some(cache) => Ok((&self.pool, cache)),
            None => unreachable!("renew made the cache"),
        }
    }

    #[cold]
    #[inline(never)]
    fn renew(&mut self, pid: u32) -> Result<()> {
        if self.pid != pid {
            // A fork child: the blocks in the inherited cache are the parent's.
            self.cache = None;
        }
        self.cache = Some(Box::new(Cache::new(self.pool.mapping().new_session()?)));
        self.pid = pid;
        Ok(())
    }

    /// Allocates `size` bytes owned by this process.
    #[inline]
    pub fn alloc(&mut self, size: u64) -> Result<Allocation> {
        self.alloc_with(size, alloc_core::AllocOptions::default())
    }

    /// Allocates with explicit alignment, type and owner.
    #[inline]
    pub fn alloc_with(&mut self, size: u64, options: alloc_core::AllocOptions) -> Result<Allocation> {
        let (pool, cache) = self.parts()?;
        pool.mapping()
            .heap()
            .alloc_with(cache, size, options)
            .map_err(|cause| PoolError::from_heap(pool.name(), cause))
    }

    /// Frees `id`.
    #[inline]
    pub fn free(&mut self, id: AllocId) -> Result<()> {
        let (pool, cache) = self.parts()?;
        let wake = pool
            .mapping()
            .heap()
            .free_with(cache, id)
            .map_err(|cause| PoolError::from_heap(pool.name(), cause))?;
        pool.wake(wake);
        Ok(())
    }

    /// Gives every cached block back to the pool.
    pub fn flush(&mut self) -> Result<()> {
        if self.pid != current_pid() || self.cache.is_none() {
            return Ok(());
        }
        let (pool, cache) = self.parts()?;
        let wake =
            pool.mapping().heap().flush(cache).map_err(|cause| PoolError::from_heap(pool.name(), cause))?;
        pool.wake(wake);
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        // In a fork child the cache (and its participant) are the parent's: leave them alone.
        if self.pid != current_pid() {
            return;
        }
        let _ = self.flush();
        if let Some(cache) = self.cache.take() {
            self.pool.mapping().end_session(cache.into_session(), self.pid);
        }
    }
}

impl Pool {
    /// Allocates `size` bytes freed when the returned handle drops.
    pub fn alloc_owned(&self, size: u64) -> Result<OwnedAlloc> {
        Ok(OwnedAlloc { pool: self.clone(), allocation: self.alloc(size)? })
    }

    /// A new arena over this pool.
    pub fn arena(&self) -> Arena {
        Arena { pool: self.clone(), ids: Mutex::new(Vec::new()) }
    }

    /// A cached view for this thread's hot loops (its participant is registered on first use).
    pub fn local(&self) -> LocalPool {
        LocalPool { pool: self.clone(), pid: current_pid(), cache: None }
    }
}
