//! courier's delivery pipeline. Two stages consume RabbitMQ queues:
//!
//! 1. **fan-out** reads an event, finds the matching subscriptions, records
//!    the event and one delivery per match in the ledger, publishes one
//!    delivery message per match, then acks the event;
//! 2. **delivery** reads a delivery message, POSTs the signed payload,
//!    records the attempt, schedules a retry or dead-letters, then acks.
//!
//! Nothing is acked before what it caused is durable (ledger committed,
//! follow-up messages confirmed by the broker), so a crash anywhere means
//! redelivery, never loss. This crate owns no configuration parsing and no
//! HTTP server: the `courier` binary wires it.

mod acks;
mod circuit;
mod consumer;
pub mod health;
mod held;
mod limits;
mod log;
pub mod metrics;
mod pipeline;
mod rate;
pub mod retention;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use courier_model::RetryPolicy;
use courier_model::error_chain;
use courier_producer::{ConfirmedChannel, PublishError, Topology};
use courier_store::{Ledger, Store, StoreError};
use courier_webhook::{ClientError, HttpOptions, WebhookClient};
use lapin::Connection;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::acks::AckCounts;

pub use consumer::Handled;
pub use health::Health;
pub use metrics::Metrics;
pub use pipeline::Pipeline;
pub use retention::{PruneRound, Pruner, RetentionConfig};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("RabbitMQ error")]
    Broker(#[from] lapin::Error),
    #[error("publishing failed")]
    Publish(#[from] PublishError),
    #[error("ledger error")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Http(#[from] ClientError),
    #[error("consumer of {queue} stopped: {reason}")]
    ConsumerStopped { queue: String, reason: String },
}

/// Everything the worker needs to know, already validated by the caller.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub prefix: String,
    /// Unacked messages the broker hands each stage at once.
    pub prefetch: u16,
    /// Deliveries being attempted at once, across all endpoints.
    pub max_in_flight: usize,
    /// Deliveries being attempted at once against one endpoint.
    pub per_endpoint_in_flight: usize,
    /// Make first attempts from the fan-out stage when the endpoint is
    /// quick and has a free slot, instead of always through the deliveries
    /// queue.
    pub inline_first_attempt: bool,
    /// A quick endpoint answers within this long on average (250 ms by
    /// default): it gets first attempts from the fan-out stage, and a
    /// delivery waits this long at most for one of its slots before it is
    /// held in the ledger.
    pub quick: Duration,
    pub http: HttpOptions,
    pub retry: RetryPolicy,
    /// Retry 3xx/4xx other than 408/429 (receivers misconfigure often).
    pub retry_client_errors: bool,
    /// How often the matching index is reloaded from the ledger.
    pub subscription_refresh: Duration,
    /// On shutdown, how long in-flight deliveries may take to finish before
    /// they are handed back to the broker unacked.
    pub shutdown_grace: Duration,
    pub endpoints: EndpointPolicy,
}

/// When a failing endpoint is reported and when its webhook is disabled.
#[derive(Clone, Copy, Debug)]
pub struct EndpointPolicy {
    /// No success for this long while attempts kept failing: disabled.
    pub disable_after: Duration,
    /// Failed attempts in a row before `webhook.failing` is published.
    pub failing_after: u32,
}

impl WorkerConfig {
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), self.retry.tiers())
    }
}

/// Periodic subscription checks between two unconditional reloads.
const FULL_RELOAD_EVERY: u64 = 12;

/// A worker, ready to run: topology declared, subscriptions loaded.
pub struct Worker {
    pipeline: Arc<Pipeline>,
    connection: Arc<Connection>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stopping: CancellationToken,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish()
    }
}

