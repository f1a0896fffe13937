//! Loom models of each lock-free structure on its own: a span's anchor and free list, the
//! page bitmap's run claims, and a class stack.
#![cfg(shmpool_loom)]

use alloc_core::bitmap::Bitmap;
use alloc_core::layout::{Anchor, BlockState};
use alloc_core::primitive::{AtomicU64, Ordering};
use alloc_core::span::{Pushed, Span};
use alloc_core::stack::SpanStack;
use loom::sync::Arc;
use loom_tests::words;

/// Two threads each take a block from a 2-block span and give it back; a third state of the
/// anchor must never hand one block to both, and the span ends with both blocks free.
#[test]
fn span_pop_and_push_never_hand_out_a_block_twice() {
    loom::model(|| {
        let anchor = Arc::new(AtomicU64::new(0));
        let states = Arc::new(words(2));
        Span::new(&anchor, &states).init(0);
        let owned = Arc::new(words(2)); // owned[i] = 1 while a thread holds block i
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (anchor, states, owned) = (anchor.clone(), states.clone(), owned.clone());
                loom::thread::spawn(move || {
                    let span = Span::new(&anchor, &states);
                    if let Some(block) = span.pop(|| true).expect("valid") {
                        assert_eq!(
                            owned[block as usize].swap(1, Ordering::Relaxed),
                            0,
                            "block handed out twice"
                        );
                        owned[block as usize].store(0, Ordering::Relaxed);
                        let _ = span.push(block, 1);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("no panic");
        }
        let span = Span::new(&anchor, &states);
        let end = span.anchor();
        assert_eq!(end.count, 2);
        let first = end.head;
        let second =
            alloc_core::layout::BlockState::decode(states[first as usize].load(Ordering::Relaxed)).low;
        let last =
            alloc_core::layout::BlockState::decode(states[second as usize].load(Ordering::Relaxed)).low;
        assert_ne!(first, second);
        assert_eq!(last, Anchor::NULL);
    });
}

/// A pop races with a push-and-pop of the same head block (the ABA pattern): the tag must make
/// the stale compare-exchange fail so that no block is lost or duplicated.
#[test]
fn span_tag_defeats_aba_on_the_free_list() {
    loom::model(|| {
        let anchor = Arc::new(AtomicU64::new(0));
        let states = Arc::new(words(3));
        Span::new(&anchor, &states).init(0);
        let churn = {
            let (anchor, states) = (anchor.clone(), states.clone());
            loom::thread::spawn(move || {
                let span = Span::new(&anchor, &states);
                let a = span.pop(|| true).expect("valid").expect("free");
                let b = span.pop(|| true).expect("valid").expect("free");
                let _ = span.push(a, 1);
                vec![b]
            })
        };
        let span = Span::new(&anchor, &states);
        let mine = span.pop(|| true).expect("valid");
        let mut held = churn.join().expect("no panic");
        held.extend(mine);
        held.sort();
        held.dedup();
        assert_eq!(held.len(), if mine.is_some() { 2 } else { 1 }, "a block was handed out twice");
        assert_eq!(span.anchor().count, 3 - held.len() as u64);
    });
}

/// A batch pop (a cache refill) races with a single pop and a push of another block: no block
/// is taken twice, and every block is either taken or still on the list.
#[test]
fn batch_pop_races_with_pop_and_push_without_losing_blocks() {
    loom::model(|| {
        let anchor = Arc::new(AtomicU64::new(0));
        let states = Arc::new(words(4));
        let span = Span::new(&anchor, &states);
        span.init(0);
        let held = span.pop(|| true).expect("valid").expect("free"); // block 0, pushed back below
        let other = {
            let (anchor, states) = (anchor.clone(), states.clone());
            loom::thread::spawn(move || {
                let span = Span::new(&anchor, &states);
                let mut taken = Vec::new();
                span.pop_batch(2, || true, |index| taken.push(index)).expect("valid");
                taken
            })
        };
        let _ = span.push(held, 1);
        let mine = span.pop(|| true).expect("valid");
        if let Some(block) = mine {
            // Make the popped block live, as an allocation would: its state word no longer
            // holds a link, which a concurrent batch walk may read.
            let live = BlockState { live: true, gen: 2, alloc_type: 0, low: 0x1FF0 };
            // ORDERING (test): Release, as `Heap::hand_out` stores it.
            states[block as usize].store(live.encode(), Ordering::Release);
        }
        let mut all: Vec<u64> = other.join().expect("no panic");
        all.extend(mine);
        let mut rest = Vec::new();
        while let Some(index) = span.pop(|| true).expect("valid") {
            rest.push(index);
        }
        all.extend(rest);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3], "every block exactly once");
    });
}

