//! Memory of the subscription index: builds it from `N` subscriptions in
//! the bench's many-subscriptions shape (100 per workspace, one channel
//! each, one URL, a fresh secret each), one at a time as the worker's
//! reload streams them, and prints the growth of the process's VmRSS (what
//! the index keeps) and VmHWM (the peak while building) per subscription,
//! the build time and the time of a match.
//!
//! `cargo run --release -p courier-model --example index_memory -- 1000000`

use std::time::Instant;

use chrono::Utc;
use courier_model::{
    Channel, Event, EventType, Subscription, SubscriptionId, SubscriptionIndex,
    SubscriptionIndexBuilder, SubscriptionStatus, WebhookSecret, WebhookSettings, WebhookUrl,
    WorkspaceId,
};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let per_workspace = 100u64;
    let url = WebhookUrl::parse("http://127.0.0.1:40000/hook").unwrap();
    let now = Utc::now();
    let subscription = |i: u64| Subscription {
        id: SubscriptionId::generate(),
        workspace_id: WorkspaceId::parse(format!("bench-w{:05}", i / per_workspace)).unwrap(),
        name: "bench".into(),
        url: url.clone(),
        event_types: vec![EventType::OrderCreated],
        channels: vec![Channel::parse(&format!("c{}", i % per_workspace)).unwrap()],
        secret: WebhookSecret::generate(),
        previous_secret: None,
        previous_secret_expires_at: None,
        status: SubscriptionStatus::Enabled,
        disabled: None,
        settings: WebhookSettings::default(),
        created_at: now,
        updated_at: now,
    };

    let rss0 = status_kib("VmRSS:");
    let started = Instant::now();
    let index = build(n, subscription);
    let took = started.elapsed();
    let rss = status_kib("VmRSS:").saturating_sub(rss0);
    let hwm = status_kib("VmHWM:").saturating_sub(rss0);
    println!("subscriptions      {n}");
    println!("index len          {}", index.len());
    println!("built in           {:.2} s", took.as_secs_f64());
    println!(
        "VmRSS growth       {:.1} MB, {:.0} bytes per subscription",
        rss as f64 / 1024.0,
        rss as f64 * 1024.0 / n as f64
    );
    println!(
        "VmHWM growth       {:.1} MB, {:.0} bytes per subscription (peak while building)",
        hwm as f64 / 1024.0,
        hwm as f64 * 1024.0 / n as f64
    );

    let workspaces = n.div_ceil(per_workspace);
    let events: Vec<Event> = (0..10_000u64)
        .map(|i| {
            let w = i % workspaces;
            let c = (i / workspaces) % per_workspace;
            Event::new(
                WorkspaceId::parse(format!("bench-w{w:05}")).unwrap(),
                EventType::OrderCreated,
                Some(Channel::parse(&format!("c{c}")).unwrap()),
                serde_json::json!({}),
            )
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let mut matched = 0;
    for _ in 0..100 {
        for event in &events {
            matched += count_matches(&index, event);
        }
    }
    let per = started.elapsed().as_secs_f64() / (100.0 * events.len() as f64);
    println!(
        "matching           {:.0} ns per event ({} matches)",
        per * 1e9,
        matched
    );
}

fn build(n: u64, subscription: impl Fn(u64) -> Subscription) -> SubscriptionIndex {
    let mut builder = SubscriptionIndexBuilder::default();
    for i in 0..n {
        builder.insert(&subscription(i));
    }
    builder.build()
}

fn count_matches(index: &SubscriptionIndex, event: &Event) -> usize {
    index.matching(event).len()
}