impl Worker {
    /// Declares the topology on `connection`, loads the subscriptions and
    /// prepares the pipeline. The ledger must be migrated.
    pub async fn build(
        config: WorkerConfig,
        connection: Arc<Connection>,
        store: Store,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, WorkerError> {
        let topology = config.topology();
        let publisher = ConfirmedChannel::open(&connection).await?;
        topology.declare_all(publisher.channel()).await?;
        let client = WebhookClient::new(&config.http)?;
        let stopping = CancellationToken::new();
        let pipeline = Arc::new(Pipeline {
            endpoints: limits::EndpointLimits::new(config.per_endpoint_in_flight, config.quick),
            http_slots: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            first_attempt_room: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            subscriptions: subscriptions::SubscriptionCache::default(),
            config: config.clone(),
            topology,
            store,
            ledger,
            publisher,
            client,
            episodes: pipeline::Episodes::default(),
            rates: rate::RateLimits::default(),
            lifecycle_metrics: pipeline::LifecycleMetrics::new(&metrics),
            metrics: Arc::clone(&metrics),
            stopping: stopping.clone(),
        });
        let subscriptions = pipeline.reload_subscriptions("start").await?;
        // Circuits other replicas opened hold from the first message on.
        pipeline.refresh_circuits().await?;
        tracing::info!(subscriptions, "worker ready");
        Ok(Self {
            pipeline,
            connection,
            config,
            metrics,
            health,
            stopping,
        })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Consumes both stages until `shutdown` is cancelled or a consumer
    /// fails. On shutdown, consumers stop taking messages, in-flight work
    /// gets `shutdown_grace` to finish, and whatever is left unacked goes
    /// back to the broker when the connection closes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let topology = self.config.topology();
        // Stop the other stage and the refresher if one stage fails.
        let stop = shutdown.child_token();
        // Waits for the database end with the worker, not before: in-flight
        // work should still finish during the grace period.
        let stopping = self.stopping.clone();
        let _stopping_guard = stopping.drop_guard();

        let fanout = consumer::run(
            consumer::Stage {
                connection: &self.connection,
                health: &self.health.fanout,
                queue: topology.fanout_queue(),
                prefetch: self.config.prefetch,
                slots: Arc::new(Semaphore::new(self.config.prefetch.max(1) as usize)),
                grace: self.config.shutdown_grace,
                acks: AckCounts::new(&self.metrics, "fanout"),
            },
            stop.clone(),
            {
                let pipeline = Arc::clone(&self.pipeline);
                move |delivery, finish| {
                    let pipeline = Arc::clone(&pipeline);
                    async move { pipeline.fan_out(&delivery, finish).await }
                }
            },
        );
        let deliveries = consumer::run(
            consumer::Stage {
                connection: &self.connection,
                health: &self.health.delivery,
                queue: topology.deliveries_queue(),
                prefetch: self.config.prefetch,
                slots: Arc::clone(&self.pipeline.http_slots),
                grace: self.config.shutdown_grace,
                acks: AckCounts::new(&self.metrics, "delivery"),
            },
            stop.clone(),
            {
                let pipeline = Arc::clone(&self.pipeline);
                move |delivery, finish: consumer::Finish| {
                    let pipeline = Arc::clone(&pipeline);
                    async move { finish.done(pipeline.deliver(&delivery).await) }
                }
            },
        );
        let refresher = {
            let pipeline = Arc::clone(&self.pipeline);
            let stop = stop.clone();
            let every = self.config.subscription_refresh;
            async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                for tick in 1u64.. {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    // A cheap check each time; a full reload when it shows a
                    // change, and every FULL_RELOAD_EVERY ticks regardless
                    // (a change stamped by a clock running behind).
                    let full = tick.is_multiple_of(FULL_RELOAD_EVERY);
                    if let Err(error) = pipeline.refresh_subscriptions(full).await {
                        tracing::warn!(error = %error_chain(&error), "reloading subscriptions failed");
                    }
                }
            }
        };

        let releases = Arc::clone(&self.pipeline).release_held(stop.clone());
        let lifecycle = Arc::clone(&self.pipeline).watch_lifecycle(stop.clone());
        let circuits = Arc::clone(&self.pipeline).sync_circuits(stop.clone());
        let depths = queue_depths(
            &self.connection,
            &topology,
            &self.metrics,
            &self.pipeline.rates,
            stop.clone(),
        );
        let control = watch_changes(&self.connection, &topology, &self.pipeline, stop.clone());

        let guard = stop.clone().drop_guard();
        let (fanout, deliveries, (), (), (), (), (), ()) = tokio::join!(
            async {
                let r = fanout.await;
                stop.cancel();
                r
            },
            async {
                let r = deliveries.await;
                stop.cancel();
                r
            },
            refresher,
            releases,
            lifecycle,
            circuits,
            depths,
            control
        );
        drop(guard);
        fanout.and(deliveries)
    }
}