/// A free that lists the span and a retirement attempt race: a span is retired only when it
/// is unlisted with every block free, and then nobody can pop from it.
#[test]
fn retirement_and_listing_agree() {
    loom::model(|| {
        let anchor = Arc::new(AtomicU64::new(0));
        let states = Arc::new(words(2));
        let span = Span::new(&anchor, &states);
        span.init(0);
        let block = span.pop(|| true).expect("valid").expect("free");
        let freer = {
            let (anchor, states) = (anchor.clone(), states.clone());
            loom::thread::spawn(move || Span::new(&anchor, &states).push(block, 1))
        };
        let retired = span.try_retire();
        let pushed = freer.join().expect("no panic");
        if retired {
            // Retiring needs every block free, so the push came first and listed the span... which
            // forbids retiring. Both cannot have happened.
            panic!("retired a span with a block in flight (push said {pushed:?})");
        }
        assert_eq!(pushed, Pushed::MustList);
        let end = span.anchor();
        assert!(end.listed && !end.retired && end.count == 2);
    });
}

/// Two threads claim overlapping runs in a small bitmap; claims never overlap and releases
/// restore an empty map.
#[test]
fn bitmap_claims_never_overlap() {
    loom::model(|| {
        let storage = Arc::new(words(1));
        let handles: Vec<_> = [0u64, 1]
            .into_iter()
            .map(|hint| {
                let storage = storage.clone();
                loom::thread::spawn(move || {
                    let map = Bitmap::new(&storage, 4);
                    map.claim(2, hint)
                })
            })
            .collect();
        let claims: Vec<Option<u64>> = handles.into_iter().map(|h| h.join().expect("no panic")).collect();
        let map = Bitmap::new(&storage, 4);
        let granted: Vec<u64> = claims.iter().flatten().copied().collect();
        assert!(!granted.is_empty(), "lock-free: at least one claim succeeds");
        if let [a, b] = granted[..] {
            assert!(a + 2 <= b || b + 2 <= a, "runs {a} and {b} overlap");
        }
        assert_eq!(map.count_set(), 2 * granted.len() as u64);
        for start in granted {
            map.release(start, 2);
        }
        assert_eq!(map.count_set(), 0);
    });
}

/// Concurrent pops and a push on a class stack: every span ends up either popped exactly once
/// or still in the stack.
#[test]
fn class_stack_loses_and_duplicates_nothing() {
    loom::model(|| {
        let head = Arc::new(AtomicU64::new(0));
        let links = Arc::new(words(3));
        let stack = SpanStack::new(&head, &links, 1, 0, 3);
        stack.push(0);
        stack.push(1);
        let popper = {
            let (head, links) = (head.clone(), links.clone());
            loom::thread::spawn(move || {
                let stack = SpanStack::new(&head, &links, 1, 0, 3);
                let first = stack.pop().expect("valid");
                let second = stack.pop().expect("valid");
                [first, second]
            })
        };
        stack.push(2);
        let mine = stack.pop().expect("valid");
        let theirs = popper.join().expect("no panic");
        let mut seen: Vec<u64> = theirs.iter().flatten().copied().chain(mine).collect();
        while let Some(left) = stack.pop().expect("valid") {
            seen.push(left);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
    });
}
