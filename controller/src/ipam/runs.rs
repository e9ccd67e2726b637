//! A set of taken address ordinals stored as maximal runs, so memory follows what is taken,
//! never the size of the pool, and the first free ordinal is found in O(log n).

use std::collections::BTreeMap;

/// Taken ordinals as disjoint, non-adjacent inclusive runs `start -> end`.
///
/// Because adjacent runs are always merged, the ordinal after a run's end is free: finding the
/// first free ordinal from `lo` is one lookup of the run containing `lo`, however fragmented the
/// set is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunSet {
    runs: BTreeMap<u128, u128>,
    len: u128,
}

impl RunSet {
    /// How many ordinals are taken.
    pub(crate) fn len(&self) -> u128 {
        self.len
    }

    /// How many runs hold them (the memory cost).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The run containing `x`, if any.
    fn run_of(&self, x: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=x)
            .next_back()
            .filter(|&(_, &end)| x <= end)
            .map(|(&start, &end)| (start, end))
    }

    pub(crate) fn contains(&self, x: u128) -> bool {
        self.run_of(x).is_some()
    }

    /// Takes `x`; false when it was already taken.
    pub(crate) fn insert(&mut self, x: u128) -> bool {
        if self.contains(x) {
            return false;
        }
        let before = x
            .checked_sub(1)
            .and_then(|prev| self.run_of(prev))
            .map(|(start, _)| start);
        let after = x
            .checked_add(1)
            .and_then(|next| self.runs.get(&next).map(|&end| (next, end)));
        let start = before.unwrap_or(x);
        let end = match after {
            Some((next, end)) => {
                self.runs.remove(&next);
                end
            }
            None => x,
        };
        self.runs.insert(start, end);
        self.len += 1;
        true
    }

    /// Frees `x`; false when it was not taken.
    pub(crate) fn remove(&mut self, x: u128) -> bool {
        let Some((start, end)) = self.run_of(x) else {
            return false;
        };
        self.runs.remove(&start);
        if start < x {
            self.runs.insert(start, x - 1);
        }
        if x < end {
            self.runs.insert(x + 1, end);
        }
        self.len -= 1;
        true
    }

    /// The lowest ordinal in `lo..=hi` that is not taken.
    pub(crate) fn first_free(&self, lo: u128, hi: u128) -> Option<u128> {
        if lo > hi {
            return None;
        }
        let candidate = match self.run_of(lo) {
            Some((_, end)) => end.checked_add(1)?,
            None => lo,
        };
        (candidate <= hi).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn runs_merge_and_split() {
        let mut set = RunSet::default();
        for x in [1, 3, 2, 5] {
            assert!(set.insert(x));
        }
        assert!(!set.insert(2));
        assert_eq!((set.len(), set.runs()), (4, 2));
        assert_eq!(set.first_free(1, 10), Some(4));
        assert_eq!(set.first_free(0, 10), Some(0));
        assert!(set.remove(2));
        assert!(!set.remove(2));
        assert_eq!((set.len(), set.runs()), (3, 3));
        assert_eq!(set.first_free(1, 10), Some(2));
        assert_eq!(set.first_free(5, 5), None);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut set = RunSet::default();
        assert!(set.insert(u128::MAX));
        assert!(set.insert(0));
        assert_eq!(set.first_free(u128::MAX, u128::MAX), None);
        assert_eq!(set.first_free(0, u128::MAX), Some(1));
        assert!(set.remove(u128::MAX));
        assert_eq!(
            set.first_free(u128::MAX - 1, u128::MAX),
            Some(u128::MAX - 1)
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u128..64), 0..200)) {
            let mut set = RunSet::default();
            let mut model = BTreeSet::new();
            for (insert, x) in ops {
                if insert {
                    prop_assert_eq!(set.insert(x), model.insert(x));
                } else {
                    prop_assert_eq!(set.remove(x), model.remove(&x));
                }
                prop_assert_eq!(set.len(), model.len() as u128);
                for lo in [0u128, 7, 30] {
                    let expected = (lo..=63).find(|x| !model.contains(x));
                    prop_assert_eq!(set.first_free(lo, 63), expected);
                }
            }
        }
    }
}
