//! HTTP ingest as an upstream that cannot speak AMQP uses it: events POSTed
//! to `/v1/workspaces/{ws}/events` (one per request) or to
//! `/v1/workspaces/{ws}/events/batch` (many per request) over [`CLIENTS`]
//! keep-alive connections, each request timed from its start to its 202.

use std::time::Duration;

use anyhow::Context;
use courier_model::WorkspaceId;
use futures_util::StreamExt;

use crate::http1;
use crate::receiver::Recorder;
use crate::report::Outcome;
use crate::scenarios::{Published, paced};

/// Concurrent requests, each on its own keep-alive connection.
pub const CLIENTS: usize = 64;

/// Where and as whom to ingest.
pub struct Target {
    /// `http://127.0.0.1:<port>` of courier's API.
    pub base: String,
    pub workspace: WorkspaceId,
    /// A key of `workspace`.
    pub key: String,
}

/// What ingesting achieved: the events accepted, and how long each
/// request took to be answered, in microseconds.
pub struct Ingested {
    pub published: Published,
    pub request_us: Vec<u64>,
    pub requests: u64,
}

/// Sends `events` events (`data.seq` = 0..events, `data.t_us` = the send
/// time on the recorder's clock) in requests of `per_request` events (one
/// per request to the single-event route when `per_request` is 1), as fast
/// as [`CLIENTS`] connections allow or at `rate` events per second, and
/// gives up at `deadline`.
pub async fn ingest(
    target: &Target,
    recorder: &Recorder,
    events: u64,
    per_request: u64,
    rate: Option<f64>,
    pad: &str,
    deadline: Duration,
) -> anyhow::Result<Ingested> {
    let per_request = per_request.max(1);
    let client = http1::Client::new(&target.base)?;
    let single = format!("/v1/workspaces/{}/events", target.workspace);
    let batch = format!("{single}/batch");
    let authorization = format!("Bearer {}", target.key);
    let pad = serde_json::to_string(pad)?;
    let requests = events.div_ceil(per_request);
    let request_rate = rate.map(|r| r / per_request as f64);

    let mut published = Published {
        start_us: recorder.now_us(),
        ..Published::default()
    };
    let mut request_us = Vec::with_capacity(requests as usize);
    let results = paced(requests, request_rate)
        .map(|n| {
            let (client, single, batch, authorization, pad) =
                (&client, &single, &batch, &authorization, &pad);
            async move {
                let first = n * per_request;
                let seqs = first..(first + per_request).min(events);
                let count = seqs.end - seqs.start;
                let mut body = String::with_capacity(pad.len() + 96);
                let path = if per_request == 1 {
                    write_event(&mut body, seqs.start, recorder.now_us(), pad);
                    single
                } else {
                    body.push_str("{\"events\":[");
                    for seq in seqs {
                        if seq != first {
                            body.push(',');
                        }
                        write_event(&mut body, seq, recorder.now_us(), pad);
                    }
                    body.push_str("]}");
                    batch
                };
                let started = recorder.now_us();
                let outcome = match client.post(path, authorization, body.as_bytes()).await {
                    Ok(response) if response.status == 202 => Ok(()),
                    Ok(response) => Err(anyhow::anyhow!(
                        "ingest answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    )),
                    Err(error) => Err(error),
                };
                (count, recorder.now_us().saturating_sub(started), outcome)
            }
        })
        .buffer_unordered(CLIENTS);
    let counting = results.for_each(|(count, took_us, outcome)| {
        if published.count(count, outcome) {
            request_us.push(took_us);
        }
        async {}
    });
    if tokio::time::timeout(deadline, counting).await.is_err() {
        published.gave_up(events, "ingesting", deadline);
    }
    published.end_us = recorder.now_us();
    Ok(Ingested {
        published,
        requests: request_us.len() as u64,
        request_us,
    })
}

/// One event as the ingest routes take it; `pad` is already a JSON string.
fn write_event(body: &mut String, seq: u64, t_us: u64, pad: &str) {
    use std::fmt::Write;
    let _ = write!(
        body,
        r#"{{"type":"order.created","data":{{"seq":{seq},"t_us":{t_us},"pad":{pad}}}}}"#
    );
}

/// Requests per second and the request-to-202 percentiles.
pub fn figures(outcome: &mut Outcome, ingested: &Ingested, per_request: u64) {
    let Ingested {
        published,
        request_us,
        requests,
    } = ingested;
    outcome.extra("events_per_request", per_request);
    let seconds = published.end_us.saturating_sub(published.start_us) as f64 / 1e6;
    if seconds > 0.0 {
        outcome.extra("ingest_requests_per_s", *requests as f64 / seconds);
    }
    let mut sorted = request_us.clone();
    sorted.sort_unstable();
    let Some(last) = sorted.len().checked_sub(1) else {
        return;
    };
    let at = |p: f64| sorted[((p / 100.0) * last as f64).round() as usize] as f64 / 1000.0;
    outcome.extra("ingest_p50_ms", at(50.0));
    outcome.extra("ingest_p99_ms", at(99.0));
    outcome.extra("ingest_max_ms", at(100.0));
}

/// Waits until courier's HTTP server at `base` answers /readyz with 200.
pub async fn wait_answering(base: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ready = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if matches!(&ready, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("courier's HTTP server at {base} was not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for courier's API.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("could not find a free port for courier's API")?;
    Ok(listener.local_addr()?.port())
}
