//! The page bitmap: two bits per data page, *claimed* and *head*, 32 pages per word (the claimed
//! bits in its low half, the head bits in its high half: the claimed bits, which every search and
//! summary reads, need no unpacking). A run of pages (a span or a large allocation) is a head bit
//! on its first page and claimed bits on all of its pages, so the bits alone say where runs
//! begin.
//!
//! A claim first finds a run of unclaimed pages in a snapshot, then sets the run's bits word by
//! word in *ascending* order, each word with one compare-exchange that expects the run's bits to
//! be 0; the first word also sets the head bit. If a bit turned 1 meanwhile, the words already
//! set are cleared again in *descending* order and the search goes on past that bit. Releases
//! clear words in descending order too. So at every instant the bits a claimer or releaser holds
//! are a *prefix* of its run that starts with its head bit: if it is killed, the prefix is
//! recognisable ([`PageBits::held_prefix`]) and can be given back.
//!
//! A claim never waits for another: it only skips bits others hold. Because every claimer sets
//! words in ascending order, the claimer whose next word is the highest is never undone by a
//! claim in progress, so some claim always completes (lock-freedom).

use crate::layout::SPAN_PAGES;
use crate::primitive::{AtomicU64, Ordering};

/// Pages per bitmap word.
pub const PAGES_PER_WORD: u64 = 32;
const CLAIMED_BITS: u64 = 0x0000_0000_FFFF_FFFF;
const HEAD_SHIFT: u64 = PAGES_PER_WORD;

/// A view of the page-bitmap words of one region.
#[derive(Clone, Copy)]
pub struct PageBits<'a> {
    words: &'a [AtomicU64],
    pages: u64,
}

/// The claimed bits of `word`, one bit per page.
#[inline]
fn claimed_of(word: u64) -> u64 {
    word & CLAIMED_BITS
}

/// Both bits of pages `from..to` that fall in word `word`.
#[inline]
fn pair_mask(word: u64, from: u64, to: u64) -> u64 {
    let lo = from.max(word * PAGES_PER_WORD) - word * PAGES_PER_WORD;
    let hi = to.min((word + 1) * PAGES_PER_WORD) - word * PAGES_PER_WORD;
    let claimed = ((1u64 << hi) - 1) & !((1u64 << lo) - 1);
    claimed | claimed << HEAD_SHIFT
}

#[inline]
fn head_bit(page: u64) -> u64 {
    1 << (HEAD_SHIFT + page % PAGES_PER_WORD)
}

#[inline]
fn claimed_bit(page: u64) -> u64 {
    1 << (page % PAGES_PER_WORD)
}

impl<'a> PageBits<'a> {
    /// The free bits of a bitmap word, one bit per page (bit `i`: page `i` of the word is
    /// unclaimed).
    #[inline]
    pub fn free_of(word: u64) -> u32 {
        !(claimed_of(word) as u32)
    }

    /// The bits of `page` in its word: its claimed bit, its head bit, or both (for tests and
    /// tools that forge or damage words).
    pub fn page_mask(page: u64, claimed: bool, head: bool) -> u64 {
        (if claimed { claimed_bit(page) } else { 0 }) | if head { head_bit(page) } else { 0 }
    }

