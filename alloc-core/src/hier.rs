//! A hierarchical bitmap over span slots: the class lists ("this span may have free blocks")
//! and the empty set ("this span may be entirely free").
//!
//! Level 0 holds one bit per leaf (span slot) in 64-bit words. Every level above holds, per
//! word, 16 *summary* bits (bit `j`: child word `j` may be non-zero) and a 48-bit *version*
//! (so that a clearer stalled between reading a version and its compare-exchange cannot see the
//! version come round again: 2^48 sets under one word).
//! The top level is one word, so a search starts from one load.
//!
//! Membership is a bit: setting or clearing it is idempotent, so a participant killed between
//! changing a span and its bit leaves something anyone can put right by setting the bit again.
//! Summaries are kept safe against hiding, which is what makes bounded interference hold:
//! - `set`: leaf `fetch_or`, then at every level above, a compare-exchange that sets the
//!   summary bit *and bumps the version*, even when the bit was already set.
//! - `clear`: leaf `fetch_and`; when that emptied the word, read the parent `(bits, version)`,
//!   re-read the child, and only if it is still zero clear the summary bit by a compare-exchange
//!   against that version; cascade upwards while words become empty.
//!
//! A setter whose summary update lands between a clearer's read of the parent and its
//! compare-exchange changes the version, so the clear fails; a setter whose leaf update came
//! first is seen by the clearer's re-read of the child (the setter's summary CAS is Release and
//! the clearer's parent load Acquire, and the leaf update precedes the summary CAS). So a leaf
//! can be hidden (set, with a summary bit above it clear) only while the participant that set it
//! has not finished its `set`: a stalled setter hides its own leaf and nothing else. As a second
//! guard, a clearer looks at the child once more after clearing and sets the bit back if it is
//! no longer empty.
//!
//! Summary bits may be stale-set (their child became empty and the clearer stopped); searches
//! that meet one clear it with the same protocol and go on.

use crate::layout::HierShape;
use crate::primitive::{AtomicU64, Ordering};

/// One hierarchical bitmap: its words and shape.
#[derive(Clone, Copy)]
pub struct Hier<'a> {
    words: &'a [AtomicU64],
    shape: &'a HierShape,
}

const SUMMARY_BITS: u64 = HierShape::FAN_OUT as u64;
const VERSION_ONE: u64 = 1 << SUMMARY_BITS;
const SUMMARY_MASK: u64 = VERSION_ONE - 1;

impl<'a> Hier<'a> {
    /// A bitmap of `shape` held in `words` (`shape.total_words()` of them).
    pub fn new(words: &'a [AtomicU64], shape: &'a HierShape) -> Hier<'a> {
        debug_assert!(words.len() >= shape.total_words());
        Hier { words, shape }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> u64 {
        self.shape.leaves
    }

    fn word(&self, level: usize, index: u64) -> &AtomicU64 {
        &self.words[self.shape.offsets[level] + index as usize]
    }

    /// The bits of a word at `level` (summary bits only above level 0).
    fn bits(level: usize, word: u64) -> u64 {
        if level == 0 {
            word
        } else {
            word & SUMMARY_MASK
        }
    }

    fn fan_out(level: usize) -> u64 {
        if level == 0 {
            64
        } else {
            SUMMARY_BITS
        }
    }

    /// Whether `leaf` is set (a snapshot).
    pub fn is_set(&self, leaf: u64) -> bool {
        // ORDERING: Acquire pairs with the Release of `set`, so whatever the setter did before
        // setting the bit (publishing a span) is visible to a reader that sees it.
        self.word(0, leaf / 64).load(Ordering::Acquire) & (1 << (leaf % 64)) != 0
    }

    /// Sets `leaf` and makes sure every summary above it is set.
    pub fn set(&self, leaf: u64) {
        // ORDERING: Release publishes the caller's preceding work (e.g. the span's anchor) to a
        // searcher that finds the bit with Acquire.
        self.word(0, leaf / 64).fetch_or(1 << (leaf % 64), Ordering::Release);
        self.set_summaries(1, leaf / 64);
    }

