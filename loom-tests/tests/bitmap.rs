//! Loom models of the page bitmap (`alloc_core::bitmap::PageBits`) on its own: run claims
//! (ascending, one compare-exchange per word, undone descending on a conflict), releases, and
//! the held prefix a reclaimer reads for a claimer that stopped.
#![cfg(shmpool_loom)]

use alloc_core::bitmap::{PageBits, PAGES_PER_WORD};
use alloc_core::primitive::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom_tests::{explore, spawn, words};

/// Pages of the modelled bitmap: two words, so that runs cross a word boundary (page 32).
const PAGES: u64 = 64;

fn bitmap() -> Arc<Vec<AtomicU64>> {
    Arc::new(words((PAGES / PAGES_PER_WORD) as usize))
}

fn bits(storage: &[AtomicU64]) -> PageBits<'_> {
    PageBits::new(storage, PAGES)
}

/// Runs claim `from..to` on a thread of its own.
fn claiming(storage: &Arc<Vec<AtomicU64>>, from: u64, to: u64) -> loom::thread::JoinHandle<Result<(), u64>> {
    let storage = storage.clone();
    spawn(move || bits(&storage).try_claim(from, to))
}

/// Checks that exactly one of two overlapping claims won and the loser left nothing.
fn exactly_one_won(storage: &[AtomicU64], runs: [(u64, u64); 2], outcomes: [Result<(), u64>; 2]) {
    let won: Vec<usize> = (0..2).filter(|&at| outcomes[at].is_ok()).collect();
    assert_eq!(won.len(), 1, "overlapping claims {runs:?} ended {outcomes:?}: exactly one must win");
    let (winner, loser) = (runs[won[0]], runs[1 - won[0]]);
    let map = bits(storage);
    assert_eq!(map.count_claimed(), winner.1 - winner.0, "the loser left pages claimed");
    assert!(map.is_head(winner.0), "the winner's run has no head bit");
    assert!(!map.is_head(loser.0), "the loser left a head bit");
    assert_eq!(map.held_prefix(winner.0, PAGES), winner.1, "the winner holds its whole run");
    assert_eq!(map.held_prefix(loser.0, PAGES), loser.0, "the loser holds nothing");
}

/// Interleaving: two claims of overlapping runs that both start in the first word (20..40 and
/// 30..50), each loading and compare-exchanging word 0 and then word 1.
///
/// Invariant: exactly one succeeds (never both, and lock-freedom: never neither); the loser
/// leaves no bit set; the winner holds its whole run with its head bit.
#[test]
fn overlapping_claims_never_both_succeed_and_the_loser_leaves_nothing() {
    explore(5_000, || {
        let storage = bitmap();
        let runs = [(20, 40), (30, 50)];
        let first = claiming(&storage, runs[0].0, runs[0].1);
        let second = claiming(&storage, runs[1].0, runs[1].1);
        let outcomes = [first.join().expect("no panic"), second.join().expect("no panic")];
        exactly_one_won(&storage, runs, outcomes);
    });
}

/// Interleaving: a claim of 10..40 sets word 0 and then may meet, in word 1, a claim of 35..50
/// (which only touches word 1), or take word 1 first and make that claim fail.
///
/// Invariant: exactly one claim succeeds; a claim that fails in its second word undoes its
/// first (the loser holds nothing, not even its head bit); the winner holds its whole run.
/// (`held_prefix` is not checked while the claimer is live: it is a page-by-page walk, meant
/// for a claimer that stopped; the next model covers that.)
#[test]
fn a_claim_that_conflicts_in_its_second_word_undoes_its_first() {
    explore(5_000, || {
        let storage = bitmap();
        let runs = [(10, 40), (35, 50)];
        let first = claiming(&storage, runs[0].0, runs[0].1);
        let second = claiming(&storage, runs[1].0, runs[1].1);
        let outcomes = [first.join().expect("no panic"), second.join().expect("no panic")];
        exactly_one_won(&storage, runs, outcomes);
    });
}

/// Interleaving: a claimer of 20..50 stopped after setting its first word (pages 20..32 and the
/// head bit; written by hand as `try_claim` writes them). A reclaimer reads its held prefix and
/// releases it, while another participant claims 30..50, which conflicts with the stopped
/// claimer's pages until they are released.
///
/// Invariant: the reclaimer's held prefix is exactly 20..32 (the new claim never holds word 0
/// while the stopped prefix does); the new claim succeeds only after the release, and then
/// alone holds its pages; otherwise nothing is left claimed.
#[test]
fn the_held_prefix_of_a_stopped_claim_is_released_whole_while_others_claim() {
    explore(5_000, || {
        let storage = bitmap();
        let stopped: u64 = (20..32).map(|page| PageBits::page_mask(page, true, page == 20)).sum::<u64>();
        // ORDERING (test): before the threads start; the spawn orders it.
        storage[0].store(stopped, Ordering::Relaxed);
        let reclaimer = {
            let storage = storage.clone();
            spawn(move || {
                let map = bits(&storage);
                let prefix = map.held_prefix(20, PAGES);
                map.release(20, prefix - 20);
                prefix
            })
        };
        let other = claiming(&storage, 30, 50);
        let prefix = reclaimer.join().expect("no panic");
        let claimed = other.join().expect("no panic");
        assert_eq!(prefix, 32, "the stopped claimer's prefix is its first word");
        let map = bits(&storage);
        match claimed {
            Ok(()) => {
                assert_eq!(map.count_claimed(), 20, "the new run alone is claimed");
                assert!(map.is_head(30) && !map.is_head(20));
            }
            Err(taken) => {
                assert!(
                    (30..32).contains(&taken),
                    "the claim failed on page {taken}, not the stopped prefix"
                );
                assert_eq!(map.count_claimed(), 0, "something stayed claimed");
            }
        }
    });
}
