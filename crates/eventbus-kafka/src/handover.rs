//! Which member of this process owns which partition, so that a member given a partition
//! starts only after the member of this process that had it has handed it over.
//!
//! The eager rebalance protocol promises that a partition's new owner is assigned it only
//! after every member has rejoined, that is after the old owner's revoke (drain, commit) is
//! done. Kafka's coordinator keeps that promise by waiting for every member; tansu 0.6 does
//! not (its coordinator answers each JoinGroup at once and makes a generation stable on the
//! leader's SyncGroup, and it accepts offset commits from any generation), so a new owner was
//! seen reading the committed offset while the old owner was still draining and committing,
//! and handling hundreds of messages a second time. Members in one process (a bus with many
//! subscriptions of one group, or several buses) know of each other: an assignment waits,
//! bounded, until no other member here owns the partition. Across processes, the broker's
//! protocol is all there is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// A partition of a group's topic on one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PartitionOf {
    pub(crate) cluster: String,
    pub(crate) group_id: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

/// The owners of this process's partitions.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    owners: Mutex<HashMap<PartitionOf, u64>>,
    released: Condvar,
}

static OWNERS: LazyLock<Owners> = LazyLock::new(Owners::default);
static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// A new member id, unique in this process.
pub(crate) fn new_member() -> u64 {
    NEXT_MEMBER.fetch_add(1, Ordering::Relaxed)
}

/// The registry of this process.
pub(crate) fn owners() -> &'static Owners {
    &OWNERS
}

impl Owners {
    /// Makes `member` the owner of `partitions`, once no other member owns any of them or
    /// after `wait`, whichever comes first. Returns the partitions whose owner had not handed
    /// them over in time (their new owner may handle again what the old one is handling).
    pub(crate) fn claim(
        &self,
        member: u64,
        partitions: &[PartitionOf],
        wait: Duration,
    ) -> Vec<PartitionOf> {
        let deadline = Instant::now() + wait;
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let taken = partitions
                .iter()
                .any(|p| owners.get(p).is_some_and(|&owner| owner != member));
            if !taken || now >= deadline {
                break;
            }
            owners = self
                .released
                .wait_timeout(owners, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut late = Vec::new();
        for p in partitions {
            if owners
                .insert(p.clone(), member)
                .is_some_and(|owner| owner != member)
            {
                late.push(p.clone());
            }
        }
        late
    }

    /// `member` has handed `partitions` over (or never got them).
    pub(crate) fn release(&self, member: u64, partitions: impl IntoIterator<Item = PartitionOf>) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        for p in partitions {
            if owners.get(&p) == Some(&member) {
                owners.remove(&p);
            }
        }
        drop(owners);
        self.released.notify_all();
    }

    /// `member` is gone: whatever it still owns is free.
    pub(crate) fn release_all(&self, member: u64) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.retain(|_, &mut owner| owner != member);
        drop(owners);
        self.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn partition(n: i32) -> PartitionOf {
        PartitionOf {
            cluster: "c".into(),
            group_id: "g".into(),
            topic: "t".into(),
            partition: n,
        }
    }

    #[test]
    fn a_claim_waits_for_the_other_owner_to_release() {
        let owners = Arc::new(Owners::default());
        assert!(
            owners
                .claim(1, &[partition(0), partition(1)], Duration::ZERO)
                .is_empty()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let claimer = {
            let owners = Arc::clone(&owners);
            std::thread::spawn(move || {
                let late = owners.claim(2, &[partition(1)], Duration::from_secs(30));
                tx.send(()).unwrap();
                late
            })
        };
        // Still owned by member 1: the claim waits.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        owners.release(1, [partition(0)]);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        owners.release(1, [partition(1)]);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the claim returns once the partition is released");
        assert!(claimer.join().unwrap().is_empty());
        // Member 2 owns it now; a release by member 1 does not free it.
        owners.release(1, [partition(1)]);
        assert_eq!(
            owners.claim(3, &[partition(1)], Duration::ZERO),
            [partition(1)]
        );
    }

    #[test]
    fn a_claim_gives_up_after_its_wait_and_says_which_were_late() {
        let owners = Owners::default();
        owners.claim(1, &[partition(0)], Duration::ZERO);
        let late = owners.claim(2, &[partition(0), partition(1)], Duration::from_millis(50));
        assert_eq!(late, [partition(0)]);
        // Claiming again what one owns already does not wait.
        assert!(
            owners
                .claim(2, &[partition(0)], Duration::from_secs(30))
                .is_empty()
        );
        owners.release_all(2);
        assert!(
            owners
                .claim(1, &[partition(0), partition(1)], Duration::ZERO)
                .is_empty()
        );
    }
}
