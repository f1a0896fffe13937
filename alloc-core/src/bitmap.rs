//! The page bitmap: one bit per data page, 1 = claimed. Runs of pages are claimed lock-free.
//!
//! A claim first finds a run of zero bits in a snapshot, then sets the run's bits word by word
//! in ascending order, each word with one compare-exchange that expects the run's bits to be 0.
//! If a bit turned 1 meanwhile, the words already set are cleared again and the search goes on
//! past that bit. A claim never waits for another: it only skips bits others hold. Because every
//! claimer sets words in ascending order, the claimer whose next word is the highest is never
//! undone by a claim in progress, so some claim always completes (lock-freedom).
//!
//! A process that dies in the middle of a claim leaves the bits it set so far claimed; no page
//! info points at them, and `Heap::check` reports them as orphaned.

use crate::primitive::{AtomicU64, Ordering};

/// A view of the bitmap words of one region.
#[derive(Clone, Copy)]
pub struct Bitmap<'a> {
    words: &'a [AtomicU64],
    bits: u64,
}

/// The mask of bits `from..to` within word `word`.
#[inline]
fn mask_in_word(word: u64, from: u64, to: u64) -> u64 {
    let lo = from.max(word * 64) - word * 64;
    let hi = to.min(word * 64 + 64) - word * 64;
    let upper = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

impl<'a> Bitmap<'a> {
    /// A bitmap of `bits` bits held in `words`.
    pub fn new(words: &'a [AtomicU64], bits: u64) -> Bitmap<'a> {
        debug_assert!(words.len() as u64 * 64 >= bits);
        Bitmap { words, bits }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.bits
    }

    /// True when there are no bits.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Whether `bit` is claimed (a snapshot).
    pub fn is_set(&self, bit: u64) -> bool {
        self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
    }

    /// The first bit at or after `from` and before `to` whose value is `value`, or `to`.
    fn next_with(&self, from: u64, to: u64, value: bool) -> u64 {
        let mut pos = from;
        while pos < to {
            let word = pos / 64;
            let mut bits = self.words[word as usize].load(Ordering::Relaxed);
            if !value {
                bits = !bits;
            }
            bits &= mask_in_word(word, pos, to);
            if bits != 0 {
                return word * 64 + bits.trailing_zeros() as u64;
            }
            pos = (word + 1) * 64;
        }
        to
    }

    /// Claims `len` consecutive free bits, searching from `hint` to the end and then from the
    /// start. Returns the first bit of the run, or `None` if no free run was found.
    pub fn claim(&self, len: u64, hint: u64) -> Option<u64> {
        if len == 0 || len > self.bits {
            return None;
        }
        let hint = if hint + len > self.bits { 0 } else { hint };
        self.claim_between(len, hint, self.bits)
            .or_else(|| self.claim_between(len, 0, (hint + len - 1).min(self.bits)))
    }

    fn claim_between(&self, len: u64, from: u64, to: u64) -> Option<u64> {
        let mut pos = from;
        while pos + len <= to {
            let start = self.next_with(pos, to, false);
            if start + len > to {
                return None;
            }
            let end = self.next_with(start, start + len, true);
            if end < start + len {
                pos = end + 1;
                continue;
            }
            match self.try_set(start, start + len) {
                Ok(()) => return Some(start),
                Err(taken) => pos = taken + 1,
            }
        }
        None
    }

    /// Sets bits `from..to`, all of which must be 0; on a conflict clears what it set and
    /// returns the first bit found taken.
    fn try_set(&self, from: u64, to: u64) -> Result<(), u64> {
        let first_word = from / 64;
        let last_word = (to - 1) / 64;
        for word in first_word..=last_word {
            let mask = mask_in_word(word, from, to);
            let cell = &self.words[word as usize];
            let mut current = cell.load(Ordering::Relaxed);
            loop {
                if current & mask != 0 {
                    let taken = word * 64 + (current & mask).trailing_zeros() as u64;
                    for undo in first_word..word {
                        // Nothing was written under these bits; no ordering needed to undo.
                        self.words[undo as usize].fetch_and(!mask_in_word(undo, from, to), Ordering::Relaxed);
                    }
                    return Err(taken);
                }
                // ORDERING: Acquire pairs with the Release in `release`, so everything the last
                // owner of these pages wrote (page info, epochs, its data) happens-before our use.
                match cell.compare_exchange_weak(
                    current,
                    current | mask,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        Ok(())
    }

    /// Clears bits `from..from + len`, which the caller holds.
    pub fn release(&self, from: u64, len: u64) {
        let to = from + len;
        for word in from / 64..=(to - 1) / 64 {
            // ORDERING: Release publishes every write the holder made to these pages (page info,
            // epochs, in-span metadata) to the next claimer's Acquire in `try_set`.
            self.words[word as usize].fetch_and(!mask_in_word(word, from, to), Ordering::Release);
        }
    }

    /// Number of claimed bits (a snapshot).
    pub fn count_set(&self) -> u64 {
        let mut count = 0;
        for (index, cell) in self.words.iter().enumerate() {
            let valid = mask_in_word(index as u64, 0, self.bits);
            count += (cell.load(Ordering::Relaxed) & valid).count_ones() as u64;
        }
        count
    }

    /// The longest run of free bits (a snapshot).
    pub fn largest_free_run(&self) -> u64 {
        let mut best = 0;
        let mut pos = 0;
        while pos < self.bits {
            let start = self.next_with(pos, self.bits, false);
            let end = self.next_with(start, self.bits, true);
            best = best.max(end - start);
            pos = end + 1;
        }
        best
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn claims_runs_across_word_boundaries_and_releases_them() {
        let storage = words(3);
        let map = Bitmap::new(&storage, 150);
        assert_eq!(map.claim(60, 0), Some(0));
        assert_eq!(map.claim(10, 0), Some(60));
        assert_eq!(map.claim(80, 0), Some(70));
        assert_eq!(map.claim(1, 0), None);
        assert_eq!(map.count_set(), 150);
        map.release(60, 10);
        assert_eq!(map.largest_free_run(), 10);
        assert_eq!(map.claim(11, 0), None);
        assert_eq!(map.claim(10, 100), Some(60));
    }

    #[test]
    fn claim_skips_a_taken_bit_in_the_middle_of_a_candidate_run() {
        let storage = words(2);
        let map = Bitmap::new(&storage, 128);
        storage[1].store(1 << 3, Ordering::Relaxed); // bit 67 taken
        assert_eq!(map.claim(70, 0), None);
        assert_eq!(map.claim(60, 0), Some(0));
        assert_eq!(map.claim(60, 0), Some(68));
        assert_eq!(map.count_set(), 121);
    }

    #[test]
    fn try_set_undoes_partial_claims() {
        let storage = words(2);
        let map = Bitmap::new(&storage, 128);
        storage[1].store(1 << 10, Ordering::Relaxed);
        assert_eq!(map.try_set(32, 100), Err(74));
        assert_eq!(storage[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn hint_wraps_around() {
        let storage = words(1);
        let map = Bitmap::new(&storage, 64);
        assert_eq!(map.claim(8, 60), Some(0));
        assert_eq!(map.claim(8, 40), Some(40));
        assert_eq!(map.claim(8, 40), Some(48));
        assert_eq!(map.claim(8, 40), Some(56));
        assert_eq!(map.claim(8, 40), Some(8));
    }
}
