//! `courier-producer load`: a bounded burst of synthetic events for
//! measuring the pipeline. Publishes are pipelined: up to `--window` events
//! await their confirms at once, because awaiting each confirm before the
//! next send caps throughput at one broker round trip per event.

use std::pin::pin;
use std::time::{Duration, Instant};

use clap::Args;
use clap::builder::RangedU64ValueParser;
use courier_model::{Channel, Event, EventType, MAX_EVENT_BYTES, WorkspaceId};
use courier_producer::{PublishError, ReconnectingPublisher};
use futures_util::{StreamExt, stream};
use rand::RngExt;
use serde::Serialize;
use serde_json::json;
use tokio::time::MissedTickBehavior;

use super::{Broker, Failure, parse_channel, parse_rate, period};

/// Room left for the envelope (id, workspace, type, channel, timestamp)
/// around a padded `data`, so `--size` can be checked before connecting.
const ENVELOPE_ROOM: usize = 1024;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Number of events to publish; the run ends after them.
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub events: u64,

    /// Events per second on average; without it, as fast as the broker confirms.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Spread events round-robin over this many workspaces, named <workspace-prefix>-0 ..
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub workspaces: usize,

    /// Name stem of the load workspaces.
    #[arg(long, value_name = "P", default_value = "load")]
    pub workspace_prefix: String,

    /// Comma-separated event types to cycle through.
    #[arg(
        long,
        value_name = "T,...",
        value_delimiter = ',',
        default_value = "order.created"
    )]
    pub types: Vec<EventType>,

    /// Comma-separated order channels to cycle through; events carry no channel without it.
    #[arg(long, value_name = "C,...", value_delimiter = ',', value_parser = parse_channel)]
    pub channels: Vec<Channel>,

    /// Approximate size of each event's `data` in bytes; it is padded to reach it.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,

    /// Most publishes awaiting the broker's confirm at once.
    #[arg(long, value_name = "W", default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub window: usize,
}

/// What every event of a run is made of, checked before connecting.
#[derive(Debug)]
struct Plan {
    workspaces: Vec<WorkspaceId>,
    types: Vec<EventType>,
    channels: Vec<Channel>,
    /// Tells receivers which run an event belongs to, since `seq` restarts
    /// at 0 every run.
    run: String,
    pad: String,
}

