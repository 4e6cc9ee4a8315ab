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
    /// The figures of `extra` said in a few words, then the remarks: what
    /// the table shows in its last column. Filled by [`finish`].
    pub notes: Vec<String>,
    /// Remarks that are not figures ("runs inside the bench process").
    #[serde(skip)]
    pub remarks: Vec<String>,
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
            remarks: Vec::new(),
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

    pub fn remark(&mut self, remark: impl Into<String>) {
        self.remarks.push(remark.into());
    }

    pub fn figure(&self, key: &str) -> Option<f64> {
        self.extra.get(key).and_then(|v| v.as_f64())
    }
}

/// Says each outcome's figures in its notes, followed by its remarks.
pub fn finish(outcomes: &mut [Outcome]) {
    for o in outcomes {
        let mut notes = describe(o);
        notes.extend(o.remarks.iter().cloned());
        o.notes = notes;
    }
}

/// The scenario-specific figures of an outcome in a few words. They are
/// read from `extra`, so a summary of several rounds says its medians.
fn describe(o: &Outcome) -> Vec<String> {
    let mut notes = Vec::new();
    let f = |key: &str| o.figure(key);
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    if let Some(rounds) = f("rounds") {
        let range = |lo: &str, hi: &str, unit: &str| match (f(lo), f(hi)) {
            (Some(lo), Some(hi)) => format!(" {lo:.0}-{hi:.0}{unit}"),
            _ => String::new(),
        };
        let mut note = format!("median of {rounds:.0} rounds: deliv/s");
        note.push_str(&range("deliveries_per_s_min", "deliveries_per_s_max", ""));
        if f("pct_of_bare_min").is_some() {
            note.push_str(", %bare");
            note.push_str(&range("pct_of_bare_min", "pct_of_bare_max", ""));
        }
        notes.push(note);
    }
    if let Some(requests) = f("ingest_requests_per_s") {
        notes.push(format!(
            "ingest {requests:.0} req/s of {} event(s), ms to 202 p50 {} p99 {} max {}",
            f("events_per_request").unwrap_or(1.0),
            ms(f("ingest_p50_ms")),
            ms(f("ingest_p99_ms")),
            ms(f("ingest_max_ms")),
        ));
    }
    for (key, name) in [
        ("cpu_x_of_throughput_1", "throughput-1"),
        ("cpu_x_of_fanout_10", "fanout-10"),
        ("cpu_x_of_latency", "latency"),
    ] {
        if let Some(x) = f(key) {
            notes.push(format!("courier+db CPU {x:.2}x {name}'s"));
        }
    }
    if o.scenario == "latency" || o.scenario == "ingest-latency" {
        notes.push(format!(
            "ms p50 {} p95 {} p99 {} max {} at {}/s",
            ms(f("latency_p50_ms")),
            ms(f("latency_p95_ms")),
            ms(f("latency_p99_ms")),
            ms(f("latency_max_ms")),
            o.events_per_s
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into()),
        ));
        if let (Some(slow), Some(seconds)) = (f("latency_over_50ms"), f("latency_slow_seconds"))
            && slow > 0.0
        {
            notes.push(format!(
                "{slow:.0} over 50 ms, in {seconds:.0} distinct seconds"
            ));
        }
    }
    if let (Some(late), Some(broken)) =
        (f("late_endpoint_requests"), f("failing_endpoint_requests"))
    {
        notes.push(format!(
            "5s endpoint got {late:.0}, 500 endpoint {broken:.0} requests"
        ));
    }
    if let (Some(subs), Some(setup), Some(ready)) =
        (f("subscriptions"), f("setup_s"), f("courier_ready_s"))
    {
        notes.push(format!(
            "{subs:.0} subs inserted in {setup:.1}s, courier ready in {ready:.1}s"
        ));
    }
    if let Some(p) = f("pct_of_throughput_1") {
        notes.push(format!("{p:.0}% of throughput-1"));
    }
    if let Some(p) = f("pct_of_fanout_10") {
        notes.push(format!("per healthy endpoint {p:.0}% of fanout-10"));
    }
    if let (Some(events), Some(one), Some(two)) = (
        f("backlog_events"),
        f("backlog_1_worker_per_s"),
        f("backlog_2_workers_per_s"),
    ) {
        notes.push(format!(
            "backlog of {events:.0} drained by 1 worker at {one:.0}/s, by 2 at {two:.0}/s ({}%)",
            f("backlog_pct_of_one_worker")
                .map(|p| format!("{p:.0}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    notes
}

/// One outcome per scenario and database out of several rounds: the median
/// of each figure (ratios are taken within a round first, so each is
/// against the bare bound measured next to it), the largest peak RSS, the
/// worst status, and the spread of deliveries/s and of %bare.
pub fn summarize(rounds: &[Vec<Outcome>]) -> Vec<Outcome> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for o in rounds.iter().flatten() {
        let key = (o.scenario.as_str(), o.db.as_str());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(scenario, db)| {
            let runs: Vec<&Outcome> = rounds
                .iter()
                .flatten()
                .filter(|o| o.scenario == scenario && o.db == db)
                .collect();
            summarize_runs(&runs)
        })
        .collect()
}

fn summarize_runs(runs: &[&Outcome]) -> Outcome {
    let first = runs[0];
    let mut m = Outcome::new(&first.scenario, &first.db);
    m.load_start = first.load_start;
    m.load_end = runs[runs.len() - 1].load_end;
    m.workers = first.workers;
    m.status = runs
        .iter()
        .map(|o| o.status)
        .max_by_key(|s| match s {
            Status::Ok => 0,
            Status::TimedOut => 1,
            Status::Failed => 2,
        })
        .unwrap_or(Status::Ok);
    m.error = runs.iter().find_map(|o| o.error.clone());
    m.events_published = runs.iter().map(|o| o.events_published).min().unwrap_or(0);
    m.events_failed = runs.iter().map(|o| o.events_failed).max().unwrap_or(0);
    m.deliveries_expected = runs
        .iter()
        .map(|o| o.deliveries_expected)
        .max()
        .unwrap_or(0);
    m.deliveries_received = runs
        .iter()
        .map(|o| o.deliveries_received)
        .min()
        .unwrap_or(0);
    let of = |get: fn(&Outcome) -> Option<f64>| median(runs.iter().filter_map(|o| get(o)));
    m.events_per_s = of(|o| o.events_per_s);
    m.deliveries_per_s = of(|o| o.deliveries_per_s);
    m.drain_s = of(|o| o.drain_s);
    m.total_s = of(|o| o.total_s);
    m.events_pct_of_bare = of(|o| o.events_pct_of_bare);
    m.deliveries_pct_of_bare = of(|o| o.deliveries_pct_of_bare);
    m.cpu_s_per_1000 = of(|o| o.cpu_s_per_1000);
    m.peak_rss_mb = runs
        .iter()
        .filter_map(|o| o.peak_rss_mb)
        .max_by(f64::total_cmp);

    for key in runs.iter().flat_map(|o| o.extra.keys()) {
        if m.extra.contains_key(key) {
            continue;
        }
        let values: Vec<&serde_json::Value> =
            runs.iter().filter_map(|o| o.extra.get(key)).collect();
        let value = if values.iter().all(|v| v.is_number()) {
            median(values.iter().filter_map(|v| v.as_f64())).map(serde_json::Value::from)
        } else {
            values.first().map(|&v| v.clone())
        };
        if let Some(value) = value {
            m.extra.insert(key.clone(), value);
        }
    }
    m.extra("rounds", runs.len());
    let spread = |m: &mut Outcome, name: &str, get: fn(&Outcome) -> Option<f64>| {
        let values: Vec<f64> = runs.iter().filter_map(|o| get(o)).collect();
        if let (Some(lo), Some(hi)) = (
            values.iter().copied().min_by(f64::total_cmp),
            values.iter().copied().max_by(f64::total_cmp),
        ) {
            m.extra(&format!("{name}_min"), lo);
            m.extra(&format!("{name}_max"), hi);
        }
    };
    spread(&mut m, "deliveries_per_s", |o| o.deliveries_per_s);
    spread(&mut m, "pct_of_bare", |o| o.deliveries_pct_of_bare);
    for remark in runs.iter().flat_map(|o| &o.remarks) {
        if !m.remarks.contains(remark) {
            m.remarks.push(remark.clone());
        }
    }
    m
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
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
        "{:<18} {:<8} {:<9} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>6} {:>9}  {}\n",
        "scenario",
        "db",
        "status",
        "events/s",
        "deliv/s",
        "%bare",
        "drain s",
        "RSS MB",
        "CPU/1k",
        "MQ/1k",
        "DB/1k",
        "bench",
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
            "{:<18} {:<8} {:<9} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>6} {:>6} {:>6} {:>4.1}-{:<4.1}  {}{}{}\n",
            o.scenario,
            o.db,
            o.status.label(),
            num(o.events_per_s, 0),
            num(o.deliveries_per_s, 0),
            num(o.deliveries_pct_of_bare, 0),
            num(o.drain_s, 2),
            num(o.peak_rss_mb, 0),
            num(o.cpu_s_per_1000, 3),
            num(o.figure("broker_cpu_s_per_1000"), 3),
            num(o.figure("database_cpu_s_per_1000"), 3),
            num(o.figure("bench_cpu_s_per_1000"), 3),
            o.load_start,
            o.load_end,
            error,
            received,
            o.notes.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(scenario: &str, deliveries: f64, pct: Option<f64>, rss: f64) -> Outcome {
        let mut o = Outcome::new(scenario, "postgres");
        o.deliveries_per_s = Some(deliveries);
        o.deliveries_pct_of_bare = pct;
        o.peak_rss_mb = Some(rss);
        o.extra("late_endpoint_requests", deliveries / 1000.0);
        o.extra("label", scenario);
        o.remark("same remark");
        o
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middle_values() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median([f64::NAN, 5.0].into_iter()), Some(5.0));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn a_summary_holds_medians_the_worst_case_and_the_spread() {
        let mut failed = outcome("throughput-1", 9_000.0, Some(50.0), 40.0);
        failed.status = Status::TimedOut;
        let rounds = vec![
            vec![outcome("throughput-1", 12_000.0, Some(60.0), 45.0)],
            vec![failed],
            vec![outcome("throughput-1", 13_000.0, Some(70.0), 41.0)],
        ];
        let summary = summarize(&rounds);
        assert_eq!(summary.len(), 1);
        let s = &summary[0];
        assert_eq!(s.deliveries_per_s, Some(12_000.0));
        assert_eq!(s.deliveries_pct_of_bare, Some(60.0));
        assert_eq!(s.peak_rss_mb, Some(45.0));
        assert_eq!(s.status, Status::TimedOut);
        assert_eq!(s.figure("late_endpoint_requests"), Some(12.0));
        assert_eq!(s.extra["label"], "throughput-1");
        assert_eq!(s.figure("deliveries_per_s_min"), Some(9_000.0));
        assert_eq!(s.figure("pct_of_bare_max"), Some(70.0));
        assert_eq!(s.remarks, vec!["same remark".to_owned()]);

        let mut summary = summary;
        finish(&mut summary);
        assert_eq!(
            summary[0].notes,
            vec![
                "median of 3 rounds: deliv/s 9000-13000, %bare 50-70".to_owned(),
                "same remark".to_owned()
            ]
        );
    }
}
