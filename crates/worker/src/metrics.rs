//! Every Prometheus metric courier exports, in one registry. Labels are
//! bounded sets (event types, outcomes, response classes, queue names):
//! never a URL, an id or anything else that grows without limit.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds, from a fast local receiver (~1 ms) to the default timeout (10 s).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Seconds from an event happening to its delivery: milliseconds when all
/// is well, up to a day when retries were needed.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0, 21600.0, 86400.0,
];

const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events read by the fan-out stage (parsed), by type.
    pub events_consumed: IntCounterVec,
    /// Events that matched no webhook (recorded all the same), by type.
    pub events_unmatched: IntCounterVec,
    /// Deliveries the fan-out stage created, by event type.
    pub deliveries_created: IntCounterVec,
    /// Attempts by outcome (success, retry, dead), response class and type.
    pub attempts: IntCounterVec,
    /// Time from sending a request to reading the response excerpt.
    pub attempt_duration: HistogramVec,
    /// Event occurred-at to a successful delivery.
    pub delivery_latency: Histogram,
    /// Deliveries moved to the dead queue, by event type.
    pub dead_lettered: IntCounterVec,
    /// Messages set aside in the poison queue, by stage.
    pub poison: IntCounterVec,
    /// Attempts put off because their endpoint was busy or its circuit
    /// open (no attempt made): held in the ledger.
    pub deferred: IntCounter,
    /// Deliveries the ledger holds that are due, as this worker last read.
    pub held: IntGauge,
    /// Times a webhook's circuit opened after repeated failures (in this
    /// process).
    pub circuit_opened: IntCounter,
    /// Webhooks whose circuit is open, ledger-wide.
    pub circuits_open: IntGauge,
    /// How long the longest-open circuit has been open, in seconds.
    pub circuit_longest_open: IntGauge,
    /// Attempts under way right now.
    pub in_flight: IntGauge,
    /// Ready messages per courier queue, as the broker reports them.
    pub queue_messages: IntGaugeVec,
    /// Consumers attached per work queue, as the broker reports them.
    pub queue_consumers: IntGaugeVec,
    /// Ops per group-commit ledger transaction.
    pub ledger_batch_size: Histogram,
    /// Broker confirms of courier's own publishes, by outcome.
    pub publish_confirms: IntCounterVec,
    /// `basic.ack` frames sent, by stage and mode (`multiple`: one frame
    /// for a run of messages; `single`: one finished message stuck behind
    /// an unfinished one).
    pub acks_sent: IntCounterVec,
    /// Messages those frames acked, by stage.
    pub messages_acked: IntCounterVec,
    /// Publish to confirm.
    pub publish_confirm_seconds: Histogram,
    /// Enabled subscriptions in this process's matching index.
    pub subscriptions_cached: IntGauge,
    /// Reloads of the matching index (start, change notices, periodic).
    pub subscription_reloads: IntCounterVec,
    /// 1 while this process's API hears key revocations, and so caches
    /// the API keys it verified.
    pub api_key_cache_active: IntGauge,
    /// Rows pruning removed in this process, by table (events,
    /// deliveries, attempts).
    pub retention_pruned: IntCounterVec,
    /// Pruning rounds by outcome (done, skipped: another process held the
    /// lock, failed).
    pub retention_runs: IntCounterVec,
    /// When this process last finished a pruning round (Unix seconds; 0:
    /// never).
    pub retention_last_run: IntGauge,
    /// Bytes the SQLite ledger file gave back after pruning.
    pub retention_reclaimed_bytes: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let events_consumed = counter(
            "courier_events_consumed_total",
            "Events read by the fan-out stage, by event type.",
            &["event_type"],
        );
        let events_unmatched = counter(
            "courier_events_unmatched_total",
            "Events that matched no webhook, by event type. They are recorded in the ledger \
             all the same, so the API can say why no webhook fired.",
            &["event_type"],
        );
        let deliveries_created = counter(
            "courier_deliveries_created_total",
            "Deliveries (event x matching webhook) created by the fan-out stage.",
            &["event_type"],
        );
        let attempts = counter(
            "courier_attempts_total",
            "Delivery attempts by outcome (success, retry, dead), response class and event type.",
            &["outcome", "class", "event_type"],
        );
        let dead_lettered = counter(
            "courier_dead_lettered_total",
            "Deliveries that exhausted their attempts and went to the dead queue.",
            &["event_type"],
        );
        let poison = counter(
            "courier_poison_messages_total",
            "Unprocessable messages moved to the poison queue, by stage.",
            &["stage"],
        );
        let publish_confirms = counter(
            "courier_publish_confirms_total",
            "Broker confirms of messages courier published, by outcome.",
            &["outcome"],
        );
        let acks_sent = counter(
            "courier_acks_sent_total",
            "basic.ack frames sent to the broker, by stage and mode (multiple: a run of messages; single: one message).",
            &["stage", "mode"],
        );
        let messages_acked = counter(
            "courier_messages_acked_total",
            "Messages acked to the broker, by stage.",
            &["stage"],
        );

        let retention_pruned = counter(
            "courier_retention_pruned_total",
            "Ledger rows pruning removed in this process, by table (events, deliveries, attempts).",
            &["table"],
        );
        let retention_runs = counter(
            "courier_retention_runs_total",
            "Pruning rounds by outcome (done; skipped: another process held the pruning lock; failed).",
            &["outcome"],
        );
        // At 0 from the start, so a dashboard sees pruning before it runs.
        for table in ["events", "deliveries", "attempts"] {
            retention_pruned.with_label_values(&[table]);
        }
        for outcome in ["done", "skipped", "failed"] {
            retention_runs.with_label_values(&[outcome]);
        }

        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let deferred = plain_counter(
            "courier_deliveries_deferred_total",
            "Attempts put off, held in the ledger, because their endpoint was busy or its circuit open.",
        );
        let circuit_opened = plain_counter(
            "courier_endpoint_circuit_opened_total",
            "Times a webhook's circuit opened in this process after failing attempts in a row.",
        );
        let retention_reclaimed_bytes = plain_counter(
            "courier_retention_reclaimed_bytes_total",
            "Bytes the SQLite ledger file gave back to the file system after pruning (incremental vacuum).",
        );
        let subscription_reloads = counter(
            "courier_subscription_reloads_total",
            "Reloads of the matching index, by what triggered them (start, notice, periodic, catch_up: a fan-out found the index behind the ledger).",
            &["trigger"],
        );

        let attempt_duration = HistogramVec::new(
            HistogramOpts::new(
                "courier_attempt_duration_seconds",
                "Duration of one delivery attempt, request to response, by response class.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["class"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(attempt_duration.clone()))
            .expect("unique metric");

        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let delivery_latency = histogram(
            "courier_delivery_latency_seconds",
            "Time from an event's occurred_at to its successful delivery.",
            LATENCY_BUCKETS,
        );
        let ledger_batch_size = histogram(
            "courier_ledger_batch_size",
            "Ledger writes committed together in one group-commit transaction.",
            BATCH_BUCKETS,
        );
        let publish_confirm_seconds = histogram(
            "courier_publish_confirm_seconds",
            "Time from publishing a message to the broker's confirm.",
            DURATION_BUCKETS,
        );

        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let in_flight = gauge(
            "courier_deliveries_in_flight",
            "Delivery attempts under way in this process.",
        );
        let subscriptions_cached = gauge(
            "courier_subscriptions_cached",
            "Webhooks in this process's matching index (disabled ones too: their deliveries are recorded paused).",
        );
        let api_key_cache_active = gauge(
            "courier_api_key_cache_active",
            "1 while this process hears API key revocations and so caches the keys it verified; 0: every API request reads its key from the ledger.",
        );
        let retention_last_run = gauge(
            "courier_retention_last_run_timestamp_seconds",
            "When this process last finished a pruning round, in Unix seconds; 0 if it never did.",
        );
        let held = gauge(
            "courier_deliveries_held",
            "Held deliveries due for an attempt, waiting for room at their endpoint (ledger-wide).",
        );
        let circuits_open = gauge(
            "courier_webhook_circuits_open",
            "Webhooks whose circuit is open after failed attempts in a row (ledger-wide).",
        );
        let circuit_longest_open = gauge(
            "courier_webhook_circuit_longest_open_seconds",
            "How long the longest-open webhook circuit has been open, 0 when none is (ledger-wide).",
        );
        let gauge_vec = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["queue"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let queue_messages = gauge_vec(
            "courier_queue_messages",
            "Messages ready in each courier queue (retry: all tiers), as reported by the broker.",
        );
        let queue_consumers = gauge_vec(
            "courier_queue_consumers",
            "Consumers attached to each work queue, as reported by the broker.",
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "courier_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        Self {
            registry,
            events_consumed,
            events_unmatched,
            deliveries_created,
            attempts,
            attempt_duration,
            delivery_latency,
            dead_lettered,
            poison,
            deferred,
            held,
            circuit_opened,
            circuits_open,
            circuit_longest_open,
            in_flight,
            queue_messages,
            queue_consumers,
            ledger_batch_size,
            publish_confirms,
            acks_sent,
            messages_acked,
            publish_confirm_seconds,
            subscriptions_cached,
            api_key_cache_active,
            subscription_reloads,
            retention_pruned,
            retention_runs,
            retention_last_run,
            retention_reclaimed_bytes,
        }
    }

    /// The registry, for metrics kept beside these.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_help() {
        let m = Metrics::new();
        m.attempts
            .with_label_values(&["success", "2xx", "order.created"])
            .inc();
        let text = m.encode();
        for name in [
            "courier_attempts_total",
            "courier_deliveries_in_flight",
            "courier_deliveries_deferred_total",
            "courier_deliveries_held",
            "courier_endpoint_circuit_opened_total",
            "courier_webhook_circuits_open",
            "courier_webhook_circuit_longest_open_seconds",
            "courier_delivery_latency_seconds",
            "courier_ledger_batch_size",
            "courier_publish_confirm_seconds",
            "courier_subscriptions_cached",
            "courier_build_info",
            "courier_retention_last_run_timestamp_seconds",
            "courier_retention_reclaimed_bytes_total",
            "courier_retention_pruned_total",
            "courier_retention_runs_total",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
        }
        assert!(text.contains(
            r#"courier_attempts_total{class="2xx",event_type="order.created",outcome="success"} 1"#
        ));
    }
}
