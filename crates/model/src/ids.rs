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
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        /// As its text, borrowed: every event a worker sends serializes
        /// its ids, and `into = "String"` would clone each one first.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

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

impl EventId {
    /// The time an event id carries, in milliseconds since the Unix epoch,
    /// when its last part (after any `_`, `:` or `.`) is a UUIDv7 (as the
    /// producer mints, `evt_` and 32 hex digits) or a ULID: both start with
    /// their 48-bit creation time. `None` for any other id.
    pub fn timestamp_millis(&self) -> Option<u64> {
        let tail = self.0.rsplit(['_', ':', '.']).next().unwrap_or(&self.0);
        match tail.len() {
            32 | 36 => {
                let uuid = Uuid::try_parse(tail).ok()?;
                (uuid.get_version_num() == 7).then(|| (uuid.as_u128() >> 80) as u64)
            }
            26 => ulid_millis(tail),
            _ => None,
        }
    }
}

/// The time of a ULID: its first ten characters, Crockford base 32 (case
/// insensitive, without I, L, O or U), the first at most 7 so that the
/// whole fits 128 bits.
fn ulid_millis(ulid: &str) -> Option<u64> {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if ulid.as_bytes()[0] > b'7' {
        return None;
    }
    let mut millis = 0u64;
    for (i, c) in ulid.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())? as u64;
        if i < 10 {
            millis = millis << 5 | digit;
        }
    }
    Some(millis)
}

impl DeliveryId {
    /// Delivery ids are derived from (event, subscription) rather than minted:
    /// a fan-out that runs twice for the same event (after a crash, before its
    /// ack) computes the same ids, so the ledger's unique key and the
    /// receivers' `webhook-id` deduplication both see one delivery.
    ///
    /// When the event id carries its time ([`EventId::timestamp_millis`]),
    /// the delivery id starts with it too (a UUIDv8: 48 bits of time, then
    /// 74 of the same hash), so that deliveries made together sit together
    /// in the ledger's indexes on their id: a new delivery then writes to
    /// the last pages of those indexes, not to a random page each. Other
    /// event ids give the name-based UUIDv5 they always have.
    pub fn derive(event: &EventId, subscription: SubscriptionId) -> Self {
        let mut name = Vec::with_capacity(event.as_str().len() + 17);
        name.extend_from_slice(subscription.0.as_bytes());
        name.push(b'/');
        name.extend_from_slice(event.as_str().as_bytes());
        let hashed = Uuid::new_v5(&DELIVERY_NAMESPACE, &name);
        match event.timestamp_millis() {
            Some(millis) => {
                let mut bytes = hashed.into_bytes();
                bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
                Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
            }
            None => Self(hashed),
        }
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
    fn event_ids_that_carry_their_time_give_it() {
        let at = |id: &str| EventId::parse(id).unwrap().timestamp_millis();
        // A UUIDv7 with its unix_ts_ms field set to 0x0193_8a2b_3c4d, in
        // the producer's form, hyphenated, and behind other separators.
        assert_eq!(
            at("evt_01938a2b3c4d7abc8def0123456789ab"),
            Some(0x0193_8a2b_3c4d)
        );
        assert_eq!(
            at("01938a2b-3c4d-7abc-8def-0123456789ab"),
            Some(0x0193_8a2b_3c4d)
        );
        assert_eq!(
            at("shop:orders.01938a2b3c4d7abc8def0123456789ab"),
            Some(0x0193_8a2b_3c4d)
        );
        // A ULID's first ten characters, either case: 01ARZ3NDEK is
        // 1,469,922,850,259 ms, 2016-07-30 23:54:10.259 UTC.
        assert_eq!(at("01ARZ3NDEKTSV4RRFFQ69G5FAV"), Some(1_469_922_850_259));
        assert_eq!(
            at("ord_01arz3ndektsv4rrffq69g5fav"),
            Some(1_469_922_850_259)
        );
        // What carries no time: other UUID versions, a ULID too large or
        // with a letter Crockford's base 32 leaves out, anything else.
        assert_eq!(at("evt_01938a2b3c4d4abc8def0123456789ab"), None);
        assert_eq!(at("81ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
        assert_eq!(at("01ARZ3NDEKTSV4RRFFQ69G5FAU"), None);
        assert_eq!(at("order-1234:status-changed"), None);
        assert!(EventId::generate().timestamp_millis().is_some());
    }

    #[test]
    fn delivery_ids_start_with_their_events_time() {
        let s1 = SubscriptionId::generate();
        let s2 = SubscriptionId::generate();
        let earlier = EventId::parse("evt_01938a2b3c4d7abc8def0123456789ab").unwrap();
        let later = EventId::parse("evt_01938a2b3c4e7000800000000000000a").unwrap();
        let id = DeliveryId::derive(&earlier, s1);
        assert_eq!(id.0.get_version_num(), 8);
        assert_eq!(id.0.as_u128() >> 80, 0x0193_8a2b_3c4d);
        // Whatever their subscriptions, a later event's deliveries sort after.
        for (a, b) in [(s1, s1), (s1, s2), (s2, s1)] {
            assert!(DeliveryId::derive(&earlier, a) < DeliveryId::derive(&later, b));
        }
        assert_ne!(
            DeliveryId::derive(&earlier, s1),
            DeliveryId::derive(&earlier, s2)
        );
        // An id without a time keeps the name-based id it always had (the
        // value computed before delivery ids could carry a time).
        let plain = EventId::parse("order-1234:status-changed").unwrap();
        assert_eq!(DeliveryId::derive(&plain, s1).0.get_version_num(), 5);
        let fixed = SubscriptionId::parse("0192f7a1-0000-7000-8000-000000000001").unwrap();
        assert_eq!(
            DeliveryId::derive(&EventId::parse("evt_1").unwrap(), fixed).to_string(),
            "f5d31c62-cdb7-58ac-a3e8-6f000cc48938"
        );
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id: WorkspaceId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<WorkspaceId>("\"no spaces\"").is_err());
    }
}
