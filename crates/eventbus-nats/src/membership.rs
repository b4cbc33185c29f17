//! Keyed-group membership: which instances of a group are alive, kept in a JetStream
//! key-value bucket (no coordinator of our own), and which partitions this instance owns.
//!
//! Each instance puts its key, `m.<stream>.<group>.<member>`, every third of the member
//! timeout and watches the keys of its group. An instance is alive from the first put it sees until it
//! deletes its key (a clean leave) or until no put of it was seen for the member timeout (a
//! crash). Every instance computes the same assignment from the same set of members
//! ([`partition::assign`](crate::partition::assign)); while their views differ (for a
//! moment, after a change) two instances may both want a partition: the pinned consumer gives
//! it to one of them only, and the other waits.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::partition;

/// The bucket holding every keyed group's members (of every stream with this prefix), and its
/// hand-over records.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) name: String,
    /// Its replicas when this member creates it: those of the group's stream, so the group
    /// survives the loss of as many servers as its stream does. A bucket that exists is used
    /// as it is.
    pub(crate) replicas: usize,
}

/// The name of the bucket of streams with this prefix.
pub(crate) fn bucket_name(stream_prefix: &str) -> String {
    let prefix: String = stream_prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}members")
}

/// One instance's membership: the partitions it owns now, and its leave.
pub(crate) struct Membership {
    /// The partitions this instance owns, as the membership last computed them.
    pub(crate) owned: watch::Receiver<Vec<u16>>,
    /// The bucket, for the group's hand-over records.
    pub(crate) store: kv::Store,
    leave: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Joins: puts this member's key, then keeps it alive on the I/O runtime until
    /// [`leave`](Self::leave) (or drop). Fails only if the bucket cannot be made or the first
    /// put fails.
    pub(crate) async fn join(
        js: jetstream::Context,
        io: &tokio::runtime::Handle,
        bucket: Bucket,
        group_key: String,
        member: String,
        partitions: u16,
        timeout: Duration,
    ) -> Result<Membership, crate::NatsError> {
        let store = io
            .spawn({
                let (js, bucket) = (js.clone(), bucket.clone());
                async move { open_bucket(&js, &bucket).await }
            })
            .await
            .map_err(|_| stopped())??;
        let key = format!("m.{group_key}.{member}");
        let mut members = Members {
            prefix: format!("m.{group_key}."),
            me: member.clone(),
            timeout,
            seen: HashMap::new(),
        };
        // The first assignment is made from the members there are: one made before (this
        // member alone owning everything) would pull partitions it drops a moment later, and
        // a pull dropped while the server pins it holds the pin, for nobody, until it times
        // out.
        let (store, watch, members) = io
            .spawn({
                let (store, key) = (store.clone(), key.clone());
                async move {
                    store
                        .put(&key, bytes::Bytes::new())
                        .await
                        .map_err(|e| crate::NatsError::request("join group", e))?;
                    let watch = members.read_snapshot(&store).await?;
                    Ok::<_, crate::NatsError>((store, watch, members))
                }
            })
            .await
            .map_err(|_| stopped())??;
        let (owned_tx, owned) = watch::channel(members.owned(partitions));
        let (leave, left) = oneshot::channel();
        let task = io.spawn(keep(Keep {
            js,
            bucket,
            store: store.clone(),
            group_key,
            key,
            partitions,
            timeout,
            members,
            watch: Some(watch),
            owned: owned_tx,
            left,
        }));
        Ok(Membership {
            owned,
            store,
            leave: Some(leave),
            task,
        })
    }

    /// Leaves: deletes this member's key (the others rebalance at once) and ends the task.
    pub(crate) async fn leave(mut self) {
        if let Some(leave) = self.leave.take() {
            let _ = leave.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Not left: the task deletes the key when the sender goes, as on a leave.
        drop(self.leave.take());
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("owned", &*self.owned.borrow())
            .finish_non_exhaustive()
    }
}

fn stopped() -> crate::NatsError {
    crate::NatsError::request(
        "join group",
        crate::error::ErrorText("the transport is closing".into()),
    )
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: &Bucket,
) -> Result<kv::Store, crate::NatsError> {
    match js.get_key_value(&bucket.name).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.name.clone(),
                num_replicas: bucket.replicas,
                description: "eventbus keyed-group members".to_owned(),
                history: 1,
                // Keys of crashed members go by themselves; the live ones are renewed far
                // more often.
                max_age: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| crate::NatsError::request("create the members bucket", e)),
    }
}

