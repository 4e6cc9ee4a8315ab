//! JSON contracts of the queue messages the worker passes to itself. Events
//! on the events exchange are [`crate::Event`]s; these are the rest.

use serde::{Deserialize, Serialize};

use crate::{DeliveryId, EventId, SubscriptionId, WorkspaceId};

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("delivery message is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("delivery message has version {0}; this worker understands version 1")]
    Version(u32),
    #[error("delivery message has attempt 0; attempts count from 1")]
    ZeroAttempt,
    #[error("event group is not valid JSON of the shape {{\"v\":1,\"events\":[...]}}: {0}")]
    GroupMalformed(#[source] serde_json::Error),
    #[error("event group has version {0}; this worker understands version 1")]
    GroupVersion(u32),
}

/// "Make attempt `attempt` of this delivery." Published by fan-out (attempt
/// 1), by the retry tiers (attempt n+1 after attempt n failed) and by manual
/// redelivery. The attempt number lets a worker recognise a stale duplicate:
/// if the ledger already holds attempt n, this message's work is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub v: u32,
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub subscription_id: SubscriptionId,
    pub attempt: u32,
}

impl DeliveryMessage {
    pub const VERSION: u32 = 1;

    pub fn new(
        delivery_id: DeliveryId,
        event_id: EventId,
        subscription_id: SubscriptionId,
        attempt: u32,
    ) -> Self {
        Self {
            v: Self::VERSION,
            delivery_id,
            event_id,
            subscription_id,
            attempt,
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("delivery messages always serialize")
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, MessageError> {
        let msg: Self = serde_json::from_slice(bytes)?;
        if msg.v != Self::VERSION {
            return Err(MessageError::Version(msg.v));
        }
        if msg.attempt == 0 {
            return Err(MessageError::ZeroAttempt);
        }
        Ok(msg)
    }

    /// The message for the attempt after this one.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }
}

/// Header of a message on the fan-out queue that holds a group of events
/// rather than one; its value is how many. HTTP ingest groups the events
/// of requests that arrive together, so the broker and the worker handle
/// one message for the lot (see [`EventGroup`]).
pub const EVENT_GROUP_HEADER: &str = "x-courier-events";

/// Events sent as one fan-out message: `{"v":1,"events":[...]}`, each event
/// as [`crate::Event::to_vec`] encodes it. The worker reads the events one
/// by one, so a malformed one is set aside alone.
#[derive(Debug, Deserialize)]
pub struct EventGroup<'a> {
    pub v: u32,
    #[serde(borrow)]
    pub events: Vec<&'a serde_json::value::RawValue>,
}

impl<'a> EventGroup<'a> {
    pub const VERSION: u32 = 1;

