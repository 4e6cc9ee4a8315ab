//! What a scenario measured, the table printed at the end, and the JSON
//! report written next to it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "ok")]
    Ok,
    /// Did not drain before the deadline; the figures cover what arrived.
    #[serde(rename = "timed out")]
    TimedOut,
    #[serde(rename = "failed")]
    Failed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::TimedOut => "timed out",
            Status::Failed => "FAILED",
        }
    }
}

/// One scenario on one database (or on none, for the bare bound).
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// `sqlite`, `postgres`, or `none` for the bare bound.
    pub db: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// courier processes (`serve`) that ran the worker.
    pub workers: u32,
    pub events_published: u64,
    pub events_failed: u64,
    /// Deliveries the healthy receivers should get (distinct event x receiver).
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    /// Events confirmed by the broker per second, while publishing.
    pub events_per_s: Option<f64>,
    /// Deliveries per second at the healthy receivers, first to last arrival.
    pub deliveries_per_s: Option<f64>,
    /// From the last publish confirm to the last arrival.
    pub drain_s: Option<f64>,
    /// From the first publish to the last arrival.
    pub total_s: Option<f64>,
    /// `events_per_s` as a percentage of the bare bound's.
    pub events_pct_of_bare: Option<f64>,
    /// `deliveries_per_s` as a percentage of the bare bound's.
    pub deliveries_pct_of_bare: Option<f64>,
    /// Peak resident memory (VmHWM) of the largest courier process, MB.
    pub peak_rss_mb: Option<f64>,
    /// courier's CPU (user + system, every process) while publishing and
    /// draining, per 1,000 deliveries received.
    pub cpu_s_per_1000: Option<f64>,
    /// 1-minute load average of the machine at the start and the end.
    pub load_start: f64,
    pub load_end: f64,
    /// Scenario-specific figures (latency percentiles, setup times,
    /// comparisons), by name.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The same, said in a few words for the table.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new(scenario: &str, db: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            db: db.to_owned(),
            status: Status::Ok,
            error: None,
            workers: 0,
            events_published: 0,
            events_failed: 0,
            deliveries_expected: 0,
            deliveries_received: 0,
            events_per_s: None,
            deliveries_per_s: None,
            drain_s: None,
            total_s: None,
            events_pct_of_bare: None,
            deliveries_pct_of_bare: None,
            peak_rss_mb: None,
            cpu_s_per_1000: None,
            load_start: crate::env::load_average(),
            load_end: f64::NAN,
            extra: serde_json::Map::new(),
            notes: Vec::new(),
        }
    }

    pub fn failed(mut self, error: &anyhow::Error) -> Self {
        self.status = Status::Failed;
        self.error = Some(format!("{error:#}"));
        self
    }

    pub fn extra(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.extra.insert(key.to_owned(), value.into());
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// The table printed at the end of a run.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:<8} {:<9} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>9}  {}\n",
        "scenario",
        "db",
        "status",
        "events/s",
        "deliv/s",
        "%bare",
        "drain s",
        "RSS MB",
        "CPU/1k",
        "load",
        "notes"
    ));
    for o in outcomes {
        let received = if o.deliveries_expected > 0 && o.deliveries_received < o.deliveries_expected
        {
            format!(
                "{}/{} delivered; ",
                o.deliveries_received, o.deliveries_expected
            )
        } else {
            String::new()
        };
        let error = o
            .error
            .as_deref()
            .map(|e| format!("{e}; "))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<18} {:<8} {:<9} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>4.1}-{:<4.1}  {}{}{}\n",
            o.scenario,
            o.db,
            o.status.label(),
            num(o.events_per_s, 0),
            num(o.deliveries_per_s, 0),
            num(o.deliveries_pct_of_bare, 0),
            num(o.drain_s, 2),
            num(o.peak_rss_mb, 0),
            num(o.cpu_s_per_1000, 3),
            o.load_start,
            o.load_end,
            error,
            received,
            o.notes.join("; ")
        ));
    }
    out
}
