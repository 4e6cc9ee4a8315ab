//! Typed identifiers. Workspace and event ids come from upstream systems, so
//! they are validated strings; the ids courier mints itself are UUIDs.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} may only contain letters, digits and '-', '_', '.', ':' (found {found:?})")]
    BadCharacter { what: &'static str, found: char },
    #[error("{what} is not a UUID: {source}")]
    NotUuid {
        what: &'static str,
        #[source]
        source: uuid::Error,
    },
}

/// Upstream ids end up in headers, log lines and URLs: keep them to a
/// conservative alphabet so none of those need escaping.
fn check_slug(what: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(IdError::BadCharacter { what, found });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_slug($what, &value, $max)?;
                Ok(Self(value))
            }

            /// A fresh, time-ordered id with a readable prefix.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), Uuid::now_v7().simple()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// A tenant. Upstreams publish with their own workspace ids, so any
    /// conservative slug is accepted; `courier workspace create` mints `ws_...`.
    WorkspaceId, "workspace id", 64, "ws_"
);
string_id!(
    /// An event, as named by the upstream that published it (`evt_...` when
    /// the producer mints it). Redelivered events keep their id, which is what
    /// makes fan-out idempotent.
    EventId, "event id", 128, "evt_"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, IdError> {
                Uuid::parse_str(value)
                    .map(Self)
                    .map_err(|source| IdError::NotUuid { what: $what, source })
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// A subscription (a "webhook" in the API).
    SubscriptionId, "webhook id"
);
uuid_id!(
    /// One (event, subscription) pair. Doubles as the `webhook-id` header, so
    /// it is stable across every retry of the same delivery.
    DeliveryId, "delivery id"
);

impl SubscriptionId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

/// Namespace for deterministic delivery ids (a random constant, fixed forever).
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_0f3e_8a7b_4e2c_9d61_2f7a_b3c4_d5e6);

impl DeliveryId {
    /// Delivery ids are derived from (event, subscription) rather than minted:
    /// a fan-out that runs twice for the same event (after a crash, before its
    /// ack) computes the same ids, so the ledger's unique key and the
    /// receivers' `webhook-id` deduplication both see one delivery.
    pub fn derive(event: &EventId, subscription: SubscriptionId) -> Self {
        let mut name = Vec::with_capacity(event.as_str().len() + 17);
        name.extend_from_slice(subscription.0.as_bytes());
        name.push(b'/');
        name.extend_from_slice(event.as_str().as_bytes());
        Self(Uuid::new_v5(&DELIVERY_NAMESPACE, &name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_validated() {
        assert!(WorkspaceId::parse("acme-eu_1.x:y").is_ok());
        assert_eq!(
            WorkspaceId::parse(""),
            Err(IdError::Empty {
                what: "workspace id"
            })
        );
        assert!(matches!(
            WorkspaceId::parse("a b"),
            Err(IdError::BadCharacter { found: ' ', .. })
        ));
        assert!(matches!(
            EventId::parse("x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(EventId::generate().as_str().starts_with("evt_"));
    }

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        let e1 = EventId::parse("evt_1").unwrap();
        let e2 = EventId::parse("evt_2").unwrap();
        let s1 = SubscriptionId::generate();
        let s2 = SubscriptionId::generate();
        assert_eq!(DeliveryId::derive(&e1, s1), DeliveryId::derive(&e1, s1));
        assert_ne!(DeliveryId::derive(&e1, s1), DeliveryId::derive(&e2, s1));
        assert_ne!(DeliveryId::derive(&e1, s1), DeliveryId::derive(&e1, s2));
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id: WorkspaceId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<WorkspaceId>("\"no spaces\"").is_err());
    }
}