    /// Sets the summary bits for word `child` of level `from - 1`, at `from` and every level
    /// above, bumping each version.
    fn set_summaries(&self, from: usize, mut child: u64) {
        for level in from..self.shape.levels {
            let parent = self.word(level, child / SUMMARY_BITS);
            let bit = 1 << (child % SUMMARY_BITS);
            let mut current = parent.load(Ordering::Relaxed);
            loop {
                let bumped = (current | bit).wrapping_add(VERSION_ONE);
                // ORDERING: Release, so that a clearer that reads this version (Acquire) also
                // sees the leaf bit set above when it re-reads the child.
                match parent.compare_exchange_weak(current, bumped, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
            child /= SUMMARY_BITS;
        }
    }

    /// Clears `leaf`, and the summaries above it that no longer cover a set bit.
    pub fn clear(&self, leaf: u64) {
        let bit = 1 << (leaf % 64);
        // ORDERING: AcqRel: the cascade below reasons about later loads of the same words.
        let old = self.word(0, leaf / 64).fetch_and(!bit, Ordering::AcqRel);
        if old == bit {
            self.cascade(1, leaf / 64);
        }
    }

    /// Word `child` of level `level - 1` may have become empty: clear its summary bit at
    /// `level` if it is still empty, and go on upwards while words empty.
    fn cascade(&self, mut level: usize, mut child: u64) {
        while level < self.shape.levels {
            let parent = self.word(level, child / SUMMARY_BITS);
            let bit = 1 << (child % SUMMARY_BITS);
            // ORDERING: Acquire pairs with the setters' Release summary CAS (see the module docs).
            let mut current = parent.load(Ordering::Acquire);
            loop {
                if current & bit == 0 {
                    return;
                }
                // ORDERING: Acquire: a setter's leaf update ordered before its summary CAS is seen.
                if Self::bits(level - 1, self.word(level - 1, child).load(Ordering::Acquire)) != 0 {
                    return;
                }
                let cleared = (current & !bit).wrapping_add(VERSION_ONE);
                // ORDERING: AcqRel on success (the next level reads on); Acquire on failure.
                match parent.compare_exchange_weak(current, cleared, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        // ORDERING: Acquire, as above. A child that filled up again after our
                        // check gets its bit back (its setter bumps too; this is the second guard).
                        if Self::bits(level - 1, self.word(level - 1, child).load(Ordering::Acquire)) != 0 {
                            self.set_summaries(level, child);
                            return;
                        }
                        if cleared & SUMMARY_MASK == 0 {
                            break;
                        }
                        return;
                    }
                    Err(actual) => current = actual,
                }
            }
            child /= SUMMARY_BITS;
            level += 1;
        }
    }

    /// A set leaf at or after `from`, or before it when none is after (wrapping around); `None`
    /// when no leaf is set. Stale summary bits met on the way are cleared. Only the words over
    /// leaves below `below` are read: the others may have no memory behind them, and reading
    /// them would allocate it (a leaf at or above `below` is found only in a word that also
    /// covers one below it).
    pub fn find_from(&self, from: u64, below: u64) -> Option<u64> {
        let below = below.min(self.shape.leaves);
        let from = if from >= below { 0 } else { from };
        self.find_between(from, below).or_else(|| {
            if from > 0 {
                self.find_between(0, below).filter(|&l| l < from)
            } else {
                None
            }
        })
    }

    /// The first leaf under word `index` of `level`.
    fn first_leaf(level: usize, index: u64) -> u64 {
        index.saturating_mul(64 * SUMMARY_BITS.pow(level as u32))
    }

    /// The first set leaf at or after `from`, reading only the words over leaves below `below`.
    fn find_between(&self, from: u64, below: u64) -> Option<u64> {
        // Walk up from `from`'s leaf word until a word has a candidate bit at or after the
        // position, then walk down taking the lowest set bit; a word found empty on the way
        // down (a stale summary) is cleaned up and the search resumes after it.
        let mut level = 0;
        let mut position = from; // index of a bit at `level`
        loop {
            if position >= self.level_bits(level) {
                return None;
            }
            let fan = Self::fan_out(level);
            let index = position / fan;
            if Self::first_leaf(level, index) >= below {
                return None;
            }
            // ORDERING: Acquire pairs with the Release of `set` at this level.
            let bits = Self::bits(level, self.word(level, index).load(Ordering::Acquire));
            let candidates = bits & (u64::MAX << (position % fan));
            if candidates == 0 {
                // Nothing here at or after `position`: continue from the next word, one level up.
                if level + 1 >= self.shape.levels {
                    return None;
                }
                level += 1;
                position = index + 1;
                continue;
            }
            let found = index * fan + candidates.trailing_zeros() as u64;
            if level == 0 {
                return Some(found);
            }
            // Descend into child word `found` of level `level - 1`.
            let child_level = level - 1;
            if Self::first_leaf(child_level, found) >= below {
                return None; // (a stale bit: every word after it is further still)
            }
            let child_bits = Self::bits(child_level, self.word(child_level, found).load(Ordering::Acquire));
            if child_bits == 0 {
                // Stale summary: clean it up, and look past it at this level.
                self.cascade(level, found);
                position = found + 1;
                continue;
            }
            level = child_level;
            position = found * Self::fan_out(child_level);
        }
    }

    /// Number of meaningful bit positions at `level`.
    fn level_bits(&self, level: usize) -> u64 {
        if level == 0 {
            self.shape.leaves
        } else {
            self.shape.words[level - 1] as u64
        }
    }

    /// Whether every summary bit that should be set is set (for `check` on a quiescent heap).
    /// Only the words over leaves `0..below` are read.
    pub fn summaries_cover_leaves(&self, below: u64) -> bool {
        let mut children = below.div_ceil(64);
        for level in 1..self.shape.levels {
            let words = children.min(self.shape.words[level - 1] as u64);
            children = words.div_ceil(SUMMARY_BITS);
            for child in 0..words {
                let child_bits = Self::bits(level - 1, self.word(level - 1, child).load(Ordering::Relaxed));
                let summary = self.word(level, child / SUMMARY_BITS).load(Ordering::Relaxed);
                if child_bits != 0 && summary & (1 << (child % SUMMARY_BITS)) == 0 {
                    return false;
                }
            }
        }
        true
    }

    /// Sets every summary bit above a set leaf below `below` (repair of a quiescent heap).
    pub fn rebuild_summaries(&self, below: u64) {
        let mut leaf_word = 0;
        while leaf_word < below.div_ceil(64).min(self.shape.words[0] as u64) {
            let bits = self.word(0, leaf_word).load(Ordering::Relaxed);
            if bits != 0 {
                self.set(leaf_word * 64 + bits.trailing_zeros() as u64);
            }
            leaf_word += 1;
        }
    }
}

#[cfg(all(test, not(all(shmpool_loom, feature = "loom"))))]
mod tests {
    use super::*;

