//! Which offsets of one partition are done, and what may be committed.
//!
//! The bus handles the messages of a partition concurrently across keys, so they finish out of
//! offset order. Kafka keeps one committed offset per partition: everything below it is done.
//! The tracker commits the lowest offset not yet done (never past a failed, cancelled or
//! running message; the Go SDK committed past them: its defect 9 in `docs/origin.md`) and, as the commit's metadata, the offsets above it
//! that are done already, so whoever gets the partition next skips them instead of handling
//! them twice (Kafka keeps a commit's metadata with its offset).

use std::collections::{BTreeSet, VecDeque};

/// Prefix of the commit metadata this transport writes.
const PREFIX: &str = "eb1:";
/// Kafka's default `offset.metadata.max.bytes` is 4096: stay below it. Dropping the highest
/// done offsets from the metadata only means they are handled again.
const MAX_METADATA: usize = 3000;

/// The offsets of one partition taken from the broker and not yet below the committed offset.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Offsets in order, with whether they are done; the front is never done.
    outstanding: VecDeque<(i64, bool)>,
    /// The offset after the last one taken.
    next: Option<i64>,
    /// Offsets done by an earlier owner (from the commit metadata), skipped when they come.
    done_before: BTreeSet<i64>,
}

/// What the tracker says about a message just polled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Deliver it.
    Deliver,
    /// Already done (by an earlier owner, per the commit metadata): skip it.
    AlreadyDone,
    /// Seen already in this assignment: drop it.
    Duplicate,
}

impl Tracker {
    /// A tracker starting at `committed` (the committed offset, if any) with the done offsets
    /// of the commit `metadata` above it.
    pub(crate) fn starting_at(committed: Option<i64>, metadata: &str) -> Self {
        let done_before = match committed {
            Some(base) => decode(base, metadata),
            None => BTreeSet::new(),
        };
        Tracker {
            outstanding: VecDeque::new(),
            next: None,
            done_before,
        }
    }

    /// Records a polled offset.
    pub(crate) fn take(&mut self, offset: i64) -> Taken {
        if self.next.is_some_and(|next| offset < next) {
            return Taken::Duplicate;
        }
        self.next = Some(offset + 1);
        // Offsets done earlier are below anything polled from now on: forget those passed.
        while self.done_before.first().is_some_and(|&o| o < offset) {
            self.done_before.pop_first();
        }
        if self.done_before.remove(&offset) {
            if !self.outstanding.is_empty() {
                self.outstanding.push_back((offset, true));
            }
            return Taken::AlreadyDone;
        }
        self.outstanding.push_back((offset, false));
        Taken::Deliver
    }

    /// Marks `offset` done; returns whether it was outstanding.
    pub(crate) fn done(&mut self, offset: i64) -> bool {
        let Ok(i) = self.outstanding.binary_search_by_key(&offset, |&(o, _)| o) else {
            return false;
        };
        self.outstanding[i].1 = true;
        while self.outstanding.front().is_some_and(|&(_, done)| done) {
            self.outstanding.pop_front();
        }
        true
    }

    /// The offset to commit (the lowest not done, or the one after the last taken), with its
    /// metadata; `None` before anything was taken.
    pub(crate) fn watermark(&self) -> Option<(i64, String)> {
        let base = match self.outstanding.front() {
            Some(&(offset, _)) => offset,
            None => self.next?,
        };
        let done = self
            .outstanding
            .iter()
            .filter(|&&(_, done)| done)
            .map(|&(o, _)| o)
            .chain(self.done_before.iter().copied().filter(|&o| o >= base));
        Some((base, encode(base, done)))
    }
}

