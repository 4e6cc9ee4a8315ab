//! The closed set of event types courier delivers, with the names used on the
//! wire (`order.created`), in GraphQL (`ORDER_CREATED`) and their catalogue
//! descriptions.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown event type {0:?}; known types are: {known}", known = EventType::known_names())]
pub struct UnknownEventType(pub String);

macro_rules! event_types {
    ($($variant:ident => $name:literal, $graphql:literal, $description:literal;)*) => {
        /// An event type. Parsing accepts the dotted name, the GraphQL name and
        /// the aliases existing integrations send (see [`EventType::parse`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// The dotted name used on the wire, as routing key and in REST.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The SCREAMING_SNAKE enum value used in GraphQL.
            pub fn graphql_name(self) -> &'static str {
                match self {
                    $(EventType::$variant => $graphql,)*
                }
            }

            pub fn description(self) -> &'static str {
                match self {
                    $(EventType::$variant => $description,)*
                }
            }

            fn from_canonical(value: &str) -> Option<Self> {
                match value {
                    $($name | $graphql => Some(EventType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    OrderCreated => "order.created", "ORDER_CREATED",
        "An order was placed in a sales channel and imported.";
    OrderUpdated => "order.updated", "ORDER_UPDATED",
        "Any field of an order changed (addresses, items, totals, tags).";
    OrderStatusChanged => "order.status_changed", "ORDER_STATUS_CHANGED",
        "An order moved to another fulfilment status (for example FULFILLED or FAILED_PERMANENTLY).";
    OrderCanceled => "order.canceled", "ORDER_CANCELED",
        "An order was canceled by the customer, the merchant or the channel.";
    OrderDeleted => "order.deleted", "ORDER_DELETED",
        "An order was deleted and will not be fulfilled.";
    ShipmentCreated => "shipment.created", "SHIPMENT_CREATED",
        "A shipment with one or more parcels was created for an order.";
    ShipmentCanceled => "shipment.canceled", "SHIPMENT_CANCELED",
        "A shipment was canceled before it left the warehouse.";
    ParcelStatusChanged => "parcel.status_changed", "PARCEL_STATUS_CHANGED",
        "The carrier reported a new tracking status for a parcel.";
    RefundRequested => "refund.requested", "REFUND_REQUESTED",
        "A refund was requested for an order or some of its items.";
    IntegrationUpdated => "integration.updated", "INTEGRATION_UPDATED",
        "A sales channel or carrier integration was connected, changed or disconnected.";
    WebhookTest => "webhook.test", "WEBHOOK_TEST",
        "A test event sent on demand to check that an endpoint receives and verifies webhooks.";
    WebhookFailing => "webhook.failing", "WEBHOOK_FAILING",
        "Operational: one of the workspace's webhooks failed several attempts in a row (sent once per failing episode).";
    WebhookDisabled => "webhook.disabled", "WEBHOOK_DISABLED",
        "Operational: courier disabled one of the workspace's webhooks, because its endpoint kept failing or answered 410 Gone; its deliveries are paused.";
    WebhookRecovered => "webhook.recovered", "WEBHOOK_RECOVERED",
        "Operational: a webhook reported failing delivered successfully again.";
}

impl EventType {
    /// Parses a dotted name (`order.created`), a GraphQL name
    /// (`ORDER_CREATED`) or an alias kept for existing integrations:
    /// `order.status` means `order.status_changed`.
    pub fn parse(value: &str) -> Result<Self, UnknownEventType> {
        if let Some(ty) = Self::from_canonical(value) {
            return Ok(ty);
        }
        match value {
            "order.status" | "ORDER_STATUS" => Ok(EventType::OrderStatusChanged),
            _ => Err(UnknownEventType(value.to_owned())),
        }
    }

    /// The types courier publishes itself about the workspace's webhooks
    /// (subscribe an operational webhook to them).
    pub fn is_operational(self) -> bool {
        matches!(
            self,
            EventType::WebhookFailing | EventType::WebhookDisabled | EventType::WebhookRecovered
        )
    }

    fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_by_both_names() {
        for &ty in EventType::ALL {
            assert_eq!(EventType::parse(ty.as_str()), Ok(ty));
            assert_eq!(EventType::parse(ty.graphql_name()), Ok(ty));
            assert_eq!(
                ty.graphql_name(),
                ty.as_str().replace('.', "_").to_uppercase()
            );
            assert!(!ty.description().is_empty());
        }
    }

    #[test]
    fn aliases_and_unknown_types() {
        assert_eq!(
            EventType::parse("order.status"),
            Ok(EventType::OrderStatusChanged)
        );
        let err = EventType::parse("order.exploded").unwrap_err();
        assert!(err.to_string().contains("order.exploded"));
        assert!(err.to_string().contains("order.created"));
    }

    #[test]
    fn serde_uses_dotted_names() {
        let json = serde_json::to_string(&EventType::ShipmentCreated).unwrap();
        assert_eq!(json, "\"shipment.created\"");
        let back: EventType = serde_json::from_str("\"order.status\"").unwrap();
        assert_eq!(back, EventType::OrderStatusChanged);
    }
}
