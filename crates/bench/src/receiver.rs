//! The receivers courier delivers to: axum servers on 127.0.0.1 that answer
//! as told (at once, late, or 500) and record, for every request, which
//! receiver got it, the event's `data.seq`, the publish time the bench
//! stamped into `data.t_us`, and the arrival time, all on one clock.
//!
//! Several receivers share one [`Recorder`], so a scenario reads one log.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How one receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200 at once: the healthy endpoint whose deliveries are counted.
    Ok,
    /// 200 after this long: a slow neighbour.
    Late(Duration),
    /// Always this status: a broken neighbour.
    Status(u16),
}

/// One request as the receiver saw it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Index of the receiver in the order they were started.
    pub receiver: usize,
    /// When the bench published the event, µs since [`Recorder::base`].
    pub sent_us: u64,
    /// When the request arrived, µs since [`Recorder::base`].
    pub at_us: u64,
    /// First arrival of this (receiver, seq): duplicates are kept in the log
    /// (at-least-once delivery may repeat) but not counted twice.
    pub first: bool,
    /// The receiver answers 200 at once.
    pub healthy: bool,
}

#[derive(Default)]
struct Log {
    arrivals: Vec<Arrival>,
    seen: HashSet<(usize, u64)>,
}

/// The shared log and clock of a scenario's receivers.
pub struct Recorder {
    /// The zero of every timestamp, in the bench process: publish times
    /// and arrival times are compared on this one monotonic clock.
    base: Instant,
    log: Mutex<Log>,
    /// Distinct (receiver, seq) pairs seen by healthy receivers: what a
    /// scenario waits for, read without taking the lock.
    healthy_distinct: AtomicU64,
    /// Bodies that were not courier's webhook shape (should stay 0).
    unreadable: AtomicU64,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            log: Mutex::new(Log::default()),
            healthy_distinct: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        })
    }

    /// µs since the recorder was made.
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    pub fn healthy_distinct(&self) -> u64 {
        self.healthy_distinct.load(Ordering::Relaxed)
    }

    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.log
            .lock()
            .expect("receiver log poisoned")
            .arrivals
            .clone()
    }

    fn record(&self, receiver: usize, healthy: bool, body: &[u8]) {
        let at_us = self.now_us();
        // Courier posts {"data": {...}, ...}; the bare bound posts the event
        // envelope, which has `data` too.
        #[derive(Deserialize)]
        struct Posted {
            data: Data,
        }
        #[derive(Deserialize)]
        struct Data {
            seq: u64,
            t_us: u64,
        }
        let Ok(posted) = serde_json::from_slice::<Posted>(body) else {
            self.unreadable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut log = self.log.lock().expect("receiver log poisoned");
        let first = log.seen.insert((receiver, posted.data.seq));
        log.arrivals.push(Arrival {
            receiver,
            sent_us: posted.data.t_us,
            at_us,
            first,
            healthy,
        });
        if first && healthy {
            self.healthy_distinct.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Endpoint {
    index: usize,
    behavior: Behavior,
    recorder: Arc<Recorder>,
}

/// Running receivers; they stop when this is dropped.
pub struct Receivers {
    urls: Vec<String>,
    stop: CancellationToken,
}

impl Receivers {
    /// Starts one receiver per behaviour, each on its own port.
    pub async fn start(recorder: &Arc<Recorder>, behaviors: &[Behavior]) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut urls = Vec::with_capacity(behaviors.len());
        for (index, &behavior) in behaviors.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("could not bind a receiver on 127.0.0.1")?;
            let addr: SocketAddr = listener.local_addr()?;
            let endpoint = Arc::new(Endpoint {
                index,
                behavior,
                recorder: Arc::clone(recorder),
            });
            let app = Router::new().fallback(handle).with_state(endpoint);
            let stopped = stop.clone();
            tokio::spawn(async move {
                // Not graceful: a late answer still pending when the scenario
                // ends is simply dropped.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped.cancelled() => {}
                }
            });
            urls.push(format!("http://{addr}/hook/{index}"));
        }
        Ok(Self { urls, stop })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(State(endpoint): State<Arc<Endpoint>>, body: Bytes) -> StatusCode {
    let healthy = endpoint.behavior == Behavior::Ok;
    endpoint.recorder.record(endpoint.index, healthy, &body);
    match endpoint.behavior {
        Behavior::Ok => StatusCode::OK,
        Behavior::Late(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
        Behavior::Status(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// First and last first-arrival at healthy receivers, and how many.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub count: u64,
    pub first_us: u64,
    pub last_us: u64,
}

impl Window {
    pub fn of(arrivals: &[Arrival]) -> Self {
        let mut window = Window {
            count: 0,
            first_us: u64::MAX,
            last_us: 0,
        };
        for a in arrivals.iter().filter(|a| a.first && a.healthy) {
            window.count += 1;
            window.first_us = window.first_us.min(a.at_us);
            window.last_us = window.last_us.max(a.at_us);
        }
        if window.count == 0 {
            window.first_us = 0;
        }
        window
    }

    /// Deliveries per second from the first arrival to the last.
    pub fn rate(&self) -> Option<f64> {
        let span = self.last_us.saturating_sub(self.first_us) as f64 / 1e6;
        (self.count >= 2 && span > 0.0).then(|| (self.count - 1) as f64 / span)
    }
}
