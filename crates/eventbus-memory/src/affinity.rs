//! Key affinity: which member of a group may take which key's messages.
//!
//! Keys are hashed into [`SLOTS`] slots; each slot is owned by one live member of the group,
//! and only its owner takes the slot's messages. A group sorts the offsets it has not
//! delivered yet into one queue per slot (and one for messages without a key, which any
//! member takes), so a member finds its next message without passing over other members'.
//!
//! Ownership is rebalanced when a member joins or leaves, so each member owns an even share.
//! A slot handed to a new owner while the old owner still holds some of its messages
//! unsettled is *handed over*: the new owner takes nothing of it until those are settled
//! (handled, failed, or released for redelivery when the old owner goes). A key's later
//! message therefore never reaches a member while an earlier one is unsettled at another.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use eventbus_core::Message;
use foldhash::fast::FixedState;

/// Slots keys are hashed into: the most members of a group that get keyed messages.
pub(crate) const SLOTS: usize = 64;
/// The queue of messages without a key; not a slot: no member owns it.
pub(crate) const UNKEYED: u8 = SLOTS as u8;

/// One bit per slot, and bit [`UNKEYED`] for the unkeyed queue.
type Mask = u128;
const KEYED: Mask = (1 << SLOTS) - 1;

const fn bit(slot: u8) -> Mask {
    1 << slot
}

/// The slot of `message`'s key, or [`UNKEYED`]. Every group of every topic uses the same
/// hash, so the fixed seed makes no difference but keeps slots the same from run to run.
pub(crate) fn slot_of(message: &Message) -> u8 {
    match message.key() {
        Some(key) => (FixedState::with_seed(0).hash_one(key.as_str()) % SLOTS as u64) as u8,
        None => UNKEYED,
    }
}

/// A member's share of its group's slots.
#[derive(Debug)]
struct Owner {
    id: u64,
    owned: Mask,
    /// Owned slots being handed over to it: another member still holds messages of them.
    blocked: Mask,
}

/// One group's slots: their queues of undelivered offsets, who owns them and what of them is
/// delivered and unsettled.
#[derive(Debug)]
pub(crate) struct Affinity {
    /// Offsets not delivered yet, in offset order, per slot; `UNKEYED` last.
    queues: [VecDeque<u64>; SLOTS + 1],
    /// The queues that are not empty.
    queued: Mask,
    /// Messages of each slot delivered and not settled, all at `holder`.
    in_flight: [u32; SLOTS],
    holder: [u64; SLOTS],
    /// Slots some member is blocked on (see `Owner::blocked`).
    handing_over: Mask,
    /// In the order they joined.
    members: Vec<Owner>,
    next_id: u64,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity {
            queues: std::array::from_fn(|_| VecDeque::new()),
            queued: 0,
            in_flight: [0; SLOTS],
            holder: [0; SLOTS],
            handing_over: 0,
            members: Vec::new(),
            next_id: 0,
        }
    }
}

impl Affinity {
    /// Adds a member and gives it its share of slots (taken from the members with the most).
    /// Returns its id.
    pub(crate) fn join(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.members.push(Owner {
            id,
            owned: 0,
            blocked: 0,
        });
        self.rebalance();
        id
    }

    /// Removes a member; its slots go to the members with the fewest. Its unsettled messages
    /// still block them until released (when their acks are dropped).
    pub(crate) fn leave(&mut self, id: u64) {
        self.members.retain(|m| m.id != id);
        self.rebalance();
    }

    /// Queues an offset not delivered yet.
    pub(crate) fn queue(&mut self, offset: u64, slot: u8) {
        self.queues[slot as usize].push_back(offset);
        self.queued |= bit(slot);
    }

    /// What member `id` may take now: its slots but those handed over to it and still held
    /// elsewhere, and messages without a key.
    pub(crate) fn takeable(&self, id: u64) -> Takeable {
        let own = self
            .members
            .iter()
            .find(|m| m.id == id)
            .map_or(0, |m| m.owned & !m.blocked);
        Takeable(own | bit(UNKEYED))
    }

    /// The next undelivered offset `mine` may take, and its slot, taking a slot's oldest
    /// first and going round the slots from `next`, so one busy key does not starve the
    /// others.
    pub(crate) fn pop(&mut self, mine: Takeable, next: &mut u8) -> Option<(u64, u8)> {
        let ready = self.queued & mine.0;
        if ready == 0 {
            return None;
        }
        let from_next = ready & (Mask::MAX << *next);
        let slot = if from_next != 0 { from_next } else { ready }.trailing_zeros() as u8;
        let queue = &mut self.queues[slot as usize];
        let offset = queue.pop_front()?;
        if queue.is_empty() {
            self.queued &= !bit(slot);
        }
        *next = (slot + 1) % (UNKEYED + 1);
        Some((offset, slot))
    }

    /// Counts a message of `slot` delivered to member `id`.
    pub(crate) fn took(&mut self, slot: u8, id: u64) {
        if slot != UNKEYED {
            self.in_flight[slot as usize] += 1;
            self.holder[slot as usize] = id;
        }
    }

    /// Counts a message of `slot` settled (or released for redelivery). True when that
    /// completed a hand-over: the slot's new owner may take it now.
    pub(crate) fn settled(&mut self, slot: u8) -> bool {
        if slot == UNKEYED {
            return false;
        }
        let in_flight = &mut self.in_flight[slot as usize];
        *in_flight -= 1;
        if *in_flight > 0 || self.handing_over & bit(slot) == 0 {
            return false;
        }
        self.handing_over &= !bit(slot);
        for m in &mut self.members {
            m.blocked &= !bit(slot);
        }
        true
    }

