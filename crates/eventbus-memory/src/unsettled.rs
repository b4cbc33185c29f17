//! [`Unsettled`]: the offsets a group was given and has not settled yet.

use std::collections::VecDeque;

/// Offsets delivered and not settled. Deliveries are almost always in offset order and acks
/// close behind, so a window of flags over `start..` (its front always set) does in O(1) and
/// without allocating per message what a sorted set would do in O(log n) with node allocations.
#[derive(Debug, Default)]
pub(crate) struct Unsettled {
    start: u64,
    flags: VecDeque<bool>,
    count: usize,
}

impl Unsettled {
    pub(crate) fn insert(&mut self, offset: u64) {
        if self.flags.is_empty() {
            self.start = offset;
        }
        if offset < self.start {
            // A redelivery below the window: widen it down to the offset.
            for _ in offset + 1..self.start {
                self.flags.push_front(false);
            }
            self.flags.push_front(true);
            self.start = offset;
        } else {
            let i = (offset - self.start) as usize;
            if i == self.flags.len() {
                // The next offset: the common case, and a push costs less than a resize.
                self.flags.push_back(true);
            } else {
                if i > self.flags.len() {
                    self.flags.resize(i + 1, false);
                }
                debug_assert!(!self.flags[i], "offset {offset} delivered twice");
                self.flags[i] = true;
            }
        }
        self.count += 1;
    }

    /// Whether `offset` was unsettled (it is not any more).
    pub(crate) fn remove(&mut self, offset: u64) -> bool {
        let Some(i) = offset.checked_sub(self.start) else {
            return false;
        };
        match self.flags.get_mut(i as usize) {
            Some(flag) if *flag => *flag = false,
            _ => return false,
        }
        self.count -= 1;
        while self.flags.front() == Some(&false) {
            self.flags.pop_front();
            self.start += 1;
        }
        true
    }

    #[cfg(test)]
    fn first(&self) -> Option<u64> {
        (!self.flags.is_empty()).then_some(self.start)
    }

    pub(crate) fn contains(&self, offset: u64) -> bool {
        offset
            .checked_sub(self.start)
            .and_then(|i| self.flags.get(i as usize))
            .is_some_and(|&flag| flag)
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::Unsettled;
    use std::collections::BTreeSet;

    /// The window answers as the sorted set it replaces, over acks out of order and
    /// redeliveries below, inside and above the window.
    #[test]
    fn unsettled_window_matches_a_sorted_set() {
        let mut window = Unsettled::default();
        let mut set = BTreeSet::new();
        // A fixed pseudo-random walk: deliver the next offset, settle one at random, or
        // redeliver a settled one.
        let (mut next, mut seed) = (0u64, 0x9E37_79B9_7F4A_7C15u64);
        let mut settled: Vec<u64> = Vec::new();
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 5 {
                0 | 1 => {
                    window.insert(next);
                    set.insert(next);
                    next += 1;
                }
                2 | 3 if !set.is_empty() => {
                    let pick = *set.iter().nth((seed >> 8) as usize % set.len()).unwrap();
                    assert!(window.remove(pick));
                    assert!(!window.remove(pick), "{pick} removed twice");
                    set.remove(&pick);
                    settled.push(pick);
                }
                _ if !settled.is_empty() => {
                    let o = settled.swap_remove((seed >> 8) as usize % settled.len());
                    window.insert(o);
                    set.insert(o);
                }
                _ => {}
            }
            assert_eq!(window.first(), set.first().copied());
            assert_eq!(window.len(), set.len());
        }
        assert!(!window.remove(next), "never delivered");
    }
}
