//! A participant's cache of free small blocks: the fast path.
//!
//! Like glibc's tcache, a [`Cache`] keeps up to [`CACHE_BLOCKS`] free blocks per class in
//! process-local memory, so that most allocations and frees touch no shared list. Unlike a
//! tcache, every block still says in shared memory what it is:
//! - a cached block's state word is not live and holds `BlockState::CACHED`, so a stale id or
//!   a double free of it fails exactly as for any free block; its owner word names the cache's
//!   owner, so that the host can give back the cache of a process that died;
//! - a free through the cache is still one compare-exchange on the block's own state word, so
//!   two participants freeing the same id at once cannot both succeed.
//!
//! Cached blocks are free but unavailable to other participants until the cache gives them
//! back: half at a time when a class's cache is full, all of them on [`Heap::flush`], and
//! before reporting `OutOfMemory`. While anyone waits in `alloc_blocking`, frees bypass the
//! cache so that the waiters are woken.
//!
//! A cache is tied to the mapping it was made for; using it with another heap is an error.

use crate::error::Error;
use crate::heap::{AllocId, AllocOptions, Allocation, Heap, Owner, Place, Wake};
use crate::layout::{class_for, BlockState, GRANULE, NUM_CLASSES, STATE_READY};
use crate::primitive::Ordering;

/// Blocks a cache holds per class before it gives half of them back.
pub const CACHE_BLOCKS: usize = 64;
/// Blocks a cache takes from the shared spans at once.
const REFILL_BLOCKS: u64 = CACHE_BLOCKS as u64 / 2;

/// One participant's (one thread's) cache of free blocks; see the module docs.
pub struct Cache {
    /// Identity of the mapping the cache belongs to.
    key: usize,
    owner: Owner,
    lens: [u8; NUM_CLASSES],
    /// Per class, `(span head page << 16) | block index`.
    entries: [[u64; CACHE_BLOCKS]; NUM_CLASSES],
}

impl Cache {
    /// The participant recorded as owner of the blocks this cache holds.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Blocks held, over all classes.
    pub fn held(&self) -> usize {
        self.lens.iter().map(|&len| len as usize).sum()
    }

    #[inline]
    fn pop(&mut self, class: usize) -> Option<(u64, u64)> {
        let len = self.lens[class] as usize;
        if len == 0 {
            return None;
        }
        self.lens[class] -= 1;
        let entry = self.entries[class][len - 1];
        Some((entry >> 16, entry & 0xFFFF))
    }

    #[inline]
    fn push(&mut self, class: usize, head: u64, index: u64) {
        let len = self.lens[class] as usize;
        self.entries[class][len] = head << 16 | index;
        self.lens[class] += 1;
    }
}

impl<'a> Heap<'a> {
    /// A new, empty cache for this heap's mapping, whose blocks are recorded as held by `owner`.
    pub fn new_cache(&self, owner: Owner) -> Cache {
        Cache {
            key: self.region().key(),
            owner,
            lens: [0; NUM_CLASSES],
            entries: [[0; CACHE_BLOCKS]; NUM_CLASSES],
        }
    }

    #[inline]
    fn check_cache(&self, cache: &Cache) -> Result<(), Error> {
        if cache.key != self.region().key() {
            return Err(Error::ForeignCache);
        }
        Ok(())
    }

    /// [`Heap::alloc`] through `cache`: small requests are served from the cache, which is
    /// refilled from the shared spans in batches.
    #[inline]
    pub fn alloc_with(
        &self,
        cache: &mut Cache,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        // The fast path: a plain request, the right cache, a ready pool, a cached block.
        if options.align <= GRANULE && cache.key == self.region().key() && self.status() == STATE_READY {
            if let Some(class) = class_for(size) {
                // Only classes in use ever get cache entries, so no block-count check here.
                if let Some((head, index)) = cache.pop(class) {
                    return Ok(self.hand_out(head, class, index, size, options));
                }
            }
        }
        self.alloc_with_slow(cache, size, options)
    }

