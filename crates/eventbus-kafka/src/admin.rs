//! Admin work: provisioning topics ([`KafkaTransport::ensure_topic`]: describing a topic,
//! checking its retention, waiting for a new one to show) and consumer lag
//! ([`KafkaTransport::partition_lag`], from the group's committed offsets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{Error, Result};
use rdkafka::admin::{
    AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::NAME;
use crate::config::Provision;
use crate::error::KafkaError;
use crate::offsets;
use crate::{Admin, KafkaTransport, client_config, lock, millis};

impl KafkaTransport {
    /// Partitions and replication factor of `topic`, `None` when it does not exist.
    async fn describe(&self, topic: &str) -> Result<Option<(i32, i32)>> {
        let admin = self.admin()?;
        let timeout = self.inner.config.request_timeout;
        let name = topic.to_owned();
        let link = Arc::clone(&self.inner.link);
        self.inner
            .worker
            .run(move || {
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&name), timeout)
                    .map_err(|e| KafkaError::request("topic metadata", e))?;
                link.up();
                let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
                    return Ok(None);
                };
                match t.error() {
                    None if !t.partitions().is_empty() => {}
                    None => return Ok(None),
                    Some(e) => {
                        let code = RDKafkaErrorCode::from(e);
                        if code == RDKafkaErrorCode::UnknownTopicOrPartition
                            || code == RDKafkaErrorCode::UnknownTopic
                        {
                            return Ok(None);
                        }
                        return Err(KafkaError::request(
                            "topic metadata",
                            RdError::MetadataFetch(code),
                        ));
                    }
                }
                let partitions = t.partitions().len() as i32;
                let replication = t.partitions()[0].replicas().len() as i32;
                Ok(Some((partitions, replication)))
            })
            .await?
            .map_err(Error::from)
    }

    /// Makes sure `topic` exists as configured, per [`Provision`]. Done once per topic.
    pub async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let provision = self.inner.config.provision;
        if provision == Provision::Skip {
            return Ok(());
        }
        let mut ensured = self.inner.ensured.lock().await;
        if ensured.contains(topic) {
            return Ok(());
        }
        let want = self.inner.config.topic_for(topic).clone();
        let admin = self.admin()?;
        let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
        match (self.describe(topic).await?, provision) {
            (None, Provision::ValidateOnly) => {
                return Err(Error::TopicMissing {
                    transport: NAME,
                    topic: topic.to_owned(),
                    resource: format!("topic {topic}"),
                });
            }
            (None, _) => {
                let retention = want.retention.map(millis);
                let mut new = NewTopic::new(
                    topic,
                    want.partitions,
                    TopicReplication::Fixed(want.replication),
                );
                if let Some(ms) = &retention {
                    new = new.set("retention.ms", ms);
                }
                let results = admin
                    .create_topics([&new], &opts)
                    .await
                    .map_err(|e| KafkaError::request("create topic", e))?;
                for result in results {
                    match result {
                        Ok(_) => {}
                        // Another client (or process) created it meanwhile.
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            return Err(KafkaError::request(
                                "create topic",
                                RdError::AdminOp(code),
                            )
                            .into());
                        }
                    }
                }
                self.wait_for_topic(topic).await?;
            }
            (Some(_), Provision::CreateOnly | Provision::Skip) => {}
            (Some((partitions, replication)), Provision::ValidateOnly) => {
                let mismatch = |field, expected: String, actual: String| -> Error {
                    Error::SettingsMismatch {
                        transport: NAME,
                        resource: format!("topic {topic}"),
                        setting: field,
                        expected,
                        actual,
                    }
                };
                if partitions != want.partitions {
                    return Err(mismatch(
                        "partitions",
                        want.partitions.to_string(),
                        partitions.to_string(),
                    ));
                }
                if replication != want.replication {
                    return Err(mismatch(
                        "replication",
                        want.replication.to_string(),
                        replication.to_string(),
                    ));
                }
                if let Some(retention) = want.retention {
                    let actual = self.retention_of(&admin, topic, &opts).await?;
                    if actual.as_deref() != Some(millis(retention).as_str()) {
                        return Err(mismatch(
                            "retention.ms",
                            millis(retention),
                            actual.unwrap_or_else(|| "unset".to_owned()),
                        ));
                    }
                }
            }
            (Some((partitions, replication)), Provision::CreateOrUpdate) => {
                if partitions < want.partitions {
                    let more = NewPartitions::new(topic, want.partitions as usize);
                    let results = admin
                        .create_partitions([&more], &opts)
                        .await
                        .map_err(|e| KafkaError::request("create partitions", e))?;
                    if let Some(Err((_, code))) = results.into_iter().next() {
                        return Err(KafkaError::request(
                            "create partitions",
                            RdError::AdminOp(code),
                        )
                        .into());
                    }
                } else if partitions > want.partitions {
                    tracing::warn!(
                        topic,
                        partitions,
                        configured = want.partitions,
                        "the topic has more partitions than configured; Kafka cannot remove partitions"
                    );
                }
                if replication != want.replication {
                    tracing::warn!(
                        topic,
                        replication,
                        configured = want.replication,
                        "the topic's replication factor differs from the configured one; it is left as it is"
                    );
                }
                if let Some(retention) = want.retention {
                    let ms = millis(retention);
                    let alter =
                        AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.ms", &ms);
                    let results = admin
                        .alter_configs([&alter], &opts)
                        .await
                        .map_err(|e| KafkaError::request("alter topic config", e))?;
                    if let Some(Err((_, code))) = results.into_iter().next() {
                        return Err(KafkaError::request(
                            "alter topic config",
                            RdError::AdminOp(code),
                        )
                        .into());
                    }
                }
            }
        }
        ensured.insert(topic.to_owned());
        Ok(())
    }

    async fn retention_of(
        &self,
        admin: &Admin,
        topic: &str,
        opts: &AdminOptions,
    ) -> Result<Option<String>> {
        let results = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], opts)
            .await
            .map_err(|e| KafkaError::request("describe topic config", e))?;
        match results.into_iter().next() {
            Some(Ok(resource)) => Ok(resource
                .get("retention.ms")
                .and_then(|entry| entry.value.clone())),
            Some(Err(code)) => {
                Err(KafkaError::request("describe topic config", RdError::AdminOp(code)).into())
            }
            None => Ok(None),
        }
    }

    /// Waits (up to the request timeout) until a just created topic shows in the metadata.
    async fn wait_for_topic(&self, topic: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        loop {
            if self.describe(topic).await?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::TopicMissing {
                    transport: NAME,
                    topic: topic.to_owned(),
                    resource: format!("topic {topic}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lag of `group` on `topic` per partition: (partition, messages not done).
    pub async fn partition_lag(&self, topic: &str, group: &str) -> Result<Vec<(i32, u64)>> {
        self.check_open()?;
        let admin = self.admin()?;
        let config = &self.inner.config;
        let group_id = config.group_id(topic, group);
        // What this process's own subscriptions of the group know is newer than the last
        // commit; and one of them, if any, answers for the group's committed offsets.
        let mut local: HashMap<i32, (i64, std::collections::BTreeSet<i64>)> = HashMap::new();
        let mut member = None;
        for r in lock(&self.inner.consumers).iter() {
            if r.group_id == group_id && !r.thread.is_finished() {
                local.extend(r.shared.local_marks());
                member = member.or_else(|| r.consumer.upgrade());
            }
        }
        // Without one, a client of the group for this query only: one per group held for
        // later queries would cost a client's threads and connections for each.
        let mut settings = client_config(config, &config.consumer_settings);
        settings.set("group.id", &group_id);
        settings.set("enable.auto.commit", "false");
        let link = Arc::clone(&self.inner.link);
        let timeout = config.request_timeout;
        let topic = topic.to_owned();
        self.inner
            .worker
            .run(move || -> Result<Vec<(i32, u64)>> {
                // The admin client's: asking must not create the topic (see `connect`).
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| KafkaError::request("topic metadata", e))?;
                link.up();
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                drop(metadata);
                let mut marks = Vec::with_capacity(partitions.len());
                for &p in &partitions {
                    let (low, high) = admin
                        .inner()
                        .fetch_watermarks(&topic, p, timeout)
                        .map_err(|e| KafkaError::request("watermarks", e))?;
                    marks.push((p, low, high));
                }
                let mut tpl = TopicPartitionList::new();
                for &p in &partitions {
                    tpl.add_partition(&topic, p);
                }
                let committed = match &member {
                    Some(member) => committed_offsets(member, tpl, timeout)?,
                    None => {
                        let asked: BaseConsumer = settings
                            .create_with_context(DefaultConsumerContext)
                            .map_err(KafkaError::Config)?;
                        committed_offsets(&asked, tpl, timeout)?
                    }
                };
                Ok(marks
                    .into_iter()
                    .map(|(p, low, high)| {
                        let (committed, metadata) =
                            committed.get(&p).cloned().unwrap_or((None, String::new()));
                        let mut from = committed.unwrap_or(low).max(low);
                        let mut done = committed
                            .map_or_else(Default::default, |c| offsets::decode(c, &metadata));
                        if let Some((base, mine)) = local.remove(&p) {
                            from = from.max(base);
                            done.extend(mine);
                        }
                        let done = done.range(from..high).count() as i64;
                        (p, (high - from - done).max(0) as u64)
                    })
                    .collect())
            })
            .await?
    }
}

/// The committed offset (if any) and metadata of each partition in `tpl`, as owned values: a
/// list from the consumer outliving it hangs its drop.
fn committed_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: TopicPartitionList,
    timeout: Duration,
) -> Result<HashMap<i32, (Option<i64>, String)>> {
    Ok(consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| KafkaError::request("committed offsets", e))?
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), (offset, e.metadata().to_owned()))
        })
        .collect())
}
