//! Streams and consumers: the stream and the durable pull consumer the configuration asks
//! for, how they differ from what the server has, and creating, validating or updating them
//! per `Provision`.

use async_nats::jetstream::{self, consumer::pull, stream};
use eventbus_core::{Error, Result};

use crate::{NAME, NatsConfig, NatsError, NatsTransport, Provision, Retention, Storage};

impl NatsTransport {
    /// Makes sure `topic`'s stream is as configured, per [`Provision`]. Done once per topic.
    pub async fn ensure_stream(&self, topic: &str) -> Result<()> {
        let inner = &self.inner;
        if inner.config.provision == Provision::Skip
            || inner
                .ensured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(topic)
        {
            return Ok(());
        }
        if let Some(bound) = &inner.config.stream_for(topic).bind {
            self.check_bound(topic, bound).await?;
            inner
                .ensured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.to_owned());
            return Ok(());
        }
        let want = stream_config(&inner.config, topic);
        match inner.js.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| NatsError::request("stream info", e))?;
                // Another partition count (or an earlier version's single subject) would send
                // a key to another partition than its earlier messages: never updated.
                if info.config.subjects != want.subjects {
                    return Err(Error::SettingsMismatch {
                        transport: NAME,
                        resource: format!("stream {}", want.name),
                        setting: "partitions",
                        expected: format!("{} (subjects {:?})", want.subjects.len(), want.subjects),
                        actual: layout(&info.config.subjects, &inner.config.subject(topic)),
                    });
                }
                if let Some((field, expected, actual)) = stream_diff(&want, &info.config) {
                    match inner.config.provision {
                        Provision::CreateOrUpdate => {
                            inner
                                .js
                                .update_stream(want.clone())
                                .await
                                .map_err(|e| NatsError::request("update stream", e))?;
                        }
                        Provision::ValidateOnly => {
                            return Err(Error::SettingsMismatch {
                                transport: NAME,
                                resource: format!("stream {}", want.name),
                                setting: field,
                                expected,
                                actual,
                            });
                        }
                        Provision::CreateOnly | Provision::Skip => {}
                    }
                }
            }
            Err(e) if not_found(&e) => {
                if inner.config.provision == Provision::ValidateOnly {
                    return Err(Error::TopicMissing {
                        transport: NAME,
                        topic: topic.to_owned(),
                        resource: format!("stream {}", want.name),
                    });
                }
                inner
                    .js
                    .create_stream(want)
                    .await
                    .map_err(|e| NatsError::request("create stream", e))?;
            }
            Err(e) => return Err(NatsError::request("stream info", e).into()),
        }
        inner
            .ensured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }
}

