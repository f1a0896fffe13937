//! Loom models of the hierarchical bitmap (`alloc_core::hier::Hier`: the class lists and the
//! empty set) on its own: sets, clears with their summary cascade, and searches that clean up
//! stale summaries, racing one another.
#![cfg(shmpool_loom)]

use alloc_core::hier::Hier;
use alloc_core::layout::HierShape;
use alloc_core::primitive::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom_tests::{explore, spawn, words};

/// Leaves enough for three levels (18 leaf words, 2 summary words, 1 top word), so that a clear
/// can cascade twice.
const LEAVES: u64 = 1100;

/// A bitmap's words and shape, shared by the modelled threads.
struct Storage {
    words: Vec<AtomicU64>,
    shape: HierShape,
}

impl Storage {
    /// An empty bitmap of [`LEAVES`] leaves with `set` leaves set.
    fn new(set: &[u64]) -> Arc<Storage> {
        let shape = HierShape::new(LEAVES);
        assert_eq!(shape.levels, 3);
        let storage = Storage { words: words(shape.total_words()), shape };
        for &leaf in set {
            storage.map().set(leaf);
        }
        Arc::new(storage)
    }

    fn map(&self) -> Hier<'_> {
        Hier::new(&self.words, &self.shape)
    }
}

/// Interleaving: leaf 0 is the only set leaf of its leaf word; one thread clears it (the word
/// empties, so it clears the summary bit above, and the next level's if that empties too) while
/// another sets leaf 64 (another leaf word under the same summary word: leaf, then each summary
/// with a version bump) and then searches from leaf 1.
///
/// Invariant: once `set` returned, a search finds the leaf: the clearer's cascade never clears a
/// summary bit the setter needs; at the end every set leaf is covered by its summaries.
#[test]
fn a_clearer_never_hides_a_leaf_set_under_the_same_summary() {
    clearer_of_leaf_0_racing_a_setter_of(64);
}

/// Leaf 0 set; one thread clears it while another sets `leaf` and searches from 1; then every
/// set leaf is covered and found, and leaf 0 is clear.
fn clearer_of_leaf_0_racing_a_setter_of(leaf: u64) {
    explore(5_000, move || {
        let storage = Storage::new(&[0]);
        let clearer = {
            let storage = storage.clone();
            spawn(move || storage.map().clear(0))
        };
        let setter = {
            let storage = storage.clone();
            spawn(move || {
                let map = storage.map();
                map.set(leaf);
                assert_eq!(
                    map.find_from(1, map.leaves()),
                    Some(leaf),
                    "a leaf its setter finished setting is hidden"
                );
            })
        };
        clearer.join().expect("no panic");
        setter.join().expect("no panic");
        let map = storage.map();
        assert!(map.summaries_cover_leaves(map.leaves()), "a summary hides a set leaf");
        assert_eq!(map.find_from(0, map.leaves()), Some(leaf));
        assert!(!map.is_set(0));
    });
}

/// Interleaving: as above, with the setter's leaf in the clearer's own leaf word (leaf 1 beside
/// leaf 0): the clearer's `fetch_and` may or may not leave the word empty, and its re-read of
/// the child before clearing a summary races the setter's leaf and summary updates.
///
/// Invariant: once `set` returned, a search finds leaf 1; the summaries cover it at the end.
#[test]
fn a_clearer_never_hides_a_leaf_set_in_the_same_word() {
    clearer_of_leaf_0_racing_a_setter_of(1);
}

/// Interleaving: a clearer stopped after clearing leaf 64 and before its cascade (emulated by
/// zeroing the leaf word behind the summaries' back) left stale summary bits; one thread searches
/// (meets the stale bits, cleans them up with the clear protocol, goes on) while another sets
/// leaf 65 in that very leaf word and then searches itself.
///
/// Invariant: the cleaning search never hides the new leaf: once `set` returned, a search finds
/// it, and at the end the summaries cover it and the stale bits never hid anything else.
#[test]
fn a_search_cleaning_a_stale_summary_never_hides_a_leaf_being_set() {
    explore(5_000, || {
        let storage = Storage::new(&[64]);
        // ORDERING (test): before the threads start; the spawn orders it.
        storage.words[storage.shape.offsets[0] + 1].store(0, Ordering::Relaxed);
        let searcher = {
            let storage = storage.clone();
            spawn(move || {
                let map = storage.map();
                map.find_from(0, map.leaves())
            })
        };
        let setter = {
            let storage = storage.clone();
            spawn(move || {
                let map = storage.map();
                map.set(65);
                assert_eq!(
                    map.find_from(0, map.leaves()),
                    Some(65),
                    "a leaf its setter finished setting is hidden"
                );
            })
        };
        let found = searcher.join().expect("no panic");
        setter.join().expect("no panic");
        assert!(matches!(found, None | Some(65)), "the search found a leaf nobody set: {found:?}");
        let map = storage.map();
        assert!(map.summaries_cover_leaves(map.leaves()), "a summary hides a set leaf");
        assert_eq!(map.find_from(0, map.leaves()), Some(65));
    });
}
