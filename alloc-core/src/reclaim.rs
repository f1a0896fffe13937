//! Giving back what dead participants held: their live allocations, and the free blocks their
//! caches held. The host says who is dead (alloc-shm asks the kernel whether the process
//! exists); the core only walks the heap and frees.
//!
//! Several reclaimers may run at once, and alongside normal traffic: a live allocation is freed
//! with the ordinary compare-exchange on its state word (only one free wins), and a cached block
//! is claimed by a compare-exchange from its cached state before it is pushed back.

use crate::error::Error;
use crate::heap::{AllocId, Heap, Owner, Wake};
use crate::layout::{Anchor, BlockState, PageInfo, SPAN_PAGES};
use crate::primitive::Ordering;

/// What [`Heap::reclaim_dead`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Live allocations of dead owners that were freed.
    pub allocations: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// Free blocks held in dead participants' caches that went back to their spans.
    pub cached_blocks: u64,
    /// Whether waiters must be woken (as for a free).
    pub wake: bool,
}

impl Heap<'_> {
    /// Frees every live allocation whose owner `is_dead` says is gone, and returns the blocks
    /// dead participants' caches held. [`Owner::POOL`] is never asked about. `is_dead` may be
    /// called more than once per owner; the host can memoise it. `report` sees each freed
    /// allocation's id, owner and size.
    pub fn reclaim_dead(
        &self,
        mut is_dead: impl FnMut(Owner) -> bool,
        mut report: impl FnMut(AllocId, Owner, u64),
    ) -> Result<Reclaimed, Error> {
        self.ensure_ready()?;
        let mut reclaimed = Reclaimed::default();
        let mut dead = |owner: Owner| owner != Owner::POOL && is_dead(owner);
        for allocation in self.iter() {
            if !dead(allocation.owner) {
                continue;
            }
            match self.free(allocation.id) {
                Ok(wake) => {
                    reclaimed.allocations += 1;
                    reclaimed.bytes += allocation.size;
                    reclaimed.wake |= wake == Wake::Waiters;
                    report(allocation.id, allocation.owner, allocation.size);
                }
                // Freed by someone else meanwhile: nothing to reclaim.
                Err(Error::NotAllocated { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        let geo = *self.geometry();
        let mut page = 0;
        while page < geo.num_pages {
            match self.info(page) {
                PageInfo::SpanHead { class } if self.span_parts(page, class).is_ok() => {
                    reclaimed.cached_blocks += self.reclaim_cached_in_span(page, class, &mut dead);
                    page += SPAN_PAGES;
                }
                PageInfo::LargeHead { pages } if pages >= 1 && pages <= geo.num_pages - page => page += pages,
                _ => page += 1,
            }
        }
        if reclaimed.cached_blocks > 0 && self.wake_if_waiting() == Wake::Waiters {
            reclaimed.wake = true;
        }
        Ok(reclaimed)
    }

    fn reclaim_cached_in_span(&self, head: u64, class: usize, dead: &mut impl FnMut(Owner) -> bool) -> u64 {
        let (span, owners, _) = self.span(head, class);
        let mut given_back = 0;
        for index in 0..span.blocks() {
            let state = span.state(index);
            // ORDERING: Acquire pairs with the Release store (or release sequence) that last wrote this
            // state word, so the block's owner and size are those of the state seen.
            let word = state.load(Ordering::Acquire);
            let decoded = BlockState::decode(word);
            if decoded.live || decoded.low != BlockState::CACHED {
                continue;
            }
            if !dead(Owner(owners[index as usize].load(Ordering::Relaxed))) {
                continue;
            }
            // Claim the block from the dead cache; a concurrent reclaimer loses here.
            let claimed = BlockState { low: Anchor::NULL, ..decoded };
            // ORDERING: Acquire: the block is ours after whatever its last holder did.
            if state.compare_exchange(word, claimed.encode(), Ordering::Acquire, Ordering::Relaxed).is_ok() {
                self.give_back(head, class, index);
                given_back += 1;
            }
        }
        given_back
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;
    use crate::{AllocOptions, Region};

    #[test]
    fn frees_the_dead_and_spares_the_living_and_the_pool() {
        let mut words = vec![0u64; (1 << 20) / 8];
        // SAFETY: the vector outlives the heap and is only used through it.
        let region =
            unsafe { Region::from_raw(words.as_mut_ptr().cast(), words.len() * 8) }.expect("aligned");
        let heap = Heap::create_default(region).expect("fits");
        let owned = |owner| AllocOptions { owner: Owner(owner), ..AllocOptions::default() };
        let dead_small = heap.alloc(100, owned(7)).expect("space");
        let dead_large = heap.alloc(9000, owned(7)).expect("space");
        let alive = heap.alloc(100, owned(8)).expect("space");
        let pooled = heap.alloc(100, owned(0)).expect("space");
        let mut dead_cache = heap.new_cache(Owner(7));
        let cached = heap.alloc_with(&mut dead_cache, 64, owned(7)).expect("space");
        let _ = heap.free_with(&mut dead_cache, cached.id).expect("live");
        let held = dead_cache.held() as u64;
        assert!(held > 0);
        let mut freed = Vec::new();
        let reclaimed = heap
            .reclaim_dead(|owner| owner == Owner(7), |id, owner, size| freed.push((id, owner, size)))
            .expect("consistent");
        assert_eq!((reclaimed.allocations, reclaimed.bytes, reclaimed.cached_blocks), (2, 9100, held));
        assert_eq!(freed.len(), 2);
        assert!(!heap.contains(dead_small.id) && !heap.contains(dead_large.id));
        assert!(heap.contains(alive.id) && heap.contains(pooled.id));
        let stats = heap.check().expect("consistent");
        assert_eq!((stats.live_allocations, stats.cached_blocks), (2, 0));
        // A second pass finds nothing more.
        assert_eq!(heap.reclaim_dead(|owner| owner == Owner(7), |_, _, _| {}).expect("ok").allocations, 0);
    }
}