    /// The group's body from its events, each already encoded.
    pub fn encode<'e>(events: impl IntoIterator<Item = &'e [u8]>) -> Vec<u8> {
        let mut body = Vec::from(&br#"{"v":1,"events":["#[..]);
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// The group's events, each as its bytes, to be read with
    /// [`crate::Event::from_slice`].
    pub fn decode(body: &'a [u8]) -> Result<Vec<&'a [u8]>, MessageError> {
        let group: EventGroup<'a> =
            serde_json::from_slice(body).map_err(MessageError::GroupMalformed)?;
        if group.v != Self::VERSION {
            return Err(MessageError::GroupVersion(group.v));
        }
        Ok(group
            .events
            .into_iter()
            .map(|event| event.get().as_bytes())
            .collect())
    }
}

/// A change every courier process must hear of, broadcast on the control
/// exchange. "The webhooks of this workspace changed": each worker reloads
/// its matching index before the next event needs it; only a hint, since a
/// fan-out checks the ledger's webhooks version itself before matching, so
/// a lost notice delays nothing but that reload. "This API key was
/// revoked": each API forgets it from its cache of verified keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhooksChanged {
    pub changed: WebhooksChangedKind,
    pub workspace_id: WorkspaceId,
    /// The revoked key, for [`WebhooksChangedKind::ApiKeys`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// What changed: a tag, so that several kinds of notice share the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhooksChangedKind {
    Webhooks,
    ApiKeys,
}

impl WebhooksChanged {
    pub fn new(workspace_id: WorkspaceId) -> Self {
        Self {
            changed: WebhooksChangedKind::Webhooks,
            workspace_id,
            key_id: None,
        }
    }

    /// The API key `key_id` of `workspace_id` no longer exists.
    pub fn key_revoked(workspace_id: WorkspaceId, key_id: String) -> Self {
        Self {
            changed: WebhooksChangedKind::ApiKeys,
            workspace_id,
            key_id: Some(key_id),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("change notices always serialize")
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_notices_keep_their_wire_shape() {
        let notice = WebhooksChanged::new(WorkspaceId::parse("acme").unwrap());
        let bytes = notice.to_vec();
        // The shape workers of the previous release parse too.
        assert_eq!(bytes, br#"{"changed":"webhooks","workspace_id":"acme"}"#);
        assert_eq!(WebhooksChanged::from_slice(&bytes).unwrap(), notice);
        let revoked =
            WebhooksChanged::key_revoked(WorkspaceId::parse("acme").unwrap(), "key_1".into());
        assert_eq!(
            revoked.to_vec(),
            br#"{"changed":"api_keys","workspace_id":"acme","key_id":"key_1"}"#
        );
        assert_eq!(
            WebhooksChanged::from_slice(&revoked.to_vec()).unwrap(),
            revoked
        );
    }

    #[test]
    fn an_event_group_holds_its_events_as_they_were_encoded() {
        let ws = WorkspaceId::parse("acme").unwrap();
        let events: Vec<crate::Event> = (0..3)
            .map(|n| {
                crate::Event::new(
                    ws.clone(),
                    crate::EventType::OrderCreated,
                    None,
                    serde_json::json!({ "n": n, "text": "a \\\"quoted\\\" ,]} text" }),
                )
                .unwrap()
            })
            .collect();
        let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.to_vec().unwrap()).collect();
        let body = EventGroup::encode(bodies.iter().map(Vec::as_slice));
        let back = EventGroup::decode(&body).unwrap();
        assert_eq!(back, bodies.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for (bytes, event) in back.iter().zip(&events) {
            assert_eq!(&crate::Event::from_slice(bytes).unwrap(), event);
        }
        // One event that is not one is the worker's to set aside; the
        // group is still read.
        let odd = EventGroup::encode([bodies[0].as_slice(), b"{\"not\":\"an event\"}"]);
        let back = EventGroup::decode(&odd).unwrap();
        assert!(crate::Event::from_slice(back[1]).is_err());

        assert!(matches!(
            EventGroup::decode(br#"{"v":2,"events":[]}"#),
            Err(MessageError::GroupVersion(2))
        ));
        assert!(EventGroup::decode(b"[1,2").is_err());
    }

    #[test]
    fn round_trip_and_rejections() {
        let event = EventId::parse("evt_1").unwrap();
        let sub = SubscriptionId::generate();
        let msg = DeliveryMessage::new(DeliveryId::derive(&event, sub), event, sub, 1);
        let back = DeliveryMessage::from_slice(&msg.to_vec()).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.next_attempt().attempt, 2);
        // Earlier versions counted deferrals in the message; such messages,
        // still waiting in a retry queue after an upgrade, are read as usual.
        let mut older: serde_json::Value = serde_json::from_slice(&msg.to_vec()).unwrap();
        older["deferrals"] = 2.into();
        assert_eq!(
            DeliveryMessage::from_slice(older.to_string().as_bytes()).unwrap(),
            msg
        );

        let mut v2: serde_json::Value = serde_json::from_slice(&msg.to_vec()).unwrap();
        v2["v"] = 2.into();
        assert!(matches!(
            DeliveryMessage::from_slice(v2.to_string().as_bytes()),
            Err(MessageError::Version(2))
        ));
        v2["v"] = 1.into();
        v2["attempt"] = 0.into();
        assert!(matches!(
            DeliveryMessage::from_slice(v2.to_string().as_bytes()),
            Err(MessageError::ZeroAttempt)
        ));
        assert!(DeliveryMessage::from_slice(b"garbage").is_err());
    }
}