/// `eb1:` then `gap+len` runs of done offsets above `base`, comma-separated, where `gap` counts
/// the offsets since the end of the previous run (from `base`).
pub(crate) fn encode(base: i64, done: impl Iterator<Item = i64>) -> String {
    let mut done: Vec<i64> = done.filter(|&o| o > base).collect();
    if done.is_empty() {
        return String::new();
    }
    done.sort_unstable();
    done.dedup();
    let mut out = String::from(PREFIX);
    let mut end = base + 1;
    let mut i = 0;
    while i < done.len() {
        let start = done[i];
        let mut j = i;
        while j + 1 < done.len() && done[j + 1] == done[j] + 1 {
            j += 1;
        }
        let run = format!("{}+{}", start - end, j - i + 1);
        if out.len() + run.len() + 1 > MAX_METADATA {
            break;
        }
        if out.len() > PREFIX.len() {
            out.push(',');
        }
        out.push_str(&run);
        end = done[j] + 1;
        i = j + 1;
    }
    out
}

/// The done offsets in `metadata` (as [`encode`] wrote them) above `base`; nothing for
/// metadata this transport did not write.
pub(crate) fn decode(base: i64, metadata: &str) -> BTreeSet<i64> {
    let mut done = BTreeSet::new();
    let Some(runs) = metadata.strip_prefix(PREFIX) else {
        return done;
    };
    let mut end = base + 1;
    for run in runs.split(',') {
        let Some((gap, len)) = run.split_once('+') else {
            return BTreeSet::new();
        };
        let (Ok(gap), Ok(len)) = (gap.parse::<i64>(), len.parse::<i64>()) else {
            return BTreeSet::new();
        };
        if gap < 0 || len <= 0 || len > 1_000_000 {
            return BTreeSet::new();
        }
        let start = end + gap;
        done.extend(start..start + len);
        end = start + len;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_lowest_unfinished_offset() {
        let mut t = Tracker::starting_at(None, "");
        assert_eq!(t.watermark(), None);
        for o in 10..15 {
            assert_eq!(t.take(o), Taken::Deliver);
        }
        t.done(10);
        t.done(12);
        t.done(13);
        // 11 failed (or runs): never committed past.
        assert_eq!(t.watermark(), Some((11, "eb1:0+2".to_owned())));
        t.done(11);
        assert_eq!(t.watermark(), Some((14, String::new())));
        t.done(14);
        assert_eq!(t.watermark(), Some((15, String::new())));
    }

    #[test]
    fn a_new_owner_skips_what_the_metadata_says_is_done() {
        let mut first = Tracker::starting_at(Some(0), "");
        for o in 0..6 {
            first.take(o);
        }
        for o in [0, 2, 4, 5] {
            first.done(o);
        }
        let (base, metadata) = first.watermark().expect("a watermark");
        assert_eq!((base, metadata.as_str()), (1, "eb1:0+1,1+2"));
        let mut next = Tracker::starting_at(Some(base), &metadata);
        let taken: Vec<_> = (1..7).map(|o| next.take(o)).collect();
        assert_eq!(
            taken,
            [
                Taken::Deliver,
                Taken::AlreadyDone,
                Taken::Deliver,
                Taken::AlreadyDone,
                Taken::AlreadyDone,
                Taken::Deliver
            ]
        );
        next.done(1);
        assert_eq!(next.watermark(), Some((3, "eb1:0+2".to_owned())));
        next.done(3);
        assert_eq!(next.watermark(), Some((6, String::new())));
    }

    #[test]
    fn metadata_round_trips_and_foreign_metadata_is_ignored() {
        let done = [12, 13, 14, 20, 22];
        let encoded = encode(10, done.into_iter());
        assert_eq!(decode(10, &encoded), done.into_iter().collect());
        assert!(decode(10, "something else").is_empty());
        assert!(decode(10, "eb1:x+1").is_empty());
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut t = Tracker::starting_at(None, "");
        assert_eq!(t.take(5), Taken::Deliver);
        assert_eq!(t.take(5), Taken::Duplicate);
        assert!(!t.done(4));
    }

    #[test]
    fn metadata_stays_under_the_broker_limit() {
        let encoded = encode(0, (1..100_000).step_by(2));
        assert!(encoded.len() <= MAX_METADATA, "{}", encoded.len());
        assert!(!decode(0, &encoded).is_empty());
    }
}
