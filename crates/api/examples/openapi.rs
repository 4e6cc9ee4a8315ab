//! Prints the management API's OpenAPI document, exactly as `/openapi.json`
//! serves it, for `make clients` (clients/generate.sh) to generate clients
//! from without a running courier: the API is served on 127.0.0.1 over a
//! throwaway SQLite file that nothing reads, and asked once.

use std::sync::Arc;
use std::time::Duration;

use courier_api::{ApiOptions, ApiState, NoChanges};
use courier_store::{Store, StoreOptions};
use courier_webhook::{HttpOptions, WebhookClient};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = std::env::temp_dir().join(format!("courier-openapi-{}.db", std::process::id()));
    let store = Store::connect(
        &format!("sqlite://{}", db.display()),
        &StoreOptions::default(),
    )
    .await
    .expect("open a scratch SQLite file");
    let client = WebhookClient::new(&HttpOptions {
        timeout: Duration::from_secs(1),
        allow_private_networks: false,
        max_in_flight: 1,
    })
    .expect("webhook client");
    let state = ApiState::new(
        store.clone(),
        None,
        client,
        ApiOptions::default(),
        Arc::new(NoChanges),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move { axum::serve(listener, courier_api::router(state)).await });
    let document = reqwest::get(format!("http://{addr}/openapi.json"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /openapi.json")
        .text()
        .await
        .expect("the document");
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).ok();
    }
    println!("{document}");
}
