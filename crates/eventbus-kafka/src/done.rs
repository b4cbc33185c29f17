//! Where the offsets finished above a partition's committed offset are kept across owners.
//!
//! The commit metadata carries them (see `offsets`), but not every broker returns it (tansu
//! 0.6 stores it and answers `OffsetFetch` without it). So when a partition changes hands
//! (a revoke, a close) with such offsets, they are also written to a single-partition topic
//! of the group, `__eventbus-done.<kafka group>`, keyed by partition, *before* the offset is
//! committed; the next owner reads that topic to its end when it is assigned the partition.
//! Finished is a fact whoever recorded it, so every record counts (only offsets at or above
//! the committed one matter). Written only when finished offsets sit above a gap, so it
//! stays small; a process that crashes loses what it had not written: those messages are
//! handled again (at least once).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::offsets;

const PREFIX: &str = "__eventbus-done.";
/// Kafka's longest topic name.
const MAX_TOPIC: usize = 249;

/// Reads and writes the finished offsets of groups.
pub(crate) struct DoneStore {
    pub(crate) producer: crate::Producer,
    pub(crate) admin: Arc<crate::Admin>,
    /// Settings for a reader: `bootstrap.servers` and the security settings.
    pub(crate) reader: ClientConfig,
    pub(crate) replication: i32,
    pub(crate) timeout: Duration,
}

impl DoneStore {
    /// The topic of a Kafka group; `None` when the name would be too long (nothing is kept).
    pub(crate) fn topic_of(group_id: &str) -> Option<String> {
        let topic = format!("{PREFIX}{group_id}");
        (topic.len() <= MAX_TOPIC).then_some(topic)
    }

    /// Records (partition, committed offset, commit metadata) of `group_id`; blocks until the
    /// broker has them. Returns whether it has.
    pub(crate) fn write(&self, group_id: &str, records: &[(i32, i64, String)]) -> bool {
        let Some(topic) = Self::topic_of(group_id) else {
            return false;
        };
        if records.is_empty() {
            return true;
        }
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(self.replication));
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        match futures::executor::block_on(self.admin.create_topics([&new], &opts)) {
            Ok(results) => {
                for r in results {
                    if let Err((_, code)) = r {
                        if code != RDKafkaErrorCode::TopicAlreadyExists {
                            tracing::debug!(%topic, ?code, "cannot create the finished-offsets topic");
                            return false;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%topic, error = %e, "cannot create the finished-offsets topic");
                return false;
            }
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for (partition, base, metadata) in records {
            let key = partition.to_string();
            let value = format!("{base}|{metadata}");
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => {
                    tracing::debug!(%topic, error = %e, "cannot record finished offsets");
                    return false;
                }
            }
        }
        // Each report comes within the producer's delivery timeout.
        deliveries
            .into_iter()
            .all(|d| matches!(futures::executor::block_on(d), Ok(Ok(_))))
    }

    /// Every finished offset recorded for `group_id`, per partition (nothing if the topic
    /// does not exist or cannot be read within the timeout).
    pub(crate) fn read(&self, group_id: &str) -> HashMap<i32, BTreeSet<i64>> {
        let mut done: HashMap<i32, BTreeSet<i64>> = HashMap::new();
        let Some(topic) = Self::topic_of(group_id) else {
            return done;
        };
        let reader: BaseConsumer<DefaultConsumerContext> = match self.reader.create() {
            Ok(reader) => reader,
            Err(e) => {
                tracing::debug!(error = %e, "cannot create a reader of finished offsets");
                return done;
            }
        };
        // Most often the topic does not exist (nothing was ever recorded): metadata says so at
        // once, where asking for watermarks would wait for a leader until the timeout.
        let exists = reader
            .fetch_metadata(Some(&topic), self.timeout)
            .is_ok_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            });
        if !exists {
            return done;
        }
        let Ok((low, high)) = reader.fetch_watermarks(&topic, 0, self.timeout) else {
            // Most often: the topic does not exist (nothing was ever recorded).
            return done;
        };
        if high <= low {
            return done;
        }
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(&topic, 0, Offset::Offset(low)) {
            tracing::debug!(%topic, error = %e, "cannot read finished offsets");
            return done;
        }
        if let Err(e) = reader.assign(&tpl) {
            tracing::debug!(%topic, error = %e, "cannot read finished offsets");
            return done;
        }
        drop(tpl);
        let deadline = Instant::now() + self.timeout;
        let mut next = low;
        while next < high && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    let record = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse::<i32>().ok())
                        .zip(m.payload().and_then(|v| std::str::from_utf8(v).ok()));
                    if let Some((partition, value)) = record {
                        if let Some((base, metadata)) = value.split_once('|') {
                            if let Ok(base) = base.parse::<i64>() {
                                done.entry(partition)
                                    .or_default()
                                    .extend(offsets::decode(base, metadata));
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::debug!(%topic, error = %e, "reading finished offsets"),
                None => {}
            }
        }
        done
    }
}
