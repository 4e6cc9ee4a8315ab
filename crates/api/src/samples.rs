//! Realistic sample payloads for test sends: what a receiver would get for
//! each event type, so a test exercises the receiver's real parsing.

use courier_model::EventType;
use serde_json::{Value, json};

pub fn sample_data(ty: EventType) -> Value {
    let order = json!({
        "order_id": "ord_test_1001",
        "channel_order_id": "302-1234567-7654321",
        "status": "PROCESSING",
        "currency": "EUR",
        "total": "59.90",
        "items": [{"sku": "SKU-TEST-1", "quantity": 2, "unit_price": "24.95"}],
        "shipping_address": {"name": "Test Customer", "city": "Berlin", "country": "DE"}
    });
    match ty {
        EventType::OrderCreated | EventType::OrderUpdated => json!({ "order": order }),
        EventType::OrderStatusChanged => json!({
            "order_id": "ord_test_1001",
            "previous_status": "PROCESSING",
            "status": "FULFILLED"
        }),
        EventType::OrderCanceled => json!({
            "order_id": "ord_test_1001",
            "reason": "customer_request",
            "canceled_by": "customer"
        }),
        EventType::OrderDeleted => json!({ "order_id": "ord_test_1001" }),
        EventType::ShipmentCreated => json!({
            "shipment_id": "shp_test_2001",
            "order_id": "ord_test_1001",
            "carrier": "DHL",
            "parcels": [{"parcel_id": "prc_test_3001", "tracking_number": "00340434161234567890"}]
        }),
        EventType::ShipmentCanceled => json!({
            "shipment_id": "shp_test_2001",
            "order_id": "ord_test_1001",
            "reason": "address_invalid"
        }),
        EventType::ParcelStatusChanged => json!({
            "parcel_id": "prc_test_3001",
            "tracking_number": "00340434161234567890",
            "carrier": "DHL",
            "status": "IN_TRANSIT"
        }),
        EventType::RefundRequested => json!({
            "refund_id": "ref_test_4001",
            "order_id": "ord_test_1001",
            "amount": "24.95",
            "currency": "EUR",
            "items": [{"sku": "SKU-TEST-1", "quantity": 1}]
        }),
        EventType::IntegrationUpdated => json!({
            "integration_id": "int_test_5001",
            "kind": "sales_channel",
            "name": "Amazon DE",
            "state": "connected"
        }),
        EventType::WebhookTest => json!({
            "message": "This is a test event sent by courier to check your endpoint."
        }),
    }
}
