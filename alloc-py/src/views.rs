//! Buffer views of allocations, counted per allocation over every handle in this process.
//!
//! Any number of `MemoryAlloc` handles can name one allocation: `clone`, `alloc_from_id`,
//! unpickling, `MemoryAlloc.attach`, handles of another `MemoryPool` object over the same pool.
//! A free (or a resize) through any of them must be refused while a buffer view made through any
//! of them is alive, or the view would read and write whatever the pool puts there next. So the
//! count lives here, keyed by the pool's nonce and the allocation's id, not in the handle.
//!
//! The common case, a free while no view of any allocation is alive in the process, takes no
//! lock. With the GIL, one look at a process-wide count of views decides it: views and frees
//! of this module never release the GIL half way, so the GIL orders them. Without it
//! (free-threaded CPython), two process-wide counters, used Dekker-style with SeqCst, decide it:
//! - A view first counts itself in `VIEWS`, then waits until no free that might have missed it is
//!   in flight (`FREEING` is 0), then records itself under the allocation's key, unless a free of
//!   it is under way; only then does the handle check that the allocation is live.
//! - A free first counts itself in `FREEING`, then looks at `VIEWS`: at 0, no view can have been
//!   made without waiting for this free to finish (and then finding the allocation gone), so it
//!   frees at once. Otherwise it stops counting in `FREEING` and asks the registry: refused while
//!   the key has views; else it marks the key as being freed (views of it are refused), frees,
//!   and takes the mark away.
//!
//! A view waits only for frees that had already started when it counted itself (a free never
//! waits for anything), so it never waits for long.
//!
//! Dragon's semantics (`shmpool.dragon`) allow a free while views are alive: the free is then
//! put off ([`defer_free`]) and recorded under the key, no new view of the allocation is made,
//! and the release of the last view does it, once. Only the memory waits: the allocation's
//! budget charge is given back at once (`Pool::give_back_charge`), so that a process waiting
//! for budget is not held up by views it cannot see (the data area has room beyond the budget
//! for the memory still under views), and the put-off free gives nothing back
//! (`Pool::free_given_back`). It goes through the pool itself (the recorded `Pool` keeps the
//! mapping, whatever became of the handles); if the allocation was freed meanwhile by anyone
//! else (its id is then stale) or the pool destroyed, that free fails and the failure is
//! dropped: a buffer release has no one to tell.

use alloc_shm::{Pool, PoolError, Uncharged};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// An allocation in this process: its pool's nonce and its id.
pub(crate) type Key = (u64, u128);

/// Whether the GIL orders this module's views and frees (every build but free-threaded ones).
/// Both ways are compiled in every build.
const GIL_ORDERS: bool = cfg!(not(Py_GIL_DISABLED));

/// Buffer views alive in this process, of any allocation (counted before they are recorded).
static VIEWS: AtomicUsize = AtomicUsize::new(0);
/// Frees in flight that decided on `VIEWS` alone.
static FREEING: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Entry {
    /// Live views of the allocation.
    views: usize,
    /// Frees or resizes of it under way (through the registry).
    closing: usize,
    /// A free put off until the last view is released (Dragon's semantics); the allocation's
    /// charge is given back already.
    deferred: Option<(Pool, Uncharged)>,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.views == 0 && self.closing == 0 && self.deferred.is_none()
    }
}

/// Allocations with live views or a registered free under way.
///
/// Hashed with Fx rather than SipHash: every array creation and collection passes here, and
/// the keys (a pool's nonce, an allocation id) come from the pool, not from an adversary who
/// could pick colliding ones to slow the map down.
fn registry() -> MutexGuard<'static, FxHashMap<Key, Entry>> {
    static REGISTRY: LazyLock<Mutex<FxHashMap<Key, Entry>>> = LazyLock::new(Default::default);
    // The map is never left half changed (plain counters), so a poisoned lock is still sound.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a view was refused: a free or resize of the allocation is under way.
pub(crate) struct Closing;

/// Records a new view of `key`; the caller checks afterwards that the allocation is live (and
/// calls [`uncount`] if it is not, or once the view is released).
pub(crate) fn count(key: Key) -> Result<(), Closing> {
    // ORDERING: SeqCst on both counters, here and in `unless_viewed` (Dekker): either that
    // free sees this view, or this view waits for that free to end and then sees it done.
    VIEWS.fetch_add(1, Ordering::SeqCst);
    let mut spins = 0u32;
    while FREEING.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    let mut map = registry();
    let entry = map.entry(key).or_default();
    if entry.closing > 0 || entry.deferred.is_some() {
        drop(map);
        VIEWS.fetch_sub(1, Ordering::SeqCst);
        return Err(Closing);
    }
    entry.views += 1;
    Ok(())
}

