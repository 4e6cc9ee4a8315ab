//! `make screenshots`: the console's pictures in docs/, taken rather than
//! drawn. Starts courier in this process on a scratch SQLite ledger and a
//! RabbitMQ prefix of its own (the e2e tests' environment), two receivers
//! (one healthy, one failing), three webhooks and a few dozen events sent
//! through HTTP ingest; then signs in with headless Chromium and saves the
//! overview, the webhook list, the webhook form, a webhook's events and one
//! delivery as PNGs in `docs/screenshots/` (or the directory given).

use std::path::PathBuf;
use std::time::Duration;

use courier_tests::browser::Browser;
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use serde_json::{Value, json};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots"));
    std::fs::create_dir_all(&out).expect("create the screenshot directory");

    let env = TestEnv::new(Db::Sqlite).await;
    let courier = env.start_worker().await;
    let base = format!("http://{}", courier.http_addr);
    let healthy = Receiver::start(Behavior::Ok).await;
    let failing = Receiver::start(Behavior::Status(500)).await;

    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("screenshots"))
        .await
        .expect("an API key");
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("{base}/v1/workspaces/{ws}"),
        key: key.clone(),
    };
    let erp = api
        .post(
            "/webhooks",
            json!({"name": "ERP orders", "url": format!("{}/erp", healthy.url()),
                   "events": ["order.created", "order.updated", "order.status_changed", "order.canceled"]}),
        )
        .await;
    api.post(
        "/webhooks",
        json!({"name": "Warehouse shipments", "url": format!("{}/wms", healthy.url()),
               "events": ["shipment.created", "parcel.status_changed"], "channels": ["amazon", "ebay"]}),
    )
    .await;
    let legacy = api
        .post(
            "/webhooks",
            json!({"name": "Legacy shop plugin", "url": format!("{}/plugin", failing.url()),
                   "events": ["order.created", "refund.requested"]}),
        )
        .await;

    let channels = ["amazon", "ebay", "shopify"];
    for i in 0..24 {
        let channel = channels[i % channels.len()];
        let (ty, data) = match i % 4 {
            0 | 1 => (
                "order.created",
                json!({"order_id": format!("ord_{}", 1000 + i), "channel_order_id": format!("302-{:07}", 4_310_000 + i * 37),
                       "status": "PROCESSING", "currency": "EUR", "total": format!("{}.90", 20 + i * 3),
                       "items": [{"sku": "SKU-CHAIR-OAK", "quantity": 1 + i % 3, "unit_price": "19.95"}]}),
            ),
            2 => (
                "order.status_changed",
                json!({"order_id": format!("ord_{}", 1000 + i - 2), "previous_status": "PROCESSING", "status": "FULFILLED"}),
            ),
            _ => (
                "shipment.created",
                json!({"shipment_id": format!("shp_{}", 500 + i), "order_id": format!("ord_{}", 1000 + i - 3),
                       "carrier": "DHL", "tracking_number": format!("00340434{:010}", 161_000 + i)}),
            ),
        };
        api.post(
            "/events",
            json!({"type": ty, "channel": channel, "data": data}),
        )
        .await;
    }
    // 12 order.created (both ERP and the plugin), 6 status changes, and the
    // shipments on amazon and ebay: wait until the healthy receiver has the
    // ERP's 18 and the plugin has failed a few times.
    wait_for("deliveries to arrive", WAIT, || async {
        healthy.count() >= 18 && failing.count() >= 12
    })
    .await;

    let browser = Browser::start().await;
    browser.set_window_size(WIDTH, HEIGHT).await;
    browser.goto(&format!("{base}/console/sign-in")).await;
    browser.find("#key").await.send_keys(&key).await;
    browser.find("#sign-in").await.click().await;
    browser.wait_for("#total-24h", WAIT).await;

    let console = format!("{base}/console/w/{ws}");
    let erp_id = erp["id"].as_str().expect("webhook id");
    let legacy_id = legacy["id"].as_str().expect("webhook id");
    let delivery = legacy_delivery(&api, legacy_id).await;
    let pages = [
        ("overview", console.clone()),
        ("webhooks", format!("{console}/webhooks")),
        ("webhook-form", format!("{console}/webhooks/{erp_id}")),
        ("events", format!("{console}/webhooks/{legacy_id}/events")),
        ("delivery", format!("{console}/deliveries/{delivery}")),
    ];
    for (name, url) in pages {
        browser.goto(&url).await;
        browser.wait_for("main h1", WAIT).await;
        let png = browser.screenshot_png().await;
        let path = out.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("{}", path.display());
    }
    browser.assert_no_console_errors().await;
    drop(browser);
    courier.stop().await.expect("courier stops cleanly");
}

/// The management API with the workspace's key.
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body["data"].clone()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = response.json().await.expect("a JSON answer");
        body["data"].clone()
    }
}

/// A delivery to the failing plugin that has been attempted more than once.
async fn legacy_delivery(api: &Api, webhook: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let page = api
            .get(&format!("/webhooks/{webhook}/events?first=50"))
            .await;
        let retried = page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["attempts"].as_u64() >= Some(2)))
            .and_then(|item| item["deliveryId"].as_str());
        if let Some(id) = retried {
            return id.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery to the plugin was attempted twice within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