    /// Whether `offset` of `slot` is queued, not delivered yet.
    pub(crate) fn is_queued(&self, offset: u64, slot: u8) -> bool {
        self.queues[slot as usize].binary_search(&offset).is_ok()
    }

    /// Whether no offset is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Offsets queued, not delivered yet.
    pub(crate) fn queued_len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Gives every slot without an owner to the member with the fewest, then moves slots
    /// from the member with the most to the one with the fewest until they differ by at most
    /// one. Moves only what it must, and prefers slots with nothing in flight, which change
    /// hands at once.
    fn rebalance(&mut self) {
        if self.members.is_empty() {
            return;
        }
        let owned = self.members.iter().fold(0, |all, m| all | m.owned);
        let mut orphans = KEYED & !owned;
        while orphans != 0 {
            let slot = orphans.trailing_zeros() as u8;
            orphans &= !bit(slot);
            let fewest = self.fewest();
            self.give(fewest, slot);
        }
        let in_flight = (0..SLOTS as u8)
            .filter(|&s| self.in_flight[s as usize] > 0)
            .fold(0, |mask, s| mask | bit(s));
        loop {
            let (most, fewest) = (self.most(), self.fewest());
            let count = |i: usize| self.members[i].owned.count_ones();
            if count(most) <= count(fewest) + 1 {
                break;
            }
            let from = self.members[most].owned;
            let idle = from & !in_flight;
            let slot = if idle != 0 { idle } else { from }.trailing_zeros() as u8;
            let m = &mut self.members[most];
            m.owned &= !bit(slot);
            m.blocked &= !bit(slot);
            self.give(fewest, slot);
        }
    }

    fn give(&mut self, member: usize, slot: u8) {
        let m = &mut self.members[member];
        m.owned |= bit(slot);
        let s = slot as usize;
        if self.in_flight[s] > 0 && self.holder[s] != m.id {
            m.blocked |= bit(slot);
            self.handing_over |= bit(slot);
        } else {
            self.handing_over &= !bit(slot);
        }
    }

    fn most(&self) -> usize {
        (0..self.members.len())
            .max_by_key(|&i| self.members[i].owned.count_ones())
            .unwrap_or(0)
    }

    fn fewest(&self) -> usize {
        (0..self.members.len())
            .min_by_key(|&i| self.members[i].owned.count_ones())
            .unwrap_or(0)
    }
}

/// The slots a member may take now, from [`Affinity::takeable`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Takeable(Mask);

impl Takeable {
    pub(crate) fn contains(self, slot: u8) -> bool {
        self.0 & bit(slot) != 0
    }

    /// Whether it holds every slot: no other member may take a keyed message now.
    pub(crate) fn is_every_key(self) -> bool {
        self.0 & KEYED == KEYED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(a: &Affinity) -> Vec<u32> {
        a.members.iter().map(|m| m.owned.count_ones()).collect()
    }

    /// Every slot has exactly one owner, shares differ by at most one, and a join moves only
    /// the new member's share.
    #[test]
    fn rebalance_keeps_one_owner_per_slot_and_even_shares() {
        let mut a = Affinity::default();
        let mut ids = Vec::new();
        for n in 1..=10 {
            let before: Vec<Mask> = a.members.iter().map(|m| m.owned).collect();
            ids.push(a.join());
            let union = a.members.iter().fold(0, |u, m| {
                assert_eq!(u & m.owned, 0, "a slot with two owners");
                u | m.owned
            });
            assert_eq!(union, KEYED, "every slot owned");
            let shares = owned(&a);
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
            let moved: u32 = before
                .iter()
                .zip(&a.members)
                .map(|(b, m)| (b & !m.owned).count_ones())
                .sum();
            // The first member gets the slots nobody owned; a later one only its share.
            let share = if n == 1 { 0 } else { SLOTS as u32 / n as u32 };
            assert_eq!(moved, share, "slots moved when member {n} joined");
        }
        for id in ids.drain(..9) {
            a.leave(id);
        }
        assert_eq!(owned(&a), vec![SLOTS as u32]);
    }

    /// A slot moved while its old owner holds messages of it is blocked for the new owner
    /// until the last of them is settled; the old owner takes no more of it at once.
    #[test]
    fn hand_over_waits_for_the_old_owners_messages() {
        let mut a = Affinity::default();
        let first = a.join();
        for s in 0..SLOTS as u8 {
            a.took(s, first);
        }
        a.took(0, first);
        let second = a.join();
        // Every slot is in flight, so the lowest half moves, each blocked.
        let (mine, theirs) = (a.takeable(second), a.takeable(first));
        for s in 0..SLOTS as u8 / 2 {
            assert!(!mine.contains(s) && !theirs.contains(s), "slot {s}");
        }
        assert!(theirs.contains(SLOTS as u8 / 2) && mine.contains(UNKEYED));
        assert!(a.settled(1), "slot 1's one message settled: handed over");
        assert!(a.takeable(second).contains(1));
        assert!(!a.settled(0), "slot 0 has a second message in flight");
        assert!(!a.takeable(second).contains(0));
        assert!(a.settled(0));
        assert!(a.takeable(second).contains(0));
        assert!(!a.takeable(first).contains(0));
    }
}
