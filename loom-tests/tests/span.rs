//! Loom models of one span's anchor and free list on their own (`alloc_core::span::Span` over
//! loom atomics): pops, chain pushes, batch pops, and the retirement mark with its back-out.
#![cfg(shmpool_loom)]

use alloc_core::layout::{Anchor, BlockState, Kind};
use alloc_core::primitive::{AtomicU32, AtomicU64, Ordering};
use alloc_core::span::Span;
use loom::sync::Arc;
use loom_tests::{explore, halves, spawn, words};

/// A span's shared words, for sharing between modelled threads.
struct Storage {
    anchor: AtomicU64,
    states: Vec<AtomicU64>,
    extras: Vec<AtomicU32>,
    /// `held[i]` is 1 while some thread holds block `i` (the test's own bookkeeping).
    held: Vec<AtomicU64>,
}

impl Storage {
    /// A span of `blocks` blocks, every one free (generation 5).
    fn new(blocks: usize) -> Arc<Storage> {
        let storage = Storage {
            anchor: AtomicU64::new(0),
            states: words(blocks),
            extras: halves(blocks),
            held: words(blocks),
        };
        storage.span().init(5);
        Arc::new(storage)
    }

    fn span(&self) -> Span<'_> {
        Span::new(&self.anchor, &self.states, &self.extras)
    }

    /// Records that the calling thread now holds `block`; fails if another does.
    fn take(&self, block: u64) {
        assert_eq!(self.held[block as usize].swap(1, Ordering::Relaxed), 0, "block {block} handed out twice");
    }

    fn give_back(&self, block: u64) {
        self.held[block as usize].store(0, Ordering::Relaxed);
    }

    /// The blocks on the free list, in list order (after every thread was joined).
    fn listed(&self) -> Vec<u64> {
        let anchor = self.span().anchor();
        let mut listed = Vec::new();
        let mut next = anchor.head;
        for _ in 0..anchor.count {
            listed.push(next);
            let state =
                BlockState::decode(self.states[next as usize].load(Ordering::Acquire)).expect("decodes");
            assert_eq!(state.kind, Kind::Free, "block {next} on the list is not free");
            next = state.link;
        }
        assert_eq!(next, Anchor::NULL, "the list is longer than its count");
        listed
    }
}

/// Pops one block (the caller records it as held).
fn pop_one(storage: &Storage) -> Option<u64> {
    let mut into = [0u16; 1];
    let count = storage.span().pop_into(&mut into).expect("a sound list");
    let taken = (count == 1).then_some(into[0] as u64);
    if let Some(block) = taken {
        storage.take(block);
    }
    taken
}

fn push_one(storage: &Storage, block: u64, pusher: u64) {
    storage.give_back(block);
    let _ = storage.span().push(block, 5, pusher);
}