/// Reloads the matching index whenever a "webhooks changed" notice arrives
/// on the control exchange, so an API change applies on every replica
/// without waiting for the periodic refresh. Each worker gets a private,
/// server-named queue that disappears with its connection.
async fn watch_changes(
    connection: &Connection,
    topology: &Topology,
    pipeline: &Pipeline,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use lapin::types::FieldTable;

    let setup = async {
        let channel = connection.create_channel().await?;
        let queue = topology.declare_change_watch(&channel).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    // Bounded, and given up on shutdown: a broker that does not answer
    // must not hold the worker's stop.
    let setup = tokio::select! {
        _ = stop.cancelled() => return,
        setup = tokio::time::timeout(Duration::from_secs(30), setup) => setup,
    };
    let (channel, mut consumer) = match setup.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "RabbitMQ did not answer within 30 s",
        )
        .into())
    }) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(error = %error, "cannot watch for webhook changes; relying on the periodic refresh");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            notice = consumer.next() => match notice {
                Some(Ok(delivery)) => {
                    match courier_model::WebhooksChanged::from_slice(&delivery.data) {
                        // For the API's cache of verified keys, not for workers.
                        Ok(notice) if notice.changed == courier_model::WebhooksChangedKind::ApiKeys => continue,
                        Ok(notice) => tracing::debug!(workspace_id = %notice.workspace_id, "webhooks changed"),
                        // Reload all the same: a notice is only a hint.
                        Err(error) => tracing::warn!(error = %error, "unreadable change notice"),
                    }
                    if let Err(error) = pipeline.reload_subscriptions("notice").await {
                        tracing::warn!(error = %error_chain(&error), "reloading subscriptions after a change failed");
                    }
                }
                _ => break,
            },
        }
    }
    let cancel = channel.basic_cancel(
        consumer.tag(),
        lapin::options::BasicCancelOptions::default(),
    );
    courier_producer::bounded("basic.cancel", cancel).await;
    courier_producer::bounded("channel.close", channel.close(200, "".into())).await;
}

/// Reads the depth of every courier queue and the consumers of the work
/// queues from the broker every few seconds, for the dashboards and the
/// backlog and no-consumer alerts.
async fn queue_depths(
    connection: &Connection,
    topology: &Topology,
    metrics: &Metrics,
    rates: &rate::RateLimits,
    stop: CancellationToken,
) {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let opened = tokio::select! {
        _ = stop.cancelled() => return,
        opened = courier_producer::bounded("channel.open", connection.create_channel()) => opened,
    };
    let Some(Ok(channel)) = opened else {
        return;
    };
    let retry: Vec<String> = topology
        .retry_tiers()
        .iter()
        .map(|&d| topology.retry_queue(d))
        .collect();
    let groups: [(&str, Vec<String>); 5] = [
        ("fanout", vec![topology.fanout_queue()]),
        ("deliveries", vec![topology.deliveries_queue()]),
        ("retry", retry),
        ("dead", vec![topology.dead_queue()]),
        ("poison", vec![topology.poison_queue()]),
    ];
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        for (label, queues) in &groups {
            let (mut messages, mut consumers) = (0i64, 0i64);
            for queue in queues {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                let declare =
                    channel.queue_declare(queue.as_str().into(), passive, FieldTable::default());
                let answer = tokio::select! {
                    _ = stop.cancelled() => None,
                    answer = courier_producer::bounded("queue.declare", declare) => answer,
                };
                match answer {
                    Some(Ok(q)) => {
                        messages += i64::from(q.message_count());
                        consumers += i64::from(q.consumer_count());
                    }
                    Some(Err(error)) => {
                        tracing::debug!(queue, error = %error, "reading queue depth");
                        return;
                    }
                    None => return,
                }
            }
            metrics
                .queue_messages
                .with_label_values(&[label])
                .set(messages);
            // One consumer of the deliveries queue per replica: the share
            // of each rate limit this one sends (see `crate::rate`), in
            // force as soon as it is read.
            if *label == "deliveries" {
                rates.set_replicas(usize::try_from(consumers).unwrap_or(1));
            }
            if matches!(*label, "fanout" | "deliveries") {
                metrics
                    .queue_consumers
                    .with_label_values(&[label])
                    .set(consumers);
            }
        }
    }
    courier_producer::bounded("channel.close", channel.close(200, "".into())).await;
}
