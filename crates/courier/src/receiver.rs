//! `courier receive`: a small webhook receiver for demos and debugging. It
//! prints every request it gets and whether its Standard Webhooks signature
//! verifies with the given secret.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use courier_model::WebhookSecret;
use tokio_util::sync::CancellationToken;

/// Serves until `shutdown`; answers 204 to everything.
pub async fn run(
    listen: SocketAddr,
    secret: Option<WebhookSecret>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("receiving webhooks on http://{}/", listener.local_addr()?);
    let app = Router::new().fallback(receive).with_state(Arc::new(secret));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn receive(
    State(secret): State<Arc<Option<WebhookSecret>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let verified = match secret.as_ref() {
        Some(secret) => {
            let expected = timestamp
                .parse()
                .map(|ts| secret.sign(id, ts, &body))
                .unwrap_or_default();
            if header("webhook-signature")
                .split(' ')
                .any(|s| !expected.is_empty() && s == expected)
            {
                "signature ok"
            } else {
                "SIGNATURE MISMATCH"
            }
        }
        None => "signature not checked",
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut data = json["data"].to_string();
    if data.len() > 100 {
        let mut end = 100;
        while !data.is_char_boundary(end) {
            end -= 1;
        }
        data.truncate(end);
        data.push_str("...");
    }
    println!(
        "{} {:<22} {id} {verified} {data}",
        chrono::Utc::now().format("%H:%M:%S%.3f"),
        json["type"].as_str().unwrap_or("?"),
    );
    StatusCode::NO_CONTENT
}