impl Plan {
    fn new(args: &LoadArgs) -> Result<Self, Failure> {
        let workspaces = (0..args.workspaces)
            .map(|k| WorkspaceId::parse(format!("{}-{k}", args.workspace_prefix)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Failure::bad_input(format!("--workspace-prefix: {error}")))?;
        let max_size = MAX_EVENT_BYTES - ENVELOPE_ROOM;
        if args.size > max_size {
            return Err(Failure::bad_input(format!(
                "--size {} is too large: data may be at most {max_size} bytes so that the event \
                 stays within {MAX_EVENT_BYTES} bytes",
                args.size
            )));
        }
        let run = format!("{:08x}", rand::rng().random::<u32>());
        let unpadded = json!({"seq": args.events - 1, "run": run, "pad": ""}).to_string();
        let plan = Self {
            workspaces,
            types: args.types.clone(),
            channels: args.channels.clone(),
            run,
            pad: "x".repeat(args.size.saturating_sub(unpadded.len())),
        };
        // The largest seq makes the largest event.
        let sample = plan
            .event(args.events - 1)
            .and_then(|event| Ok(event.to_vec()?));
        sample.map_err(|error| Failure::bad_input(format!("cannot build load events: {error}")))?;
        Ok(plan)
    }

    /// Event `seq` cycles through every (workspace, type, channel)
    /// combination, so no pairing is missed when the counts share a factor.
    fn event(&self, seq: u64) -> Result<Event, PublishError> {
        let seq_index = seq as usize;
        let workspace = &self.workspaces[seq_index % self.workspaces.len()];
        let round = seq_index / self.workspaces.len();
        let event_type = self.types[round % self.types.len()];
        let channel = (!self.channels.is_empty()).then(|| {
            let round = round / self.types.len();
            self.channels[round % self.channels.len()].clone()
        });
        let data = json!({"seq": seq, "run": self.run, "pad": self.pad});
        Ok(Event::new(workspace.clone(), event_type, channel, data)?)
    }
}

/// The one line printed on stdout, in this field order.
#[derive(Debug, Serialize)]
struct Summary {
    events: u64,
    seconds: f64,
    /// Confirmed events per second.
    events_per_second: f64,
    failed: u64,
}

#[derive(Debug)]
struct Report {
    elapsed: Duration,
    failed: u64,
    first_error: Option<PublishError>,
}

pub async fn run(broker: &Broker, args: &LoadArgs) -> Result<(), Failure> {
    let plan = Plan::new(args)?;
    let publisher = super::connect(broker).await?;
    let report = publish_all(&publisher, &plan, args).await;
    super::close(publisher).await;

    let seconds = report.elapsed.as_secs_f64();
    let confirmed = args.events - report.failed;
    let summary = Summary {
        events: args.events,
        seconds: (seconds * 1000.0).round() / 1000.0,
        events_per_second: if seconds > 0.0 {
            (confirmed as f64 / seconds * 10.0).round() / 10.0
        } else {
            0.0
        },
        failed: report.failed,
    };
    println!(
        "{}",
        serde_json::to_string(&summary).expect("the summary serializes")
    );

    match report.first_error {
        None => Ok(()),
        Some(error) => Err(Failure::Broker(anyhow::Error::from(error).context(
            format!(
                "{} of {} events were not confirmed; the first failure",
                report.failed, args.events
            ),
        ))),
    }
}

/// The clock starts after connecting: the summary measures publishing, not
/// connection setup.
async fn publish_all(publisher: &ReconnectingPublisher, plan: &Plan, args: &LoadArgs) -> Report {
    let started = Instant::now();
    let ticker = args.rate.map(|rate| {
        let mut ticker = tokio::time::interval(period(rate));
        // Catch up after a stall so the average rate is the one asked for.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticker
    });
    let total = args.events;
    let seqs = stream::unfold((0, ticker), move |(seq, mut ticker)| async move {
        if seq >= total {
            return None;
        }
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        Some((seq, (seq + 1, ticker)))
    });
    // buffer_unordered pulls the next seq (and so sends the next event)
    // whenever fewer than `window` confirms are outstanding.
    let mut results = pin!(
        seqs.map(|seq| async move {
            let event = plan.event(seq)?;
            let body = event.to_vec()?;
            publisher.publish_encoded(&event, &body).await
        })
        .buffer_unordered(args.window)
    );

    let mut failed = 0;
    let mut first_error = None;
    while let Some(result) = results.next().await {
        if let Err(error) = result {
            tracing::debug!(%error, "publish failed");
            failed += 1;
            first_error.get_or_insert(error);
        }
    }
    Report {
        elapsed: started.elapsed(),
        failed,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn args(argv: &[&str]) -> LoadArgs {
        Wrapper::try_parse_from(std::iter::once("load").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn cycles_through_every_combination() {
        let plan = Plan::new(&args(&[
            "--events",
            "12",
            "--workspaces",
            "2",
            "--types",
            "order.created,order.updated",
            "--channels",
            "amazon,ebay,shopify",
        ]))
        .unwrap();
        let combos: std::collections::HashSet<_> = (0..12)
            .map(|seq| {
                let event = plan.event(seq).unwrap();
                assert_eq!(event.data.to_value()["seq"], seq);
                (
                    event.workspace_id.to_string(),
                    event.event_type,
                    event.channel.unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(combos.len(), 12);
        assert!(combos.contains(&("load-1".into(), EventType::OrderUpdated, "shopify".into())));
    }

    #[test]
    fn data_is_padded_to_about_the_size_asked() {
        for size in [0, 100, 1024, 100_000] {
            let plan =
                Plan::new(&args(&["--events", "1000", "--size", &size.to_string()])).unwrap();
            let data = plan.event(999).unwrap().data.as_str().to_owned();
            assert!(
                data.len().abs_diff(size.max(40)) <= 40,
                "{size}: {}",
                data.len()
            );
        }
    }

    #[test]
    fn refuses_what_cannot_be_published() {
        let too_big = (MAX_EVENT_BYTES).to_string();
        let err = Plan::new(&args(&["--events", "1", "--size", &too_big])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.error().to_string().contains("--size"));

        let err = Plan::new(&args(&["--events", "1", "--workspace-prefix", "a b"])).unwrap_err();
        assert!(err.error().to_string().contains("--workspace-prefix"));

        for argv in [
            &["--events", "0"][..],
            &["--events", "1", "--window", "0"],
            &["--events", "1", "--types", "order.nope"],
            &["--events", "1", "--rate", "0"],
        ] {
            assert!(
                Wrapper::try_parse_from(std::iter::once("load").chain(argv.iter().copied()))
                    .is_err(),
                "{argv:?}"
            );
        }
    }
}