/// Forgets a view of `key` recorded by [`count`].
pub(crate) fn uncount(key: Key) {
    let mut map = registry();
    let mut due = None;
    if let Some(entry) = map.get_mut(&key) {
        entry.views = entry.views.saturating_sub(1);
        if entry.views == 0 {
            due = entry.deferred.take();
        }
        if entry.is_idle() {
            map.remove(&key);
        }
    }
    drop(map);
    // ORDERING: SeqCst, the counter's order everywhere (see `count`).
    VIEWS.fetch_sub(1, Ordering::SeqCst);
    // The put-off free, once, outside the lock: a stale id (freed meanwhile by anyone) or a
    // destroyed pool fails, and there is no one to tell.
    if let Some((pool, uncharged)) = due {
        let _ = pool.free_given_back(uncharged);
    }
}

/// What [`defer_free`] did.
pub(crate) enum Deferral {
    /// Views are alive: the charge is given back, and the free recorded; it will happen when
    /// the last view is released.
    Deferred,
    /// Views are alive, but the charge could not be given back (the allocation is not live:
    /// freed by someone else, or its pool destroyed): nothing is put off.
    Failed(PoolError),
    /// A free of the allocation is already put off (a double free).
    AlreadyDeferred,
    /// No view is alive: free it now.
    NotViewed,
}

/// Puts off the free of `key` until its last view is released, if any view is alive; `give_back`
/// gives the allocation's budget charge back now and returns its pool and token (under the
/// registry's lock, so that a view released meanwhile finds the free recorded).
pub(crate) fn defer_free(
    key: Key,
    give_back: impl FnOnce() -> Result<(Pool, Uncharged), PoolError>,
) -> Deferral {
    // ORDERING: Relaxed, as in `unless_viewed`: no view of anything, no registry look.
    if GIL_ORDERS && VIEWS.load(Ordering::Relaxed) == 0 {
        return Deferral::NotViewed;
    }
    let mut map = registry();
    let Some(entry) = map.get_mut(&key) else {
        return Deferral::NotViewed;
    };
    if entry.deferred.is_some() {
        return Deferral::AlreadyDeferred;
    }
    if entry.views == 0 {
        return Deferral::NotViewed;
    }
    match give_back() {
        Ok(deferred) => {
            entry.deferred = Some(deferred);
            Deferral::Deferred
        }
        Err(error) => Deferral::Failed(error),
    }
}

/// Runs `change` (a free or resize of `key`) unless a view of the allocation is alive; else
/// gives the number of live views. While `change` runs, new views of `key` are refused. A
/// `quick` change (a free: it never waits) may run without the registry when no view of any
/// allocation is alive; views made meanwhile wait for it.
pub(crate) fn unless_viewed<R>(key: Key, quick: bool, change: impl FnOnce() -> R) -> Result<R, usize> {
    if quick && GIL_ORDERS {
        // ORDERING: Relaxed: views are counted, and frees decided, under the GIL (see the module
        // docs), which orders them.
        if VIEWS.load(Ordering::Relaxed) == 0 {
            return Ok(change());
        }
    } else if quick {
        // ORDERING: SeqCst on both counters (see `count`).
        FREEING.fetch_add(1, Ordering::SeqCst);
        let freeing = Undo(|| {
            // ORDERING: SeqCst: a view waiting for 0 then sees the free done (see `count`).
            FREEING.fetch_sub(1, Ordering::SeqCst);
        });
        if VIEWS.load(Ordering::SeqCst) == 0 {
            return Ok(change());
        }
        drop(freeing);
    }
    {
        let mut map = registry();
        let entry = map.entry(key).or_default();
        if entry.views > 0 {
            return Err(entry.views);
        }
        entry.closing += 1;
    }
    let _closing = Undo(|| {
        let mut map = registry();
        if let Some(entry) = map.get_mut(&key) {
            entry.closing -= 1;
            if entry.is_idle() {
                map.remove(&key);
            }
        }
    });
    Ok(change())
}

/// Runs its closure when dropped, a panic in `change` included (the counters must come down).
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