    #[cold]
    #[inline(never)]
    fn alloc_with_slow(
        &self,
        cache: &mut Cache,
        size: u64,
        options: AllocOptions,
    ) -> Result<Allocation, Error> {
        self.check_cache(cache)?;
        self.ensure_ready()?;
        if options.align <= GRANULE {
            if let Some(class) = class_for(size).filter(|&class| self.blocks_of(class) > 0) {
                self.refill(cache, class)?;
                if let Some((head, index)) = cache.pop(class) {
                    return Ok(self.hand_out(head, class, index, size, options));
                }
            }
        }
        match self.alloc(size, options) {
            Err(Error::OutOfMemory { .. }) if cache.held() > 0 => {
                // Our cached blocks may be what keeps spans from going back to general use.
                // Any waiters notice the given-back blocks within their wait slice.
                let _ = self.flush(cache)?;
                self.alloc(size, options)
            }
            other => other,
        }
    }

    fn refill(&self, cache: &mut Cache, class: usize) -> Result<(), Error> {
        let owner = cache.owner;
        self.take_blocks(class, REFILL_BLOCKS, |head, index| {
            let (span, owners, _) = self.span(head, class);
            let state = span.state(index);
            let free = BlockState::decode(state.load(Ordering::Relaxed));
            if free.low == BlockState::CACHED {
                // Taken twice: only a corrupted list that loops does this. Keep one copy.
                return;
            }
            let cached = BlockState { low: BlockState::CACHED, ..free };
            // The block is ours (taken off the list); nobody else writes these words now.
            // ORDERING: Release, like every store to a state word: see `Span::pop_batch`.
            state.store(cached.encode(), Ordering::Release);
            owners[index as usize].store(owner.0, Ordering::Relaxed);
            cache.push(class, head, index);
        })?;
        Ok(())
    }

    /// [`Heap::free`] through `cache`: a small block goes into the cache (given back in halves
    /// when the class is full); a large one, or any block while someone waits, is freed to the
    /// shared heap at once.
    #[inline]
    pub fn free_with(&self, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        // Anything but a ready pool without waiters (status exactly READY) takes the slow path:
        // destroyed pools fail there, and while anyone waits frees go to the shared heap so that
        // the waiters are woken. A Relaxed look suffices: a waiter that registers just after it
        // is served by its own retry, by the next free, or by the cache giving blocks back.
        if cache.key != self.region().key() || self.status() != STATE_READY {
            return self.free_with_slow(cache, id);
        }
        let (place, state) = self.locate(id)?;
        let Place::Small { head, class, index, base } = place else {
            return self.free(id);
        };
        let (word, decoded) = self.live_state(id, state)?;
        if cache.lens[class] as usize == CACHE_BLOCKS {
            return self.free_with_slow(cache, id);
        }
        let cached = BlockState { live: false, low: BlockState::CACHED, alloc_type: 0, ..decoded };
        // ORDERING: Acquire on success: the block is ours, after the last user's accesses.
        state
            .compare_exchange(word, cached.encode(), Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::NotAllocated { id: id.0 })?;
        self.block_owner(base, class, index).store(cache.owner.0, Ordering::Relaxed);
        cache.push(class, head, index);
        Ok(Wake::Nobody)
    }

    #[cold]
    #[inline(never)]
    fn free_with_slow(&self, cache: &mut Cache, id: AllocId) -> Result<Wake, Error> {
        self.check_cache(cache)?;
        self.ensure_ready()?;
        let (place, _) = self.locate(id)?;
        match place {
            // With the pool plainly ready, the only reason to be here is a full class cache:
            // give half back, then cache this block.
            Place::Small { class, .. } if self.status() == STATE_READY => {
                let wake = self.spill(cache, class, CACHE_BLOCKS / 2);
                let _ = self.free_with(cache, id)?;
                Ok(wake)
            }
            // Waiters (or a status word we do not understand): free to the shared heap.
            _ => self.free(id),
        }
    }

    /// Gives every cached block back to the shared spans (at detach, before waiting, or when
    /// the host wants the memory visible to others).
    pub fn flush(&self, cache: &mut Cache) -> Result<Wake, Error> {
        self.check_cache(cache)?;
        let mut wake = Wake::Nobody;
        for class in 0..NUM_CLASSES {
            if self.spill(cache, class, cache.lens[class] as usize) == Wake::Waiters {
                wake = Wake::Waiters;
            }
        }
        Ok(wake)
    }

