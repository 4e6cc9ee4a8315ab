//! A real HTTP receiver on 127.0.0.1 that records every request and answers
//! as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a receiver answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a small body.
    Ok,
    /// Always this status.
    Status(u16),
    /// The first `failures` requests of each webhook-id get `status`, then 200.
    FailFirst { failures: u32, status: u16 },
    /// Answer 200 only after this long (longer than the worker's timeout).
    Hang(Duration),
    /// Answer 200 after this long: a slow but healthy endpoint, to keep
    /// work in flight.
    Slow(Duration),
    /// An outage: `status` to everything until [`Receiver::recover`], then 200.
    Down { status: u16 },
    /// Hangs every request until [`Receiver::recover`] (a minute at most),
    /// then answers 200.
    Stall,
    /// The first `times` requests of each webhook-id get `status` with a
    /// `Retry-After` header, then 200.
    AskToWait {
        status: u16,
        wait: RetryAfter,
        times: u32,
    },
}

/// What a receiver's `Retry-After` says.
#[derive(Clone, Debug)]
pub enum RetryAfter {
    /// This text, as it is (seconds, or anything else).
    Text(&'static str),
    /// An HTTP date this long after the response.
    DateIn(Duration),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub webhook_id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("courier posts JSON")
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    per_id: HashMap<String, u32>,
}

struct Shared {
    behavior: Behavior,
    log: Mutex<Log>,
    recovered: std::sync::atomic::AtomicBool,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behavior,
            log: Mutex::new(Log::default()),
            recovered: std::sync::atomic::AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .ok();
        });
        Self { addr, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.log.lock().unwrap().requests.len()
    }

    /// Ends a [`Behavior::Down`] outage or a [`Behavior::Stall`]: from now
    /// on every request gets 200.
    pub fn recover(&self) {
        self.shared
            .recovered
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Distinct webhook-ids seen.
    pub fn distinct(&self) -> usize {
        self.shared.log.lock().unwrap().per_id.len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let webhook_id = header("webhook-id");
    let seen = {
        let mut log = shared.log.lock().unwrap();
        let seen = log.per_id.entry(webhook_id.clone()).or_default();
        *seen += 1;
        let seen = *seen;
        log.requests.push(Received {
            webhook_id,
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: body.to_vec(),
            at: Instant::now(),
        });
        seen
    };
    if let Behavior::AskToWait {
        status,
        wait,
        times,
    } = &shared.behavior
        && seen <= *times
    {
        let value = match wait {
            RetryAfter::Text(text) => (*text).to_owned(),
            RetryAfter::DateIn(after) => (chrono::Utc::now()
                + chrono::Duration::from_std(*after).unwrap())
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
        };
        return (
            StatusCode::from_u16(*status).unwrap(),
            [(axum::http::header::RETRY_AFTER, value)],
            "wait",
        )
            .into_response();
    }
    answer(&shared, seen).await.into_response()
}

async fn answer(shared: &Shared, seen: u32) -> (StatusCode, &'static str) {
    match shared.behavior {
        Behavior::Ok | Behavior::AskToWait { .. } => (StatusCode::OK, "ok"),
        Behavior::Status(status) => (StatusCode::from_u16(status).unwrap(), "receiver says no"),
        Behavior::FailFirst { failures, status } if seen <= failures => {
            (StatusCode::from_u16(status).unwrap(), "not yet")
        }
        Behavior::FailFirst { .. } => (StatusCode::OK, "ok"),
        Behavior::Down { status } => {
            if shared.recovered.load(std::sync::atomic::Ordering::SeqCst) {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::from_u16(status).unwrap(), "down")
            }
        }
        Behavior::Stall => {
            for _ in 0..1200 {
                if shared.recovered.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (StatusCode::OK, "ok")
        }
        Behavior::Hang(delay) | Behavior::Slow(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "late")
        }
    }
}
