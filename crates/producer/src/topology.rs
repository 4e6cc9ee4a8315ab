//! Names and declarations of courier's exchanges and queues.
//!
//! ```text
//! producers -> {p}.events (topic) -#-> {p}.fanout (quorum)      worker stage 1
//! stage 1   -> {p}.deliveries (direct) -> {p}.deliveries (quorum) stage 2
//! stage 2   -> "" -> {p}.retry.<ms> (quorum, TTL) -DLX-> {p}.deliveries
//! stage 2   -> {p}.dead (fanout) -> {p}.dead (quorum)
//! anyone    -> "" -> {p}.poison (quorum)   unparseable messages
//! ```
//!
//! Every work queue dead-letters a message that was handed out
//! `DELIVERY_LIMIT` times without an ack to the poison queue, so a message
//! that crashes the worker cannot loop forever.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// Redeliveries of one message before a work queue gives up on it.
pub const DELIVERY_LIMIT: i64 = 20;

/// Routing key of delivery messages on the deliveries exchange.
pub const DELIVERY_ROUTING_KEY: &str = "delivery";

/// The broker names of one courier installation (one prefix) and its retry
/// tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    retry_tiers: Vec<Duration>,
}

impl Topology {
    pub fn new(prefix: impl Into<String>, retry_tiers: Vec<Duration>) -> Self {
        Self {
            prefix: prefix.into(),
            retry_tiers,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn fanout_queue(&self) -> String {
        format!("{}.fanout", self.prefix)
    }

    pub fn deliveries_exchange(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, delay.as_millis())
    }

    pub fn retry_tiers(&self) -> &[Duration] {
        &self.retry_tiers
    }

    /// The tier a wait of `delay` goes to: the shortest tier that is at
    /// least as long (the longest when none is). Per-message expiration may
    /// then shorten the wait inside that tier (jitter).
    pub fn tier_for(&self, delay: Duration) -> Option<Duration> {
        self.retry_tiers
            .iter()
            .copied()
            .find(|&t| t >= delay)
            .or_else(|| self.retry_tiers.last().copied())
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn poison_queue(&self) -> String {
        format!("{}.poison", self.prefix)
    }

    /// Fanout exchange for "the webhooks changed" notices: every worker
    /// binds a private queue to it and reloads its matching index.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Every queue name, for operators and for tests that clean up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.fanout_queue(),
            self.deliveries_queue(),
            self.dead_queue(),
            self.poison_queue(),
        ];
        queues.extend(self.retry_tiers.iter().map(|&d| self.retry_queue(d)));
        queues
    }

    pub fn exchanges(&self) -> Vec<String> {
        vec![
            self.events_exchange(),
            self.deliveries_exchange(),
            self.dead_exchange(),
            self.control_exchange(),
        ]
    }

    /// A queue of this connection's own, bound to the control exchange,
    /// that receives every change notice and disappears with the
    /// connection. Returns its (server-chosen) name.
    pub async fn declare_change_watch(&self, channel: &Channel) -> lapin::Result<String> {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.control_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(queue.name().to_string())
    }

    /// What a producer needs so that no published event is unroutable: the
    /// events exchange, the fan-out queue bound to it, and the poison queue
    /// the fan-out queue dead-letters to.
    pub async fn declare_ingress(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_queue(channel, &self.poison_queue(), quorum())
            .await?;
        self.declare_exchange(channel, &self.events_exchange(), ExchangeKind::Topic)
            .await?;
        self.declare_queue(channel, &self.fanout_queue(), self.work_queue_args())
            .await?;
        channel
            .queue_bind(
                self.fanout_queue().into(),
                self.events_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Everything the API publishes to: events (ingress), redeliveries (the
    /// deliveries exchange and the queue it feeds, so a redelivery is kept
    /// before any worker ran) and change notices (the control exchange).
    /// Without these a publish to a missing exchange closes the channel.
    pub async fn declare_api(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_ingress(channel).await?;
        self.declare_deliveries(channel).await?;
        self.declare_control(channel).await
    }

    /// The control exchange change notices go through.
    pub async fn declare_control(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_exchange(channel, &self.control_exchange(), ExchangeKind::Fanout)
            .await
    }

    /// Everything, as the worker needs it. Idempotent: declaring again with
    /// the same arguments is a no-op on the broker.
    pub async fn declare_all(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_ingress(channel).await?;
        self.declare_deliveries(channel).await?;

        for &delay in &self.retry_tiers {
            let mut args = quorum();
            args.insert("x-message-ttl".into(), long(delay.as_millis() as i64));
            // Expired messages go back to the deliveries queue, at least once.
            args.insert(
                "x-dead-letter-exchange".into(),
                string(&self.deliveries_exchange()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                string(DELIVERY_ROUTING_KEY),
            );
            at_least_once_dead_lettering(&mut args);
            self.declare_queue(channel, &self.retry_queue(delay), args)
                .await?;
        }

        self.declare_exchange(channel, &self.control_exchange(), ExchangeKind::Fanout)
            .await?;
        self.declare_exchange(channel, &self.dead_exchange(), ExchangeKind::Fanout)
            .await?;
        self.declare_queue(channel, &self.dead_queue(), quorum())
            .await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// The deliveries exchange and queue, bound with the delivery key.
    async fn declare_deliveries(&self, channel: &Channel) -> lapin::Result<()> {
        self.declare_exchange(channel, &self.deliveries_exchange(), ExchangeKind::Direct)
            .await?;
        self.declare_queue(channel, &self.deliveries_queue(), self.work_queue_args())
            .await?;
        channel
            .queue_bind(
                self.deliveries_queue().into(),
                self.deliveries_exchange().into(),
                DELIVERY_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes every queue and exchange of this prefix, messages included.
    /// For tests and benchmarks that must leave a shared broker as they
    /// found it; best effort, what is already gone is skipped.
    pub async fn delete_all(&self, channel: &Channel) {
        for queue in self.queues() {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in self.exchanges() {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// Work queues hand a message out at most `DELIVERY_LIMIT` times, then
    /// dead-letter it to the poison queue.
    fn work_queue_args(&self) -> FieldTable {
        let mut args = quorum();
        args.insert("x-delivery-limit".into(), long(DELIVERY_LIMIT));
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            string(&self.poison_queue()),
        );
        at_least_once_dead_lettering(&mut args);
        args
    }

    async fn declare_exchange(
        &self,
        channel: &Channel,
        name: &str,
        kind: ExchangeKind,
    ) -> lapin::Result<()> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel.queue_declare(name.into(), options, args).await?;
        Ok(())
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

/// Without these, a quorum queue dead-letters at most once: a message could
/// vanish if the target queue were unavailable at that moment.
fn at_least_once_dead_lettering(args: &mut FieldTable) {
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn long(value: i64) -> AMQPValue {
    AMQPValue::LongLongInt(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new(
            "t1",
            vec![Duration::from_millis(100), Duration::from_secs(2)],
        );
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(t.retry_queue(Duration::from_secs(2)), "t1.retry.2000");
        assert_eq!(t.queues().len(), 6);
        assert!(t.queues().iter().all(|q| q.starts_with("t1.")));
    }

    #[test]
    fn tiers_round_up() {
        let t = Topology::new(
            "t",
            vec![Duration::from_millis(100), Duration::from_millis(400)],
        );
        assert_eq!(
            t.tier_for(Duration::from_millis(50)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            t.tier_for(Duration::from_millis(100)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            t.tier_for(Duration::from_millis(300)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            t.tier_for(Duration::from_secs(9)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(Topology::new("t", vec![]).tier_for(Duration::ZERO), None);
    }
}