/// Interleaving: two threads each pop a block from a 2-block span and push it back, their
/// anchor reads, list walks and compare-exchanges interleaved.
///
/// Invariant: no block is held by both at once; the span ends with both blocks on its list,
/// each once.
#[test]
fn pops_and_pushes_never_hand_out_a_block_twice() {
    explore(5_000, || {
        let storage = Storage::new(2);
        let handles: Vec<_> = (1..=2)
            .map(|pusher| {
                let storage = storage.clone();
                spawn(move || {
                    if let Some(block) = pop_one(&storage) {
                        push_one(&storage, block, pusher);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("no panic");
        }
        let mut listed = storage.listed();
        listed.sort_unstable();
        assert_eq!(listed, [0, 1], "every block back on the list exactly once");
    });
}

/// Interleaving: one thread pops while another pops two blocks and pushes the first back (the
/// ABA pattern: the head the first thread read is the head again, with another next block).
///
/// Invariant: the tag makes the stale compare-exchange fail: no block is held twice, and the
/// blocks held plus the blocks listed are all three, each once.
#[test]
fn the_anchor_tag_defeats_aba_on_the_free_list() {
    explore(5_000, || {
        let storage = Storage::new(3);
        let churn = {
            let storage = storage.clone();
            spawn(move || {
                let a = pop_one(&storage).expect("three free blocks");
                let b = pop_one(&storage).expect("two free blocks at least");
                push_one(&storage, a, 1);
                b
            })
        };
        let popper = {
            let storage = storage.clone();
            spawn(move || pop_one(&storage))
        };
        let theirs = churn.join().expect("no panic");
        let mine = popper.join().expect("no panic");
        let mut all = storage.listed();
        all.push(theirs);
        all.extend(mine);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2], "a block was lost or handed out twice");
    });
}

/// Interleaving: a batch pop of two (a cache refill, walking two links before its one
/// compare-exchange) races a single pop whose block is then marked live (its state word no
/// longer a link: the batch's speculative walk may read it) and a push of another block.
///
/// Invariant: every block ends held or listed, exactly once; a torn walk is retried, never
/// reported as corruption.
#[test]
fn a_batch_pop_racing_a_pop_and_a_push_loses_and_duplicates_nothing() {
    explore(5_000, || {
        let storage = Storage::new(4);
        let outside = pop_one(&storage).expect("four free blocks"); // pushed back below
        let batch = {
            let storage = storage.clone();
            spawn(move || {
                let mut into = [0u16; 2];
                let count = storage.span().pop_into(&mut into).expect("a sound list");
                let taken: Vec<u64> = into[..count].iter().map(|&index| index as u64).collect();
                for &block in &taken {
                    storage.take(block);
                }
                taken
            })
        };
        let churn = {
            let storage = storage.clone();
            spawn(move || {
                push_one(&storage, outside, 1);
                let mine = pop_one(&storage);
                if let Some(block) = mine {
                    let live = BlockState::live(1, 0, 6);
                    // ORDERING (test): Release, as `Heap::hand_out` stores it.
                    storage.states[block as usize].store(live.encode(), Ordering::Release);
                }
                mine
            })
        };
        let mut all = batch.join().expect("no panic");
        let mine = churn.join().expect("no panic");
        all.extend(mine);
        all.extend(storage.listed());
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "every block exactly once");
    });
}

/// Interleaving: one block is out; its holder pushes it back while another thread tries to mark
/// the span retiring (only an entirely free span can be), and if it succeeds, pops (which must
/// get nothing), then backs the retirement out with the anchor it stashed.
///
/// Invariant: a retirement succeeds only with every block on the list, and nobody pops from a
/// retiring span; after the back-out the anchor is normal, the list holds all three blocks
/// once, and the retiring anchor named the retirer.
#[test]
fn a_span_is_marked_retiring_only_when_entirely_free_and_backs_out_whole() {
    explore(5_000, || {
        let storage = Storage::new(3);
        let out = pop_one(&storage).expect("three free blocks");
        let freer = {
            let storage = storage.clone();
            spawn(move || push_one(&storage, out, 1))
        };
        let retirer = {
            let storage = storage.clone();
            spawn(move || {
                let span = storage.span();
                let mut stashed = 0;
                let retired = span.try_retire(7, |before| stashed = before);
                if retired {
                    assert!(span.retiring_by(7), "the retiring anchor names its retirer");
                    assert_eq!(Anchor::decode(stashed).count, 3, "retired with a block out");
                    assert_eq!(span.pop_into(&mut [0; 1]), Ok(0), "popped from a retiring span");
                    assert!(span.back_out_retire(7, stashed), "the retirer backs its own retirement out");
                }
            })
        };
        freer.join().expect("no panic");
        retirer.join().expect("no panic");
        let span = storage.span();
        let anchor = span.anchor();
        assert!(!anchor.retiring, "the span stayed retiring");
        let mut listed = storage.listed();
        listed.sort_unstable();
        assert_eq!(listed, [0, 1, 2], "every block back on the list exactly once");
    });
}

/// Interleaving: a pop of the last free block races a retirement attempt of a span whose other
/// block is out (so it cannot retire until both are back), and a push of that other block.
///
/// Invariant: whenever the retirement succeeds, no block is held (the pop got nothing, the push
/// came first); otherwise the pop's block is held exclusively; at the end every block is held
/// or listed exactly once.
#[test]
fn a_pop_and_a_retirement_never_both_take_the_span() {
    explore(5_000, || {
        let storage = Storage::new(2);
        let out = pop_one(&storage).expect("two free blocks");
        let popper = {
            let storage = storage.clone();
            spawn(move || pop_one(&storage))
        };
        let pusher = {
            let storage = storage.clone();
            spawn(move || push_one(&storage, out, 1))
        };
        let retirer = {
            let storage = storage.clone();
            spawn(move || {
                let span = storage.span();
                let mut stashed = 0;
                let retired = span.try_retire(7, |before| stashed = before);
                (retired, stashed)
            })
        };
        let popped = popper.join().expect("no panic");
        pusher.join().expect("no panic");
        let (retired, stashed) = retirer.join().expect("no panic");
        if retired {
            assert_eq!(popped, None, "a block was popped from a span marked retiring");
            assert!(storage.span().back_out_retire(7, stashed));
        }
        let mut all = storage.listed();
        all.extend(popped);
        all.sort_unstable();
        assert_eq!(all, [0, 1], "every block exactly once");
    });
}