    fn storage(leaves: u64) -> (Vec<AtomicU64>, HierShape) {
        let shape = HierShape::new(leaves);
        ((0..shape.total_words()).map(|_| AtomicU64::new(0)).collect(), shape)
    }

    #[test]
    fn finds_set_leaves_from_a_position_and_wraps_around() {
        for leaves in [1u64, 64, 100, 5000, 70_000] {
            let (words, shape) = storage(leaves);
            let map = Hier::new(&words, &shape);
            assert_eq!(map.find_from(0, map.leaves()), None);
            let picks: Vec<u64> = [0, leaves / 3, leaves - 1].into_iter().collect();
            for &leaf in &picks {
                map.set(leaf);
            }
            for &leaf in &picks {
                assert_eq!(map.find_from(leaf, map.leaves()), Some(leaf), "{leaves}");
                assert!(map.is_set(leaf));
            }
            assert_eq!(map.find_from(leaves - 1, map.leaves()), Some(leaves - 1));
            if leaves > 1 {
                map.clear(leaves - 1);
                assert_eq!(map.find_from(leaves - 1, map.leaves()), Some(0), "wraps to the first set leaf");
            }
            for &leaf in &picks {
                map.clear(leaf);
            }
            assert_eq!(map.find_from(0, map.leaves()), None);
            assert!(map.summaries_cover_leaves(map.leaves()));
            // Every summary above cleared leaves is clear again.
            for (level, &offset) in shape.offsets.iter().enumerate().take(shape.levels) {
                for word in &words[offset..offset + shape.words[level]] {
                    assert_eq!(word.load(Ordering::Relaxed) & SUMMARY_MASK, 0);
                }
            }
        }
    }

    #[test]
    fn a_bounded_search_finds_nothing_at_or_above_its_bound() {
        let (words, shape) = storage(70_000);
        let map = Hier::new(&words, &shape);
        assert_eq!(map.find_from(0, 0), None);
        for leaf in [100, 1100, 66_000] {
            map.set(leaf);
        }
        assert_eq!(map.find_from(0, 1024), Some(100));
        assert_eq!(map.find_from(200, 1024), Some(100), "wraps below the bound");
        assert_eq!(map.find_from(200, 1089), Some(1100), "a set leaf in a word that covers the bound");
        assert_eq!(map.find_from(2000, 65_536), Some(100));
        assert_eq!(map.find_from(2000, 70_000), Some(66_000));
        map.clear(100);
        assert_eq!(map.find_from(0, 1024), None);
    }

    #[test]
    fn a_stale_summary_is_cleaned_up_by_a_search() {
        let (words, shape) = storage(10_000);
        let map = Hier::new(&words, &shape);
        map.set(5000);
        // Clear the leaf behind the summaries' back, as a clearer stopped mid-cascade would.
        words[shape.offsets[0] + 5000 / 64].store(0, Ordering::Relaxed);
        map.set(9000);
        assert_eq!(map.find_from(0, map.leaves()), Some(9000));
        assert_eq!(map.find_from(0, map.leaves()), Some(9000));
        map.clear(9000);
        assert_eq!(map.find_from(0, map.leaves()), None);
        for level in 1..shape.levels {
            for word in &words[shape.offsets[level]..shape.offsets[level] + shape.words[level]] {
                assert_eq!(word.load(Ordering::Relaxed) & SUMMARY_MASK, 0, "level {level}");
            }
        }
    }

    #[test]
    fn rebuilding_summaries_makes_every_leaf_findable() {
        let (words, shape) = storage(3000);
        let map = Hier::new(&words, &shape);
        words[shape.offsets[0] + 2000 / 64].store(1 << (2000 % 64), Ordering::Relaxed);
        assert!(!map.summaries_cover_leaves(map.leaves()));
        assert_eq!(map.find_from(0, map.leaves()), None);
        map.rebuild_summaries(map.leaves());
        assert!(map.summaries_cover_leaves(map.leaves()));
        assert_eq!(map.find_from(0, map.leaves()), Some(2000));
    }
}
