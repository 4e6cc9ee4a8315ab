//! The event envelope that upstreams publish and the worker consumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{EventId, EventType, WorkspaceId, subscription::Channel};

/// Events larger than this are refused by the producer and sent to the poison
/// queue by the worker: receivers and the ledger should not carry megabytes.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// How deeply an event's `data` may nest arrays and objects, its own object
/// counting as one level. The webhook body wraps `data` in one more object,
/// so a body nests at most 64 levels: within what the strictest common JSON
/// parsers read by default (.NET's System.Text.Json and Json.NET stop at 64,
/// Ruby's at 100, serde_json at 127), so every receiver can read what it
/// gets. Deeper data is refused by the producer and HTTP ingest, and the
/// worker sets such an event aside in the poison queue.
pub const MAX_DATA_DEPTH: usize = 63;

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
    /// Data as an upstream gave it: checks that `text` is a JSON object
    /// nesting at most [`MAX_DATA_DEPTH`] levels, and keeps it as it is
    /// (only whitespace around the object is dropped). Every way into
    /// courier (the producer, its CLI, HTTP ingest) builds data with this,
    /// so receivers get the upstream's bytes, not a re-encoding of them.
    pub fn parse(text: impl Into<String>) -> Result<Self, EventError> {
        let data = Self::from_text(text.into()).map_err(EventError::DataMalformed)?;
        data.validate()?;
        Ok(data)
    }

    /// The text of a JSON value built in code; [`Event`] checks that it is
    /// an object. Text from outside goes through [`EventData::parse`]
    /// instead: a `Value` has already lost digits, key order and escapes.
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always serializes"))
    }

    /// Checks only that `text` is JSON, and keeps it as it is: for text
    /// that was validated on its way in, such as what the ledger kept.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn is_object(&self) -> bool {
        self.as_str().trim_start().starts_with('{')
    }

    /// The rules every event's data follows, whichever way it came in: for
    /// data read as part of a larger body (deserializing does not check).
    pub fn validate(&self) -> Result<(), EventError> {
        if !self.is_object() {
            return Err(EventError::DataNotObject);
        }
        if nests_deeper_than(self.as_str().as_bytes(), MAX_DATA_DEPTH) {
            return Err(EventError::DataTooDeep);
        }
        Ok(())
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
    #[error("event field `data` is not valid JSON: {0}")]
    DataMalformed(#[source] serde_json::Error),
    #[error("event field `data` must be a JSON object")]
    DataNotObject,
    #[error(
        "event field `data` nests arrays and objects more than {max} levels deep; \
         courier accepts at most {max}, so that every receiver's JSON parser can read the webhook",
        max = MAX_DATA_DEPTH
    )]
    DataTooDeep,
}