struct Keep {
    js: jetstream::Context,
    bucket: Bucket,
    store: kv::Store,
    group_key: String,
    key: String,
    partitions: u16,
    timeout: Duration,
    members: Members,
    watch: Option<kv::Watch>,
    owned: watch::Sender<Vec<u16>>,
    left: oneshot::Receiver<()>,
}

/// The members of a group as one member sees them.
struct Members {
    /// `m.<stream>.<group>.`: the keys' prefix.
    prefix: String,
    me: String,
    timeout: Duration,
    /// Other members, when each was last seen alive (this one always is).
    seen: HashMap<String, Instant>,
}

impl Members {
    /// Watches the group's keys and takes in the members there are now (the watch's first
    /// entries, the last of which has no more pending after it).
    async fn read_snapshot(&mut self, store: &kv::Store) -> Result<kv::Watch, crate::NatsError> {
        let mut watch = store
            .watch_with_history(format!("{}*", self.prefix))
            .await
            .map_err(|e| crate::NatsError::request("watch the group's members", e))?;
        // This member's own key is there, so the snapshot is never empty; the bound only
        // guards against a server that stops answering.
        let deadline = tokio::time::Instant::now() + self.timeout;
        while let Ok(Some(Ok(entry))) = tokio::time::timeout_at(deadline, watch.next()).await {
            self.see(&entry);
            if entry.delta == 0 {
                break;
            }
        }
        Ok(watch)
    }

    /// Takes in a change of a member's key; whether the set of members changed.
    fn see(&mut self, entry: &kv::Entry) -> bool {
        let Some(member) = entry.key.strip_prefix(&self.prefix) else {
            return false;
        };
        if member == self.me {
            return false;
        }
        match entry.operation {
            kv::Operation::Put => {
                // A put older than the timeout (from the bucket's history) is a member that
                // is gone.
                let age = SystemTime::now()
                    .duration_since(SystemTime::from(entry.created))
                    .unwrap_or_default();
                age < self.timeout
                    && self
                        .seen
                        .insert(
                            member.to_owned(),
                            Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                        )
                        .is_none()
            }
            kv::Operation::Delete | kv::Operation::Purge => self.seen.remove(member).is_some(),
        }
    }

    /// Forgets members not seen for the timeout; whether any was.
    fn expire(&mut self) -> bool {
        let before = self.seen.len();
        self.seen.retain(|_, last| last.elapsed() < self.timeout);
        self.seen.len() != before
    }

    /// The partitions this member owns.
    fn owned(&self, partitions: u16) -> Vec<u16> {
        let mut members: Vec<String> = self.seen.keys().cloned().collect();
        members.push(self.me.clone());
        partition::assign(partitions, &members)
            .remove(&self.me)
            .unwrap_or_default()
    }
}

