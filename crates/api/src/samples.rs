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
        // Operational events: shaped as `courier_model::notice` builds them.
        EventType::WebhookFailing => json!({
            "webhook_id": "0193a6c2-7f1e-7c3a-9d2b-5f4e3c2b1a00",
            "webhook_name": "ERP orders",
            "url": "https://erp.example.com/hooks/orders",
            "failing_since": "2026-12-02T08:00:00.000Z",
            "consecutive_failures": 5,
            "last_failure": {
                "at": "2026-12-02T08:04:10.000Z",
                "response_status": 503,
                "error": null
            }
        }),
        EventType::WebhookDisabled => json!({
            "webhook_id": "0193a6c2-7f1e-7c3a-9d2b-5f4e3c2b1a00",
            "webhook_name": "ERP orders",
            "url": "https://erp.example.com/hooks/orders",
            "reason": "failing",
            "disabled_at": "2026-12-07T08:00:00.000Z",
            "failing_since": "2026-12-02T08:00:00.000Z",
            "paused_deliveries": 42
        }),
        EventType::WebhookRecovered => json!({
            "webhook_id": "0193a6c2-7f1e-7c3a-9d2b-5f4e3c2b1a00",
            "webhook_name": "ERP orders",
            "url": "https://erp.example.com/hooks/orders",
            "failing_since": "2026-12-02T08:00:00.000Z",
            "recovered_at": "2026-12-02T09:30:00.000Z"
        }),
    }
}
