//! The event envelope that upstreams publish and the worker consumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{EventId, EventType, WorkspaceId, subscription::Channel};

/// Events larger than this are refused by the producer and sent to the poison
/// queue by the worker: receivers and the ledger should not carry megabytes.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Room for the envelope around `data` (ids, type, timestamps), so that
/// writing an event or a webhook body does not grow its buffer.
const ENVELOPE_BYTES: usize = 256;

/// One business event. Serialized as-is onto the events exchange; the `data`
/// part is what a receiver gets, wrapped with the type and ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub id: EventId,
    pub workspace_id: WorkspaceId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The order channel the event came from (a marketplace, a shop), when
    /// the upstream knows it; subscriptions may filter on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    pub occurred_at: DateTime<Utc>,
    pub data: EventData,
}

/// An event's `data`: a JSON object, kept as the text it was published as.
/// Receivers get it byte for byte (numbers keep every digit, keys their
/// order), and the worker never builds a tree of it or writes it out again.
///
/// Equality is equality as JSON, whatever the spacing and key order. Both
/// ledgers keep the text itself (PostgreSQL as `json`, not `jsonb`), so
/// what is read back is what was written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventData(Box<RawValue>);

impl EventData {
    /// The text of a JSON value; [`Event`] checks that it is an object.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always serializes"))
    }

    /// Checks that `text` is JSON and keeps it as it is.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn is_object(&self) -> bool {
        self.as_str().trim_start().starts_with('{')
    }

    /// Parses the text, for the few readers that look inside.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).expect("event data is valid JSON")
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is {size} bytes; at most {max} are accepted", max = MAX_EVENT_BYTES)]
    TooLarge { size: usize },
    #[error("event is not valid JSON of the event envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("event field `data` must be a JSON object")]
    DataNotObject,
}

impl Event {
    pub fn new(
        workspace_id: WorkspaceId,
        event_type: EventType,
        channel: Option<Channel>,
        data: serde_json::Value,
    ) -> Result<Self, EventError> {
        let event = Self {
            id: EventId::generate(),
            workspace_id,
            event_type,
            channel,
            occurred_at: Utc::now(),
            data: EventData::from_value(&data),
        };
        event.validate()?;
        Ok(event)
    }

    /// Parses and validates an event as it arrives from the broker.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        let event: Event = serde_json::from_slice(bytes)?;
        event.validate()?;
        Ok(event)
    }

    pub fn to_vec(&self) -> Result<Vec<u8>, EventError> {
        let mut bytes = Vec::with_capacity(self.data.as_str().len() + ENVELOPE_BYTES);
        serde_json::to_writer(&mut bytes, self)?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        Ok(bytes)
    }

    fn validate(&self) -> Result<(), EventError> {
        if !self.data.is_object() {
            return Err(EventError::DataNotObject);
        }
        Ok(())
    }

    /// The JSON body POSTed to receivers. Shaped like the webhook payloads
    /// integrations already parse: type, ids, timestamp, and the data.
    pub fn webhook_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            id: &'a EventId,
            #[serde(rename = "type")]
            event_type: EventType,
            workspace_id: &'a WorkspaceId,
            #[serde(skip_serializing_if = "Option::is_none")]
            channel: Option<&'a Channel>,
            timestamp: DateTime<Utc>,
            data: &'a EventData,
        }
        let mut body = Vec::with_capacity(self.data.as_str().len() + ENVELOPE_BYTES);
        serde_json::to_writer(
            &mut body,
            &Body {
                id: &self.id,
                event_type: self.event_type,
                workspace_id: &self.workspace_id,
                channel: self.channel.as_ref(),
                timestamp: self.occurred_at,
                data: &self.data,
            },
        )
        .expect("ids, a timestamp and JSON text always serialize");
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        Event::new(
            WorkspaceId::parse("acme").unwrap(),
            EventType::OrderCreated,
            Some(Channel::parse("amazon").unwrap()),
            json!({"order_id": "o-1", "total": 12.5}),
        )
        .unwrap()
    }

    #[test]
    fn round_trips() {
        let event = sample();
        let bytes = event.to_vec().unwrap();
        assert_eq!(Event::from_slice(&bytes).unwrap(), event);
    }

    #[test]
    fn refuses_bad_input_with_named_reasons() {
        let err = Event::from_slice(b"{not json").unwrap_err();
        assert!(matches!(err, EventError::Malformed(_)));

        let unknown = br#"{"id":"e1","workspace_id":"w","type":"order.nope","occurred_at":"2026-01-01T00:00:00Z","data":{}}"#;
        let err = Event::from_slice(unknown).unwrap_err().to_string();
        assert!(err.contains("unknown event type \"order.nope\""), "{err}");

        let not_object = br#"{"id":"e1","workspace_id":"w","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":[1]}"#;
        assert!(matches!(
            Event::from_slice(not_object),
            Err(EventError::DataNotObject)
        ));

        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            Event::from_slice(&huge),
            Err(EventError::TooLarge { .. })
        ));
    }

    #[test]
    fn data_reaches_the_body_as_published() {
        // Beyond u64 and f64, key order not sorted, spacing of its own: a
        // tree would round the numbers and reorder the keys.
        let data =
            r#"{"zeta": 1, "total": 12345678901234567890.12345678901234567890, "alpha": [1e400]}"#;
        let published = format!(
            r#"{{"id":"evt_1","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":{data}}}"#
        );
        let event = Event::from_slice(published.as_bytes()).unwrap();
        assert_eq!(event.data.as_str(), data);
        let body = String::from_utf8(event.webhook_body()).unwrap();
        assert!(body.ends_with(&format!(r#""data":{data}}}"#)), "{body}");
        let again = Event::from_slice(&event.to_vec().unwrap()).unwrap();
        assert_eq!(again.data.as_str(), data);
    }

    #[test]
    fn data_is_equal_as_json() {
        let spaced = EventData::from_text(r#"{ "b": [1, 2], "a": null }"#.into()).unwrap();
        let compact = EventData::from_value(&json!({"a": null, "b": [1, 2]}));
        assert_eq!(spaced, compact);
        assert_ne!(
            spaced,
            EventData::from_value(&json!({"a": null, "b": [2, 1]}))
        );
        assert!(spaced.is_object());
        assert!(!EventData::from_text(" [1]".into()).unwrap().is_object());
        assert!(EventData::from_text("{not json".into()).is_err());
    }

    #[test]
    fn webhook_body_carries_type_and_data() {
        let event = sample();
        let body: serde_json::Value = serde_json::from_slice(&event.webhook_body()).unwrap();
        assert_eq!(body["type"], "order.created");
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["channel"], "amazon");
        assert_eq!(body["data"]["order_id"], "o-1");
    }
}