    /// Gives the `count` oldest cached blocks of `class` back to their spans.
    fn spill(&self, cache: &mut Cache, class: usize, count: usize) -> Wake {
        let len = cache.lens[class] as usize;
        let count = count.min(len);
        if count == 0 {
            return Wake::Nobody;
        }
        for &entry in &cache.entries[class][..count] {
            self.give_back(entry >> 16, class, entry & 0xFFFF);
        }
        cache.entries[class].copy_within(count..len, 0);
        cache.lens[class] = (len - count) as u8;
        self.wake_if_waiting()
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::Region;

    fn memory(bytes: usize) -> Vec<u64> {
        vec![0; bytes / 8]
    }

    fn heap(words: &mut [u64]) -> Heap<'_> {
        // SAFETY: the vector outlives the heap and is only used through it.
        let region =
            unsafe { Region::from_raw(words.as_mut_ptr().cast(), words.len() * 8) }.expect("aligned");
        Heap::create_default(region).expect("fits")
    }

    #[test]
    fn cached_frees_are_reused_and_double_frees_still_fail() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = heap.new_cache(Owner(77));
        let a = heap.alloc_with(&mut cache, 64, AllocOptions::default()).expect("space");
        assert_eq!(cache.held(), REFILL_BLOCKS as usize - 1);
        assert_eq!(heap.free_with(&mut cache, a.id), Ok(Wake::Nobody));
        assert_eq!(heap.free_with(&mut cache, a.id), Err(Error::NotAllocated { id: a.id.0 }));
        assert_eq!(heap.free(a.id), Err(Error::NotAllocated { id: a.id.0 }));
        assert_eq!(heap.lookup(a.id), Err(Error::NotAllocated { id: a.id.0 }));
        let b = heap.alloc_with(&mut cache, 64, AllocOptions::default()).expect("space");
        assert_eq!(b.offset, a.offset, "the most recently freed block comes back first");
        assert_ne!(b.id, a.id);
        let stats = heap.check().expect("cached blocks are accounted for");
        assert_eq!(stats.cached_blocks, cache.held() as u64);
        let _ = heap.free_with(&mut cache, b.id).expect("live");
        let _ = heap.flush(&mut cache).expect("same heap");
        assert_eq!(cache.held(), 0);
        assert_eq!(heap.check().expect("consistent").cached_blocks, 0);
    }

    #[test]
    fn a_full_class_cache_gives_half_back() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = heap.new_cache(Owner(1));
        let blocks: Vec<_> =
            (0..CACHE_BLOCKS * 2).map(|_| heap.alloc(32, AllocOptions::default()).expect("space")).collect();
        for block in &blocks {
            let _ = heap.free_with(&mut cache, block.id).expect("live");
            assert!(cache.held() <= CACHE_BLOCKS);
        }
        let stats = heap.check().expect("consistent");
        assert_eq!(stats.cached_blocks, cache.held() as u64);
        assert_eq!(stats.live_allocations, 0);
    }

    #[test]
    fn a_cache_of_another_heap_is_refused() {
        let mut first = memory(1 << 20);
        let mut second = memory(1 << 20);
        let one = heap(&mut first);
        let other = heap(&mut second);
        let mut cache = one.new_cache(Owner(1));
        assert_eq!(other.alloc_with(&mut cache, 8, AllocOptions::default()), Err(Error::ForeignCache));
        assert_eq!(other.flush(&mut cache), Err(Error::ForeignCache));
    }

    #[test]
    fn running_out_flushes_the_cache_so_spans_can_go_back() {
        let mut words = memory(1 << 20);
        let heap = heap(&mut words);
        let mut cache = heap.new_cache(Owner(1));
        let mut small = Vec::new();
        while let Ok(a) = heap.alloc_with(&mut cache, 16, AllocOptions::default()) {
            small.push(a.id);
        }
        for id in small {
            let _ = heap.free_with(&mut cache, id).expect("live");
        }
        let most = heap.geometry().data_bytes() * 9 / 10;
        assert!(heap.alloc_with(&mut cache, most, AllocOptions::default()).is_ok());
        assert_eq!(cache.held(), 0);
        heap.check().expect("consistent");
    }
}