impl NatsTransport {
    /// Checks the stream a topic is bound to ([`StreamOptions::bind`](crate::StreamOptions::bind)):
    /// it exists and one of its subjects matches the topic's. Nothing about it is changed.
    async fn check_bound(&self, topic: &str, stream: &str) -> Result<()> {
        let subject = self.inner.config.subject(topic);
        let subjects = match self.inner.js.get_stream(stream).await {
            Ok(mut existing) => existing
                .info()
                .await
                .map_err(|e| NatsError::request("stream info", e))?
                .config
                .subjects
                .clone(),
            Err(e) if not_found(&e) => {
                return Err(Error::TopicMissing {
                    transport: NAME,
                    topic: topic.to_owned(),
                    resource: format!("stream {stream} (bound: made by another program)"),
                });
            }
            Err(e) => return Err(NatsError::request("stream info", e).into()),
        };
        if subjects
            .iter()
            .any(|pattern| crate::partition::matches(pattern, &subject))
        {
            Ok(())
        } else {
            Err(Error::SettingsMismatch {
                transport: NAME,
                resource: format!("stream {stream} (bound)"),
                setting: "subjects",
                expected: format!("a subject matching {subject:?}"),
                actual: format!("{subjects:?}"),
            })
        }
    }
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// What an existing stream's subjects say about its layout, for the error that refuses it.
fn layout(subjects: &[String], topic_subject: &str) -> String {
    if subjects == [topic_subject] {
        return format!(
            "none: a stream of an earlier version (one subject, {topic_subject:?}); consume what it holds with that version, then delete the stream"
        );
    }
    format!("{} (subjects {subjects:?})", subjects.len())
}

impl NatsTransport {
    /// Gets or creates a durable consumer and makes sure the one that runs is the one
    /// configured (the Go SDK's defect 3): compared through consumer info, updated where
    /// [`Provision`] allows, and compared again.
    pub(crate) async fn ensure_consumer(
        &self,
        stream: &jetstream::stream::Stream<()>,
        want: pull::Config,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>> {
        let name = want.durable_name.clone().unwrap_or_default();
        let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(&name, want.clone())
            .await
            .map_err(|e| NatsError::request("create consumer", e))?;
        let mut difference = consumer_diff(&want, &consumer_info(&mut consumer).await?);
        if difference.is_some() && self.inner.config.provision == Provision::CreateOrUpdate {
            consumer = stream
                .create_consumer(want.clone())
                .await
                .map_err(|e| NatsError::request("update consumer", e))?;
            difference = consumer_diff(&want, &consumer_info(&mut consumer).await?);
        }
        if let Some((field, expected, actual)) = difference {
            return Err(Error::SettingsMismatch {
                transport: NAME,
                resource: format!(
                    "consumer {name} on stream {}",
                    consumer.cached_info().stream_name
                ),
                setting: field,
                expected,
                actual,
            });
        }
        Ok(consumer)
    }
}

fn stream_config(config: &NatsConfig, topic: &str) -> stream::Config {
    let o = config.stream_for(topic);
    stream::Config {
        name: config.stream_name(topic),
        subjects: config.layout(topic).subjects(),
        storage: match o.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        retention: match o.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
        },
        max_age: o.max_age.unwrap_or_default(),
        max_bytes: o.max_bytes.unwrap_or(-1),
        max_messages: o.max_messages.unwrap_or(-1),
        num_replicas: o.replicas,
        duplicate_window: o.duplicate_window,
        ..Default::default()
    }
}

/// The first of `fields` (name, configured, on the server) whose values differ, formatted.
fn first_difference<const N: usize>(
    fields: [(&'static str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); N],
) -> Option<(&'static str, String, String)> {
    fields
        .into_iter()
        .map(|(name, want, have)| (name, format!("{want:?}"), format!("{have:?}")))
        .find(|(_, want, have)| want != have)
}

/// The first stream setting that differs between what is configured and what the server has.
fn stream_diff(
    want: &stream::Config,
    have: &stream::Config,
) -> Option<(&'static str, String, String)> {
    first_difference([
        ("storage", &want.storage, &have.storage),
        ("retention", &want.retention, &have.retention),
        ("max_age", &want.max_age, &have.max_age),
        ("max_bytes", &want.max_bytes, &have.max_bytes),
        ("max_messages", &want.max_messages, &have.max_messages),
        ("replicas", &want.num_replicas, &have.num_replicas),
        (
            "duplicate_window",
            &want.duplicate_window,
            &have.duplicate_window,
        ),
    ])
}

/// The pinned consumers' priority group: pulls name it, and the server pins one client per
/// consumer within it.
pub(crate) const PIN_GROUP: &str = "eventbus";

/// The durable consumer of a [`Sharing::Any`](crate::Sharing::Any) group: the whole stream.
pub(crate) fn consumer_config(config: &NatsConfig, group: &str) -> pull::Config {
    common_consumer_config(config, group.to_owned())
}

/// The durable consumer of one partition of a keyed group: that partition's subject, one
/// pinned client at a time, unpinned by the server after the member timeout without a pull.
pub(crate) fn partition_consumer_config(
    config: &NatsConfig,
    topic: &str,
    group: &str,
    partition: u16,
) -> pull::Config {
    pull::Config {
        filter_subject: config.layout(topic).subject_of(partition),
        priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![PIN_GROUP.to_owned()],
        priority_timeout: config.consumer.member_timeout,
        ..common_consumer_config(config, crate::partition::consumer_name(group, partition))
    }
}

fn common_consumer_config(config: &NatsConfig, name: String) -> pull::Config {
    let c = &config.consumer;
    pull::Config {
        durable_name: Some(name),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver.unwrap_or(-1),
        max_ack_pending: c.max_ack_pending,
        backoff: c.backoff.clone(),
        ..Default::default()
    }
}

async fn consumer_info(
    consumer: &mut jetstream::consumer::Consumer<pull::Config>,
) -> Result<jetstream::consumer::Config> {
    let info = consumer
        .info()
        .await
        .map_err(|e| NatsError::request("consumer info", e))?;
    Ok(info.config.clone())
}

/// The first consumer setting that differs between what is configured and what runs.
fn consumer_diff(
    want: &pull::Config,
    have: &jetstream::consumer::Config,
) -> Option<(&'static str, String, String)> {
    first_difference([
        ("ack_wait", &want.ack_wait, &have.ack_wait),
        ("max_deliver", &want.max_deliver, &have.max_deliver),
        (
            "max_ack_pending",
            &want.max_ack_pending,
            &have.max_ack_pending,
        ),
        ("backoff", &want.backoff, &have.backoff),
        ("filter_subject", &want.filter_subject, &have.filter_subject),
        (
            "priority_policy",
            &want.priority_policy,
            &have.priority_policy,
        ),
        (
            "priority_timeout",
            &want.priority_timeout,
            &have.priority_timeout,
        ),
    ])
}