    /// A bitmap of `pages` pages held in `words`.
    pub fn new(words: &'a [AtomicU64], pages: u64) -> PageBits<'a> {
        debug_assert!(words.len() as u64 * PAGES_PER_WORD >= pages);
        PageBits { words, pages }
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    fn word(&self, page: u64) -> u64 {
        self.words[(page / PAGES_PER_WORD) as usize].load(Ordering::Relaxed)
    }

    /// Whether `page` is claimed (a snapshot).
    pub fn is_claimed(&self, page: u64) -> bool {
        self.word(page) & claimed_bit(page) != 0
    }

    /// Whether `page` carries a head bit (a snapshot).
    pub fn is_head(&self, page: u64) -> bool {
        self.word(page) & head_bit(page) != 0
    }

    /// The first page at or after `from` and before `to` whose claimed bit is `value`, or `to`.
    fn next_with(&self, from: u64, to: u64, value: bool) -> u64 {
        let mut pos = from;
        while pos < to {
            let word = pos / PAGES_PER_WORD;
            let mut bits = claimed_of(self.words[word as usize].load(Ordering::Relaxed));
            if !value {
                bits = !bits & 0xFFFF_FFFF;
            }
            let lo = pos - word * PAGES_PER_WORD;
            bits &= u64::MAX << lo;
            let hi = (to - word * PAGES_PER_WORD).min(PAGES_PER_WORD);
            bits &= (1u64 << hi) - 1;
            if bits != 0 {
                return word * PAGES_PER_WORD + bits.trailing_zeros() as u64;
            }
            pos = (word + 1) * PAGES_PER_WORD;
        }
        to
    }

    /// The lowest run of `len` unclaimed pages at or after `from`, in a snapshot.
    pub fn find_run(&self, len: u64, from: u64) -> Option<u64> {
        if len == 0 || len > self.pages {
            return None;
        }
        self.find_between(len, from, self.pages)
    }

    fn find_between(&self, len: u64, from: u64, to: u64) -> Option<u64> {
        let mut pos = from;
        while pos + len <= to {
            let start = self.next_with(pos, to, false);
            if start + len > to {
                return None;
            }
            let end = self.next_with(start, start + len, true);
            if end == start + len {
                return Some(start);
            }
            pos = end + 1;
        }
        None
    }

    /// The lowest unclaimed aligned span slot (`SPAN_PAGES` pages starting at a multiple of it)
    /// at or after slot `from`, in a snapshot; `slots` bounds the search.
    pub fn find_slot(&self, from: u64, slots: u64) -> Option<u64> {
        const _: () = assert!(SPAN_PAGES * 2 == PAGES_PER_WORD);
        (from..slots).find(|&slot| {
            let word = self.words[(slot / 2) as usize].load(Ordering::Relaxed);
            claimed_of(word) >> (slot % 2 * SPAN_PAGES) & 0xFFFF == 0
        })
    }

    /// Sets the bits of pages `from..to` (all of which must be unclaimed), the head bit of `from`
    /// included; on a conflict clears what it set (descending) and returns the first page found
    /// taken.
    pub fn try_claim(&self, from: u64, to: u64) -> Result<(), u64> {
        let first_word = from / PAGES_PER_WORD;
        let last_word = (to - 1) / PAGES_PER_WORD;
        for word in first_word..=last_word {
            let range = pair_mask(word, from, to);
            let set = (range & CLAIMED_BITS) | if word == first_word { head_bit(from) } else { 0 };
            let cell = &self.words[word as usize];
            let mut current = cell.load(Ordering::Relaxed);
            loop {
                if current & range != 0 {
                    // The lowest page with either bit set (a head bit alone: a damaged word).
                    let held = current & range;
                    let taken =
                        word * PAGES_PER_WORD + claimed_of(held | held >> HEAD_SHIFT).trailing_zeros() as u64;
                    self.clear_words(first_word, word, from, to);
                    return Err(taken);
                }
                // ORDERING: Acquire pairs with the Release in `release`/`clear_words`, so
                // everything the last holder of these pages wrote (page info, epochs, in-span
                // metadata, its data) happens-before our use.
                match cell.compare_exchange_weak(current, current | set, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        Ok(())
    }

    /// Clears both bits of pages `from..to` in words `first_word..end_word`, highest word first.
    fn clear_words(&self, first_word: u64, end_word: u64, from: u64, to: u64) {
        for word in (first_word..end_word).rev() {
            // ORDERING: Release publishes every write the holder made to these pages (page info,
            // epochs, in-span metadata) to the next claimer's Acquire in `try_claim`.
            self.words[word as usize].fetch_and(!pair_mask(word, from, to), Ordering::Release);
        }
    }

    /// Clears the bits of pages `from..from + len`, which the caller holds, highest word first
    /// (so that what is still held is always a prefix starting with the head bit).
    pub fn release(&self, from: u64, len: u64) {
        if len == 0 {
            return;
        }
        let to = from + len;
        self.clear_words(from / PAGES_PER_WORD, (to - 1) / PAGES_PER_WORD + 1, from, to);
    }

    /// Sets the head and claimed bits of `page`: the head of a run that lost its head bit.
    /// Repair of a quiescent heap only.
    pub fn mark_head(&self, page: u64) {
        // ORDERING: Relaxed: nobody else runs.
        self.words[(page / PAGES_PER_WORD) as usize]
            .fetch_or(head_bit(page) | claimed_bit(page), Ordering::Relaxed);
    }

    /// Sets the claimed bits of pages `from..to` (no head bit): pages of the run before them
    /// whose bits were lost. Repair of a quiescent heap only.
    pub fn mark_members(&self, from: u64, to: u64) {
        for word in from / PAGES_PER_WORD..to.div_ceil(PAGES_PER_WORD) {
            // ORDERING: Relaxed: nobody else runs.
            self.words[word as usize].fetch_or(pair_mask(word, from, to) & CLAIMED_BITS, Ordering::Relaxed);
        }
    }

    /// The end of the prefix of pages a claimer or releaser of a run starting at `head` still
    /// holds: `head` itself if it carries no head bit (nothing held), else the first page after
    /// `head` that is unclaimed or is another run's head (bounded by `limit`).
    pub fn held_prefix(&self, head: u64, limit: u64) -> u64 {
        if !self.is_head(head) {
            return head;
        }
        let mut end = head + 1;
        while end < limit && self.is_claimed(end) && !self.is_head(end) {
            end += 1;
        }
        end
    }

    /// Number of claimed pages (a snapshot; reads only the words of this bitmap's pages).
    pub fn count_claimed(&self) -> u64 {
        let words = &self.words[..self.pages.div_ceil(PAGES_PER_WORD) as usize];
        let mask = |index: usize, word: u64| match index as u64 == self.pages / PAGES_PER_WORD {
            true => word & pair_mask(index as u64, 0, self.pages),
            false => word,
        };
        words
            .iter()
            .enumerate()
            .map(|(index, cell)| claimed_of(mask(index, cell.load(Ordering::Relaxed))).count_ones() as u64)
            .sum()
    }

    /// The longest run of unclaimed pages (a snapshot), where `beyond` more unclaimed pages
    /// follow this bitmap's last page (a view below a high-water mark).
    pub fn largest_free_run(&self, beyond: u64) -> u64 {
        let mut best = beyond;
        let mut pos = 0;
        while pos < self.pages {
            let start = self.next_with(pos, self.pages, false);
            let end = self.next_with(start, self.pages, true);
            let tail = if end == self.pages { beyond } else { 0 };
            best = best.max(end - start + tail);
            pos = end + 1;
        }
        best
    }

    /// The first page of the unclaimed pages that end this bitmap (`pages` if its last page is
    /// claimed), in a snapshot.
    pub fn free_tail(&self) -> u64 {
        let mut word = self.pages.div_ceil(PAGES_PER_WORD);
        while word > 0 {
            word -= 1;
            let claimed = claimed_of(
                self.words[word as usize].load(Ordering::Relaxed) & pair_mask(word, 0, self.pages),
            );
            if claimed != 0 {
                return word * PAGES_PER_WORD + 64 - claimed.leading_zeros() as u64;
            }
        }
        0
    }

    /// The first claimed page at or after `from` (or `pages`): lets walks skip unclaimed space.
    pub fn next_claimed(&self, from: u64) -> u64 {
        self.next_with(from, self.pages, true)
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn claims_runs_across_word_boundaries_with_head_bits_and_releases_them() {
        let storage = words(5);
        let map = PageBits::new(&storage, 150);
        assert_eq!(map.find_run(60, 0), Some(0));
        assert_eq!(map.try_claim(0, 60), Ok(()));
        assert!(map.is_head(0) && !map.is_head(1) && map.is_claimed(59) && !map.is_claimed(60));
        assert_eq!(map.find_run(10, 0), Some(60));
        assert_eq!(map.try_claim(60, 70), Ok(()));
        assert_eq!(map.try_claim(70, 150), Ok(()));
        assert_eq!(map.find_run(1, 0), None);
        assert_eq!(map.count_claimed(), 150);
        assert_eq!(map.held_prefix(60, 150), 70, "stops at the next run's head");
        map.release(60, 10);
        assert_eq!(map.largest_free_run(0), 10);
        assert_eq!(PageBits::new(&storage, 70).largest_free_run(5), 15, "a view below a high-water mark");
        assert_eq!(PageBits::new(&storage, 70).count_claimed(), 60);
        map.release(140, 10);
        assert_eq!(PageBits::new(&storage, 140).largest_free_run(10), 10);
        assert_eq!(map.largest_free_run(0), 10);
        assert_eq!(map.count_claimed(), 130);
        assert!(map.try_claim(140, 150).is_ok());
        assert_eq!(map.find_run(11, 0), None);
        assert_eq!(map.find_run(10, 60), Some(60));
        assert_eq!(map.find_run(10, 61), None, "at or after the page asked for, no wrapping");
        assert_eq!(map.held_prefix(60, 150), 60, "no head bit: nothing held");
    }

    #[test]
    fn a_conflicting_claim_undoes_what_it_set() {
        let storage = words(4);
        let map = PageBits::new(&storage, 128);
        assert_eq!(map.try_claim(70, 71), Ok(()));
        assert_eq!(map.try_claim(10, 100), Err(70));
        assert_eq!(map.count_claimed(), 1);
        assert!(!map.is_head(10));
    }

    /// Review of 4782daf: a damaged word with a head bit whose claimed bit is clear made a
    /// conflicting claim report a page past the word (64 past it), so a search skipped the
    /// free pages up to there.
    #[test]
    fn a_conflict_on_a_lone_head_bit_reports_its_page() {
        let storage = words(2);
        let map = PageBits::new(&storage, 40);
        storage[0].fetch_or(PageBits::page_mask(5, false, true), Ordering::Relaxed);
        assert_eq!(map.try_claim(0, 10), Err(5));
        assert_eq!(map.count_claimed(), 0, "the losing claim undid its bits");
    }

    #[test]
    fn aligned_slots_are_found_in_free_halves() {
        let storage = words(4);
        let map = PageBits::new(&storage, 128);
        assert_eq!(map.try_claim(3, 4), Ok(()));
        assert_eq!(map.find_slot(0, 8), Some(1));
        assert_eq!(map.try_claim(16, 32), Ok(()));
        assert_eq!(map.find_slot(0, 8), Some(2));
        assert_eq!(map.find_slot(7, 8), Some(7));
    }

    #[test]
    fn a_prefix_left_by_an_interrupted_claim_is_recognisable() {
        let storage = words(4);
        let map = PageBits::new(&storage, 128);
        // A claim of 20..90 stopped after its first two words: pages 20..64 set, head at 20.
        storage[0].fetch_or(pair_mask(0, 20, 32) & CLAIMED_BITS | head_bit(20), Ordering::Relaxed);
        storage[1].fetch_or(pair_mask(1, 32, 64) & CLAIMED_BITS, Ordering::Relaxed);
        assert_eq!(map.held_prefix(20, 128), 64);
        map.release(20, 64 - 20);
        assert_eq!(map.count_claimed(), 0);
        // A releaser that cleared everything before it stopped holds nothing, even at page 0.
        assert_eq!(map.held_prefix(0, 128), 0);
        map.release(0, 0);
        assert_eq!(map.count_claimed(), 0);
    }
}
