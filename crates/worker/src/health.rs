//! What `/healthz` and `/readyz` report about the pipeline: whether each
//! stage's consume loop is attached and still turning.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A consume loop that has not turned for this long is considered stuck. It
/// turns at least every [`HEARTBEAT`] even when idle.
pub const STALL_AFTER: Duration = Duration::from_secs(60);
pub const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct StageHealth {
    consuming: AtomicBool,
    last_beat_ms: AtomicI64,
}

impl StageHealth {
    pub fn attached(&self) {
        self.consuming.store(true, Ordering::Relaxed);
        self.beat();
    }

    pub fn detached(&self) {
        self.consuming.store(false, Ordering::Relaxed);
    }

    pub fn beat(&self) {
        self.last_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    fn is_turning(&self) -> bool {
        now_ms() - self.last_beat_ms.load(Ordering::Relaxed) < STALL_AFTER.as_millis() as i64
    }
}

/// Shared between the worker (which updates it, across reconnects) and the
/// HTTP endpoints (which read it).
#[derive(Debug, Default)]
pub struct Health {
    pub fanout: StageHealth,
    pub delivery: StageHealth,
    /// False while the worker is (re)connecting to the broker.
    connected: AtomicBool,
}

impl Health {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Both consume loops are attached and have turned recently.
    pub fn consumers_attached(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.fanout.is_consuming()
            && self.delivery.is_consuming()
    }

    /// Alive: no consume loop is stuck. A worker that lost its broker and is
    /// reconnecting is alive (restarting it would not help) but not ready.
    pub fn is_alive(&self) -> bool {
        [&self.fanout, &self.delivery]
            .iter()
            .all(|s| !s.is_consuming() || s.is_turning())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
