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