async fn keep(mut k: Keep) {
    let mut renew = tokio::time::interval(k.timeout / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expire = tokio::time::interval((k.timeout / 4).max(Duration::from_millis(100)));
    loop {
        if k.watch.is_none() {
            match k.members.read_snapshot(&k.store).await {
                Ok(w) => k.watch = Some(w),
                Err(e) => {
                    tracing::warn!(group = %k.group_key, error = %e, "cannot watch the group's members; retrying")
                }
            }
        }
        let changed = tokio::select! {
            _ = &mut k.left => break,
            _ = renew.tick() => {
                if let Err(e) = k.store.put(&k.key, bytes::Bytes::new()).await {
                    tracing::warn!(group = %k.group_key, error = %e, "could not renew membership");
                    // The bucket may be gone (a server that lost its store): make it again.
                    if let Ok(store) = open_bucket(&k.js, &k.bucket).await {
                        k.store = store;
                        k.watch = None;
                    }
                }
                false
            }
            _ = expire.tick() => k.members.expire(),
            entry = next(&mut k.watch) => match entry {
                Some(Ok(entry)) => k.members.see(&entry),
                Some(Err(e)) => {
                    tracing::debug!(group = %k.group_key, error = %e, "member watch failed; watching anew");
                    k.watch = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    false
                }
                None => {
                    k.watch = None;
                    false
                }
            },
        };
        if changed {
            let mine = k.members.owned(k.partitions);
            tracing::debug!(group = %k.group_key, members = k.members.seen.len() + 1, owned = ?mine, "group membership changed");
            k.owned.send_if_modified(|owned| {
                let differs = *owned != mine;
                *owned = mine;
                differs
            });
        }
    }
    // A clean leave: the others take this member's partitions at once.
    if let Err(e) = k.store.delete(&k.key).await {
        tracing::debug!(group = %k.group_key, error = %e, "could not delete the member's key; it expires");
    }
}

async fn next(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// A partition's hand-over record, `h.<stream>.<group>.<partition>`: written by an owner that
/// released the partition cleanly (its bus settled every message of it), just before it
/// unpinned the consumer. The next owner takes it (reads and deletes it) at the start of its
/// term. Without it (the owner crashed) the next owner reads back what may have been left
/// unacked; with it, exactly what was.
#[derive(Clone)]
pub(crate) struct Handover {
    store: kv::Store,
    key: String,
}

/// What a clean release knew: the consumer's last delivery (consumer sequence) and its ack
/// floor and last delivered stream sequences then, and which stream sequences between the two
/// the releasing owner acked. Every other message of the partition in that window was left
/// unacked (cancelled at a close, or lost with the dropped pull).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) consumer_seq: u64,
    pub(crate) floor: u64,
    pub(crate) last: u64,
    pub(crate) acked: Vec<u64>,
}

impl Released {
    /// `<consumer seq> <floor> <last> <acked,...>`.
    fn encode(&self) -> String {
        let acked: Vec<String> = self.acked.iter().map(u64::to_string).collect();
        format!(
            "{} {} {} {}",
            self.consumer_seq,
            self.floor,
            self.last,
            acked.join(",")
        )
    }

    fn decode(text: &str) -> Option<Released> {
        let mut parts = text.splitn(4, ' ');
        let mut number = || parts.next()?.parse().ok();
        let (consumer_seq, floor, last) = (number()?, number()?, number()?);
        let acked = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| s.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Released {
            consumer_seq,
            floor,
            last,
            acked,
        })
    }
}

impl Handover {
    pub(crate) fn new(store: kv::Store, group_key: &str, partition: u16) -> Self {
        Handover {
            store,
            key: format!("h.{group_key}.{partition}"),
        }
    }

    /// Records a clean release.
    pub(crate) async fn record(&self, released: &Released) -> Result<(), kv::PutError> {
        self.store
            .put(&self.key, released.encode().into())
            .await
            .map(drop)
    }

    /// The record, if there is one.
    pub(crate) async fn read(&self) -> Option<Released> {
        let entry = self.store.entry(&self.key).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        Released::decode(std::str::from_utf8(&entry.value).ok()?)
    }

    /// Takes the record: `None` if there is none or it could not be deleted (a record left
    /// behind would describe a later term wrongly).
    pub(crate) async fn take(&self) -> Option<Released> {
        let released = self.read().await?;
        self.store.delete(&self.key).await.ok()?;
        Some(released)
    }
}

#[cfg(test)]
mod tests {
    use super::Released;

    #[test]
    fn a_release_record_reads_back_as_written() {
        for acked in [vec![], vec![7], vec![7, 9, 12]] {
            let r = Released {
                consumer_seq: 41,
                floor: 5,
                last: 12,
                acked,
            };
            assert_eq!(Released::decode(&r.encode()), Some(r));
        }
        assert_eq!(Released::decode("41 5"), None);
        assert_eq!(Released::decode("41 5 12 7,x"), None);
    }
}
