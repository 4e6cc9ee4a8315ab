//! The messages courier sends to its own topology, each addressed and
//! labelled here once: a delivery's next attempt, a retry parked in its
//! tier, a dead letter, a poison message and a change notice. The worker
//! and the API build them with [`Topology`] and send them on a
//! [`ConfirmedChannel`](crate::ConfirmedChannel); neither names an
//! exchange, a routing key or a header itself.

use std::borrow::Cow;
use std::time::Duration;

use courier_model::{DeliveryMessage, EVENT_GROUP_HEADER, Event, EventError, WebhooksChanged};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::Topology;
use crate::topology::DELIVERY_ROUTING_KEY;

/// Header of a poison message: why it was set aside.
pub const POISON_REASON_HEADER: &str = "x-courier-error";
/// Header of a poison message: the queue it came from.
pub const POISON_SOURCE_HEADER: &str = "x-courier-source-queue";
/// The longest reason a poison message carries (longer ones are cut).
const MAX_POISON_REASON_BYTES: usize = 1024;

/// What kind of message an [`Outgoing`] is, for the sender's metrics and
/// logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutgoingKind {
    /// The next attempt of a delivery, on the deliveries exchange.
    Delivery,
    /// A delivery's next attempt parked in a retry tier.
    Retry,
    /// A delivery given up, on the dead exchange.
    Dead,
    /// A message that can never be processed, in the poison queue.
    Poison,
    /// "Webhooks changed", on the control exchange.
    Notice,
    /// An event courier publishes itself (an operational notice about a
    /// webhook), on the events exchange like any upstream's.
    Event,
    /// Events taken by HTTP ingest, as one message on the fan-out queue.
    EventGroup,
}

/// One message, addressed: where it goes, with which properties.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    pub(crate) kind: OutgoingKind,
    pub(crate) exchange: String,
    pub(crate) routing_key: Cow<'static, str>,
    pub(crate) body: Cow<'a, [u8]>,
    pub(crate) properties: BasicProperties,
}