/// Whether JSON text nests arrays and objects more than `max` levels deep.
///
/// serde_json skips over a [`RawValue`] without its recursion limit, so
/// `data` a hundred thousand levels deep parses; this bounds it instead. It
/// runs on every event the worker consumes (and on every ingested event
/// before), hence one pass over the bytes with no allocation: brackets
/// count unless they are inside a string, and a string ends at a quote that
/// is not escaped. Strings are skipped with `memchr`, which finds their
/// next quote or backslash many bytes at a time. It expects text that is
/// valid JSON (it does not check it).
pub fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = json.get(at) {
        at += 1;
        match byte {
            b'"' => loop {
                // To the end of the string: past the next quote that is not
                // escaped, skipping each backslash with the byte after it.
                let Some(found) = json
                    .get(at..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return false;
                };
                let quote = json[at + found] == b'"';
                at += found + if quote { 1 } else { 2 };
                if quote {
                    break;
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Event {
    /// A new event, with a generated id and the current time, of data
    /// checked by [`EventData::parse`] (or built in code).
    pub fn with_data(
        workspace_id: WorkspaceId,
        event_type: EventType,
        channel: Option<Channel>,
        data: EventData,
    ) -> Result<Self, EventError> {
        let event = Self {
            id: EventId::generate(),
            workspace_id,
            event_type,
            channel,
            occurred_at: Utc::now(),
            data,
        };
        event.validate()?;
        Ok(event)
    }

    /// As [`Event::with_data`], for data built in code. Data that arrives
    /// as text goes through [`EventData::parse`] and `with_data`, which keep
    /// it byte for byte; a `Value` has already rounded numbers beyond f64,
    /// sorted keys and rewritten escapes.
    pub fn new(
        workspace_id: WorkspaceId,
        event_type: EventType,
        channel: Option<Channel>,
        data: serde_json::Value,
    ) -> Result<Self, EventError> {
        Self::with_data(
            workspace_id,
            event_type,
            channel,
            EventData::from_value(&data),
        )
    }

    /// Parses and validates an event as it arrives from the broker. The
    /// worker calls this on every message and sets aside what it refuses.
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
        self.data.validate()
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

    /// Data nesting `levels` objects, each under key "a".
    fn nested(levels: usize) -> String {
        format!(
            "{}{}",
            r#"{"a":"#.repeat(levels - 1) + "{}",
            "}".repeat(levels - 1)
        )
    }

    fn envelope(data: &str) -> String {
        format!(
            r#"{{"id":"evt_1","workspace_id":"acme","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","data":{data}}}"#
        )
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        assert!(!nests_deeper_than(b"{}", 1));
        assert!(nests_deeper_than(b"{}", 0));
        assert!(!nests_deeper_than(b"[[1], {\"a\": [2]}]", 3));
        assert!(nests_deeper_than(b"[[1], {\"a\": [[2]]}]", 3));
        // Levels closed again do not add up.
        assert!(!nests_deeper_than(b"[[],[],[],[]]", 2));
        // Brackets inside strings, keys included, are text.
        assert!(!nests_deeper_than(br#"{"[[[{{{": "]]]}}}[[[{{{"}"#, 1));
        // An escaped quote does not end the string; the brackets after it
        // are still text.
        assert!(!nests_deeper_than(br#"{"a": "say \"[[[\" twice"}"#, 1));
        // An escaped backslash does not escape the quote after it: the
        // string ends there and the brackets that follow count.
        assert!(nests_deeper_than(br#"{"a": "back\\", "b": [[1]]}"#, 2));
        assert!(!nests_deeper_than(br#"{"a": "back\\", "b": [[1]]}"#, 3));
        // Escapes in a row: the quote after an odd run of backslashes is
        // escaped, and the brackets after it are still inside the string.
        assert!(nests_deeper_than(br#"{"a": "\\\"[\\\\", "b": [[1]]}"#, 2));
        assert!(!nests_deeper_than(br#"{"a": "\\\\\\\"[[[", "b": [1]}"#, 2));
        // Text cut off inside a string (not JSON) ends the scan, whether
        // at a backslash or not.
        assert!(!nests_deeper_than(br#"{"a": "[[[\"#, 1));
        assert!(!nests_deeper_than(br#"{"a": "[[["#, 1));
        // Unicode escapes and multi-byte characters are plain string bytes.
        assert!(!nests_deeper_than(
            r#"{"\u005b": "✓ [ \u0022"}"#.as_bytes(),
            1
        ));
        assert!(!nests_deeper_than(
            nested(MAX_DATA_DEPTH).as_bytes(),
            MAX_DATA_DEPTH
        ));
        assert!(nests_deeper_than(
            nested(MAX_DATA_DEPTH + 1).as_bytes(),
            MAX_DATA_DEPTH
        ));
    }

    #[test]
    fn deep_data_is_refused_wherever_it_comes_in() {
        let deepest = nested(MAX_DATA_DEPTH);
        let event = Event::from_slice(envelope(&deepest).as_bytes()).unwrap();
        assert_eq!(event.data.as_str(), deepest);
        // The webhook body, one level more, still parses with serde_json's
        // default limit (127), as a Rust receiver would read it.
        serde_json::from_slice::<serde_json::Value>(&event.webhook_body()).unwrap();
        assert!(EventData::parse(deepest).is_ok());

        // Past the limit by one, and far past it: serde_json alone accepts
        // both, since it skips raw values without its recursion limit.
        let arrays = 100_000;
        let far = format!("{{\"a\":{}{}}}", "[".repeat(arrays), "]".repeat(arrays));
        for data in [nested(MAX_DATA_DEPTH + 1), far] {
            let err = Event::from_slice(envelope(&data).as_bytes()).unwrap_err();
            assert!(matches!(err, EventError::DataTooDeep), "{err}");
            let message = err.to_string();
            assert!(
                message.contains("`data`") && message.contains("at most 63"),
                "{message}"
            );
            assert!(matches!(
                EventData::parse(data.clone()),
                Err(EventError::DataTooDeep)
            ));
        }
        let mut value = json!({});
        for _ in 0..MAX_DATA_DEPTH {
            value = json!({ "a": value });
        }
        let ws = WorkspaceId::parse("acme").unwrap();
        assert!(matches!(
            Event::new(ws, EventType::OrderCreated, None, value),
            Err(EventError::DataTooDeep)
        ));
    }

    #[test]
    fn parsed_data_keeps_its_text() {
        // Numbers beyond f64 and u64, keys out of order, escapes a writer
        // would rewrite, characters beyond ASCII; surrounding space goes.
        let text = "{\"order_id\": \"o-1\", \"total\": 12.50000000000000000001, \"big\": 123456789012345678901234567890, \"note\":\"caf\\u00e9 ✓\\n\", \"a\": []}";
        let data = EventData::parse(format!("\n  {text}\n")).unwrap();
        assert_eq!(data.as_str(), text);
        let event = Event::with_data(
            WorkspaceId::parse("acme").unwrap(),
            EventType::OrderCreated,
            None,
            data,
        )
        .unwrap();
        let body = String::from_utf8(event.webhook_body()).unwrap();
        assert!(body.ends_with(&format!(r#""data":{text}}}"#)), "{body}");
        let again = Event::from_slice(&event.to_vec().unwrap()).unwrap();
        assert_eq!(again.data.as_str(), text);

        for (bad, why) in [
            ("[1, 2]", "must be a JSON object"),
            ("\"text\"", "must be a JSON object"),
            ("{\"a\": }", "`data` is not valid JSON"),
            ("{} {}", "`data` is not valid JSON"),
            ("", "`data` is not valid JSON"),
        ] {
            let err = EventData::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
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
