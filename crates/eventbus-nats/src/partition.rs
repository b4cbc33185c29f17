//! Partitions: which partition a message goes to, the subject and consumer of each partition,
//! and which instance of a keyed group consumes which partitions.

use std::collections::BTreeMap;

use eventbus_core::Message;

/// How a topic's stream is split: its partitions and their subjects.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The topic's subject.
    topic_subject: String,
    /// How many partitions (1 for a bound stream).
    pub(crate) partitions: u16,
    /// Whether a partition's subject carries its number: not on a stream bound with
    /// [`StreamOptions::bind`](crate::StreamOptions::bind), whose owner publishes to the
    /// topic's subject itself.
    numbered: bool,
}

impl Layout {
    pub(crate) fn new(topic_subject: String, partitions: u16, bound: bool) -> Self {
        Layout {
            topic_subject,
            partitions: if bound { 1 } else { partitions.max(1) },
            numbered: !bound,
        }
    }

    /// The partition `message` goes to.
    pub(crate) fn partition_of(&self, message: &Message) -> u16 {
        of(message, self.partitions)
    }

    /// The subject of `partition`.
    pub(crate) fn subject_of(&self, partition: u16) -> String {
        if self.numbered {
            subject(&self.topic_subject, partition)
        } else {
            self.topic_subject.clone()
        }
    }

    /// Every partition's subject, in order: the stream's subjects.
    pub(crate) fn subjects(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.subject_of(p)).collect()
    }
}

/// Whether NATS subject `subject` matches the (possibly wildcard) subject `pattern` of a
/// stream: `*` matches one token, a final `>` one or more.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// The partition of a message: FNV-1a (32 bits) of its key, or of its id when it has none,
/// modulo `partitions`. FNV-1a because the partition is part of the stream's layout: every
/// publisher, in any language or version, must compute the same one (a std or foldhash hash
/// may change between releases).
pub(crate) fn of(message: &Message, partitions: u16) -> u16 {
    let by = match message.key() {
        Some(key) => key.as_str(),
        None => message.id().as_str(),
    };
    (fnv1a(by.as_bytes()) % u32::from(partitions.max(1))) as u16
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The subject of a partition: the topic's subject, then the partition's number as a token of
/// its own (a key may hold `.`, so the key itself never goes into the subject).
pub(crate) fn subject(topic_subject: &str, partition: u16) -> String {
    format!("{topic_subject}.{partition}")
}

/// The durable consumer of one partition for a keyed group. `=` cannot be in a group name, so
/// it never names the consumer of a [`Sharing::Any`](crate::Sharing::Any) group.
pub(crate) fn consumer_name(group: &str, partition: u16) -> String {
    format!("{group}={partition}")
}

/// The partitions each member owns, given every live member.
///
/// Deterministic in the set of members, so members that see the same set agree without
/// talking. Balanced: every member owns `partitions / n` or one more (the first
/// `partitions % n` members by id get the one more). Stable: each partition goes to the first
/// member in its own preference order (a hash of partition and member: rendezvous hashing)
/// that still has room, so a member joining or leaving moves few partitions besides its own.
pub(crate) fn assign(partitions: u16, members: &[String]) -> BTreeMap<String, Vec<u16>> {
    let mut members: Vec<&String> = members.iter().collect();
    members.sort();
    members.dedup();
    let mut owned: BTreeMap<String, Vec<u16>> =
        members.iter().map(|m| ((*m).clone(), Vec::new())).collect();
    if members.is_empty() {
        return owned;
    }
    let n = members.len();
    let room =
        |i: usize| usize::from(partitions) / n + usize::from(i < usize::from(partitions) % n);
    let mut counts = vec![0usize; n];
    for p in 0..partitions {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(rank(p, members[i])));
        // The caps add up to `partitions`, so some member always has room.
        if let Some(&i) = order.iter().find(|&&i| counts[i] < room(i)) {
            counts[i] += 1;
            owned.get_mut(members[i]).expect("listed").push(p);
        }
    }
    owned
}

fn rank(partition: u16, member: &str) -> u32 {
    let mut bytes = partition.to_be_bytes().to_vec();
    bytes.extend_from_slice(member.as_bytes());
    // FNV's low bits mix poorly for short inputs that differ at the end: finish with a
    // multiply-xorshift.
    let h = fnv1a(&bytes);
    let h = (h ^ (h >> 16)).wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("member-{i:02}")).collect()
    }

    #[test]
    fn stream_subjects_match_as_nats_matches_them() {
        assert!(matches("orders", "orders"));
        assert!(matches("orders.*", "orders.created"));
        assert!(matches("orders.>", "orders.created.eu"));
        assert!(matches(">", "orders"));
        assert!(!matches("orders.>", "orders"));
        assert!(!matches("orders.*", "orders.created.eu"));
        assert!(!matches("orders", "orders.created"));
        assert!(!matches("billing.*", "orders.created"));
    }

    #[test]
    fn a_bound_stream_has_one_partition_on_the_topics_own_subject() {
        let bound = Layout::new("orders".into(), 16, true);
        assert_eq!(bound.partitions, 1);
        assert_eq!(bound.subjects(), ["orders"]);
        assert_eq!(
            bound.partition_of(&Message::new("orders", "x").with_key("k")),
            0
        );
        let own = Layout::new("orders".into(), 3, false);
        assert_eq!(own.subjects(), ["orders.0", "orders.1", "orders.2"]);
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a", "foobar".
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_key_always_goes_to_the_same_partition() {
        let m = Message::new("t", "x").with_key("order-1");
        let again = Message::new("t", "y").with_key("order-1");
        assert_eq!(of(&m, 16), of(&again, 16));
        assert!(of(&m, 16) < 16);
        assert_eq!(of(&m, 1), 0);
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_loads_differ_by_at_most_one() {
        for partitions in [1u16, 2, 7, 16, 64] {
            for n in 1..=10 {
                let owned = assign(partitions, &members(n));
                let mut all: Vec<u16> = owned.values().flatten().copied().collect();
                all.sort();
                assert_eq!(
                    all,
                    (0..partitions).collect::<Vec<_>>(),
                    "{partitions} over {n}"
                );
                let loads: Vec<usize> = owned.values().map(Vec::len).collect();
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(max - min <= 1, "{partitions} over {n}: {loads:?}");
            }
        }
    }

    #[test]
    fn the_assignment_depends_only_on_the_set_of_members() {
        let mut shuffled = members(5);
        shuffled.reverse();
        shuffled.push("member-02".into());
        assert_eq!(assign(16, &members(5)), assign(16, &shuffled));
    }

    #[test]
    fn a_member_joining_moves_few_partitions() {
        // 64 partitions, 4 members → 5: at least 64/5 = 12 must move to the newcomer; a
        // modulo assignment would move about 4/5 of them.
        let before = assign(64, &members(4));
        let after = assign(64, &members(5));
        let moved = (0..64u16)
            .filter(|p| {
                let owner = |a: &BTreeMap<String, Vec<u16>>| {
                    a.iter()
                        .find(|(_, ps)| ps.contains(p))
                        .map(|(m, _)| m.clone())
                };
                owner(&before) != owner(&after)
            })
            .count();
        assert!((12..=24).contains(&moved), "moved {moved} of 64");
    }
}