impl Outgoing<'_> {
    pub fn kind(&self) -> OutgoingKind {
        self.kind
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl Topology {
    /// The message that makes attempt `msg.attempt` of a delivery now.
    pub fn delivery(&self, msg: &DeliveryMessage) -> Outgoing<'static> {
        Outgoing {
            kind: OutgoingKind::Delivery,
            exchange: self.deliveries_exchange(),
            routing_key: Cow::Borrowed(DELIVERY_ROUTING_KEY),
            body: Cow::Owned(msg.to_vec()),
            properties: json_properties(),
        }
    }

    /// The next attempt after `msg`'s, `delay` from now: parked in the
    /// shortest retry tier at least that long (the longest when none is),
    /// expiring after `delay` at most, when it goes back to the deliveries
    /// queue. A topology without tiers cannot wait: the delivery is dead.
    pub fn retry(&self, msg: &DeliveryMessage, delay: Duration) -> Outgoing<'static> {
        let Some(tier) = self.tier_for(delay) else {
            return self.dead_letter(msg);
        };
        let expiration = delay.min(tier).as_millis().to_string();
        Outgoing {
            kind: OutgoingKind::Retry,
            exchange: String::new(),
            routing_key: Cow::Owned(self.retry_queue(tier)),
            body: Cow::Owned(msg.next_attempt().to_vec()),
            properties: json_properties().with_expiration(expiration.as_str().into()),
        }
    }

    /// A delivery given up after attempt `msg.attempt`, kept in the dead
    /// queue for inspection and replay.
    pub fn dead_letter(&self, msg: &DeliveryMessage) -> Outgoing<'static> {
        Outgoing {
            kind: OutgoingKind::Dead,
            exchange: self.dead_exchange(),
            routing_key: Cow::Borrowed(""),
            body: Cow::Owned(msg.to_vec()),
            properties: json_properties(),
        }
    }

    /// A message from `source_queue` that can never be processed, set aside
    /// as it came with the reason in a header.
    pub fn poison<'a>(&self, body: &'a [u8], source_queue: &str, reason: &str) -> Outgoing<'a> {
        let mut headers = FieldTable::default();
        headers.insert(
            POISON_REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(truncate(reason, MAX_POISON_REASON_BYTES))),
        );
        headers.insert(
            POISON_SOURCE_HEADER.into(),
            AMQPValue::LongString(LongString::from(source_queue)),
        );
        Outgoing {
            kind: OutgoingKind::Poison,
            exchange: String::new(),
            routing_key: Cow::Owned(self.poison_queue()),
            body: Cow::Borrowed(body),
            properties: BasicProperties::default().with_headers(headers),
        }
    }

    /// An event of courier's own, published as an upstream publishes one:
    /// routed by its type, labelled with its id.
    pub fn event(&self, event: &Event) -> Result<Outgoing<'static>, EventError> {
        Ok(Outgoing {
            kind: OutgoingKind::Event,
            exchange: self.events_exchange(),
            routing_key: Cow::Borrowed(event.event_type.as_str()),
            body: Cow::Owned(event.to_vec()?),
            properties: json_properties()
                .with_message_id(event.id.as_str().into())
                .with_type(event.event_type.as_str().into())
                .with_timestamp(event.occurred_at.timestamp().max(0) as u64),
        })
    }

    /// `events` events taken by HTTP ingest, as one message (`body` from
    /// [`courier_model::EventGroup::encode`]) sent straight to the fan-out queue through
    /// the default exchange, marked with [`EVENT_GROUP_HEADER`]. A group is
    /// courier's own format: it goes to courier's queue only, never through
    /// the events exchange to a queue someone else bound there.
    pub fn event_group(&self, events: usize, body: Vec<u8>) -> Outgoing<'static> {
        let mut headers = FieldTable::default();
        headers.insert(
            EVENT_GROUP_HEADER.into(),
            AMQPValue::LongLongInt(i64::try_from(events).unwrap_or(i64::MAX)),
        );
        Outgoing {
            kind: OutgoingKind::EventGroup,
            exchange: String::new(),
            routing_key: Cow::Owned(self.fanout_queue()),
            body: Cow::Owned(body),
            properties: json_properties().with_headers(headers),
        }
    }

    /// Tells every worker that webhooks changed.
    pub fn webhooks_changed(&self, notice: &WebhooksChanged) -> Outgoing<'static> {
        Outgoing {
            kind: OutgoingKind::Notice,
            exchange: self.control_exchange(),
            routing_key: Cow::Borrowed(""),
            body: Cow::Owned(notice.to_vec()),
            properties: json_properties(),
        }
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_model::{DeliveryId, EventId, SubscriptionId};

    fn topology() -> Topology {
        Topology::new("t", vec![Duration::from_secs(5), Duration::from_secs(60)])
    }

    fn msg(attempt: u32) -> DeliveryMessage {
        let event = EventId::parse("evt_1").unwrap();
        let sub = SubscriptionId::generate();
        DeliveryMessage::new(DeliveryId::derive(&event, sub), event, sub, attempt)
    }

    #[test]
    fn retries_park_the_next_attempt_in_their_tier() {
        let retry = topology().retry(&msg(2), Duration::from_secs(30));
        assert_eq!(retry.kind(), OutgoingKind::Retry);
        assert_eq!(retry.exchange, "");
        assert_eq!(retry.routing_key, "t.retry.60000");
        assert_eq!(
            retry.properties.expiration().as_ref().map(|e| e.as_str()),
            Some("30000")
        );
        assert_eq!(
            DeliveryMessage::from_slice(retry.body()).unwrap().attempt,
            3
        );
        // Longer than every tier: the longest tier, its length at most.
        let long = topology().retry(&msg(2), Duration::from_secs(600));
        assert_eq!(long.routing_key, "t.retry.60000");
        assert_eq!(
            long.properties.expiration().as_ref().map(|e| e.as_str()),
            Some("60000")
        );
        // No tiers: dead.
        let none = Topology::new("t", vec![]).retry(&msg(2), Duration::from_secs(1));
        assert_eq!(none.kind(), OutgoingKind::Dead);
        assert_eq!(DeliveryMessage::from_slice(none.body()).unwrap().attempt, 2);
    }

    #[test]
    fn each_kind_goes_where_its_queue_is() {
        let t = topology();
        let delivery = t.delivery(&msg(1));
        assert_eq!(
            (delivery.exchange.as_str(), &*delivery.routing_key),
            ("t.deliveries", DELIVERY_ROUTING_KEY)
        );
        let dead = t.dead_letter(&msg(4));
        assert_eq!((dead.exchange.as_str(), &*dead.routing_key), ("t.dead", ""));
        let notice = t.webhooks_changed(&WebhooksChanged::new(
            courier_model::WorkspaceId::parse("acme").unwrap(),
        ));
        assert_eq!(notice.exchange, "t.control");
        let reason = "é".repeat(600);
        let poison = t.poison(b"{oops", "t.fanout", &reason);
        assert_eq!(&*poison.routing_key, "t.poison");
        assert_eq!(poison.body(), b"{oops");
        let headers = poison.properties.headers().as_ref().unwrap();
        let Some(AMQPValue::LongString(kept)) = headers.inner().get(POISON_REASON_HEADER) else {
            panic!("no reason header")
        };
        assert!(kept.as_bytes().len() <= MAX_POISON_REASON_BYTES);
        assert!(std::str::from_utf8(kept.as_bytes()).is_ok());
    }
}
