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
        let want = stream_config(&inner.config, topic);
        match inner.js.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| NatsError::request("stream info", e))?;
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
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
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

fn stream_config(config: &NatsConfig, topic: &str) -> stream::Config {
    let o = config.stream_for(topic);
    stream::Config {
        name: config.stream_name(topic),
        subjects: vec![config.subject(topic)],
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
        ("subjects", &want.subjects, &have.subjects),
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

pub(crate) fn consumer_config(config: &NatsConfig, group: &str) -> pull::Config {
    let c = &config.consumer;
    pull::Config {
        durable_name: Some(group.to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver.unwrap_or(-1),
        max_ack_pending: c.max_ack_pending,
        backoff: c.backoff.clone(),
        ..Default::default()
    }
}

pub(crate) async fn consumer_info(
    consumer: &mut jetstream::consumer::Consumer<pull::Config>,
) -> Result<jetstream::consumer::Config> {
    let info = consumer
        .info()
        .await
        .map_err(|e| NatsError::request("consumer info", e))?;
    Ok(info.config.clone())
}

/// The first consumer setting that differs between what is configured and what runs.
pub(crate) fn consumer_diff(
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
    ])
}
