//! The soak's endpoints: real HTTP servers on 127.0.0.1 whose answer the
//! fault schedule switches, which keep only what the accounting needs (the
//! delivery ids answered 2xx, and how many 2xx answers), not the bodies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// How an endpoint answers for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum Mode {
    Ok = 0,
    /// 500 to everything.
    Failing = 1,
    /// 200 after 1.5 s (the workers wait 5 s).
    Slow = 2,
    /// 429 with `Retry-After: 2`.
    TooMany = 3,
    /// 410 Gone: courier disables the webhook.
    Gone = 4,
}

impl Mode {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Failing,
            2 => Self::Slow,
            3 => Self::TooMany,
            4 => Self::Gone,
            _ => Self::Ok,
        }
    }
}

struct Endpoint {
    mode: AtomicU8,
    ok_ids: Mutex<HashSet<String>>,
    ok_answers: AtomicU64,
}

/// What the endpoints answered 2xx.
pub struct AnsweredOk {
    pub ids: HashSet<String>,
    pub answers: u64,
}

#[derive(Clone)]
pub struct Receivers {
    endpoints: Vec<Arc<Endpoint>>,
    urls: Vec<String>,
}

impl Receivers {
    pub async fn start(count: usize) -> anyhow::Result<Self> {
        let mut endpoints = Vec::with_capacity(count);
        let mut urls = Vec::with_capacity(count);
        for _ in 0..count {
            let endpoint = Arc::new(Endpoint {
                mode: AtomicU8::new(Mode::Ok as u8),
                ok_ids: Mutex::new(HashSet::new()),
                ok_answers: AtomicU64::new(0),
            });
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}/hook", listener.local_addr()?));
            let app = Router::new()
                .fallback(answer)
                .with_state(Arc::clone(&endpoint));
            tokio::spawn(async move { axum::serve(listener, app).await });
            endpoints.push(endpoint);
        }
        Ok(Self { endpoints, urls })
    }

    pub fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    pub fn set(&self, endpoint: usize, mode: Mode) {
        self.endpoints[endpoint]
            .mode
            .store(mode as u8, Ordering::SeqCst);
    }

    pub fn answered_ok(&self) -> AnsweredOk {
        let mut ids = HashSet::new();
        let mut answers = 0;
        for endpoint in &self.endpoints {
            ids.extend(endpoint.ok_ids.lock().unwrap().iter().cloned());
            answers += endpoint.ok_answers.load(Ordering::SeqCst);
        }
        AnsweredOk { ids, answers }
    }
}

async fn answer(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let mode = Mode::from_u8(endpoint.mode.load(Ordering::SeqCst));
    match mode {
        Mode::Failing => return (StatusCode::INTERNAL_SERVER_ERROR, "failing").into_response(),
        Mode::TooMany => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "2")],
                "wait",
            )
                .into_response();
        }
        Mode::Gone => return (StatusCode::GONE, "gone").into_response(),
        Mode::Slow => tokio::time::sleep(Duration::from_millis(1500)).await,
        Mode::Ok => {}
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Counted before the answer leaves: a 2xx that the worker never reads
    // (it was killed) still counts as received here.
    endpoint.ok_ids.lock().unwrap().insert(id);
    endpoint.ok_answers.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, "ok").into_response()
}
