//! The bare bound: what the parts courier is made of manage on this machine
//! in this run, without courier's logic (no matching, no ledger, no second
//! stage, no signing). The same events are published with confirms to one
//! quorum queue, consumed with acks, and each is POSTed to the same kind of
//! receiver with reqwest, as many in flight as courier's defaults allow.
//! Every courier figure is also reported as a percentage of this one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use courier_model::{Event, EventType, WorkspaceId};
use futures_util::StreamExt;
use futures_util::stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::env::{PartsCpu, Services, token};
use crate::receiver::{Behavior, Receivers, Recorder, Window};
use crate::report::Outcome;
use crate::scenarios::{PUBLISH_WINDOW, Published, Sizes, fill, padding, wait_drained};

/// Unacked messages and POSTs in flight, as courier's default
/// `amqp.prefetch` and `delivery.max_in_flight`.
const IN_FLIGHT: u16 = 256;

pub async fn run(services: &Services, sizes: &Sizes) -> Outcome {
    eprintln!("-- bare-bound");
    let mut outcome = Outcome::new("bare-bound", "none");
    let queue = format!("bench-{}.bare", token());
    let result = measure(services, sizes, &queue, &mut outcome).await;
    // Best effort, also after an error.
    if let Ok(connection) =
        Connection::connect(&services.amqp_url, ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .ok();
        connection.close(200, "".into()).await.ok();
    }
    let mut outcome = match result {
        Ok(()) => outcome,
        Err(error) => outcome.failed(&error),
    };
    outcome.load_end = crate::env::load_average();
    outcome
}

async fn measure(
    services: &Services,
    sizes: &Sizes,
    queue: &str,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let recorder = Recorder::new();
    let receivers = Receivers::start(&recorder, &[Behavior::Ok]).await?;
    let url = receivers.urls()[0].clone();

    let connect = || async {
        Connection::connect(&services.amqp_url, ConnectionProperties::default())
            .await
            .context("could not reach RabbitMQ for the bare bound")
    };
    let publishing = connect().await?;
    let consuming = connect().await?;

    let channel = publishing.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .context("could not declare the bare bound's quorum queue")?;

    let stop = CancellationToken::new();
    let consumer = tokio::spawn(consume(
        consuming.create_channel().await?,
        queue.to_owned(),
        url,
        stop.clone(),
    ));

    let events = sizes.events;
    outcome.deliveries_expected = events;
    let pad = padding(sizes.payload_bytes)?;
    let workspace = WorkspaceId::parse("bench-w00000")?;
    let parts_before = PartsCpu::now();
    let mut published = Published {
        start_us: recorder.now_us(),
        ..Published::default()
    };
    let sends = stream::iter(0..events)
        .map(|seq| {
            let channel = channel.clone();
            let recorder = Arc::clone(&recorder);
            let workspace = workspace.clone();
            let pad = pad.as_str();
            async move {
                let data = json!({"seq": seq, "t_us": recorder.now_us(), "pad": pad});
                let event = Event::new(workspace, EventType::OrderCreated, None, data)?;
                let body = event.to_vec()?;
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(event.id.as_str().into())
                    .with_delivery_mode(2);
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties,
                    )
                    .await?
                    .await?;
                match confirm {
                    Confirmation::Ack(None) => Ok(()),
                    other => bail!("broker did not accept the message: {other:?}"),
                }
            }
        })
        .buffer_unordered(PUBLISH_WINDOW)
        .for_each(|result| {
            match result {
                Ok(()) => published.accepted += 1,
                Err(error) => {
                    published.failed += 1;
                    published
                        .first_error
                        .get_or_insert_with(|| format!("{error:#}"));
                }
            }
            async {}
        });
    if tokio::time::timeout(sizes.drain_timeout, sends)
        .await
        .is_err()
    {
        published.failed = events - published.accepted;
        published
            .first_error
            .get_or_insert_with(|| "publishing did not finish in time".into());
    }
    published.end_us = recorder.now_us();

    let drained = wait_drained(&recorder, events, sizes.drain_timeout).await;
    let parts = PartsCpu::now().since(parts_before);
    stop.cancel();
    let consumed = consumer.await.context("bare consumer panicked")?;
    publishing.close(200, "".into()).await.ok();
    consuming.close(200, "".into()).await.ok();
    consumed?;

    let window = Window::of(&recorder.arrivals());
    fill(outcome, &published, &window, drained);
    parts.report(outcome, window.count, false);
    outcome.remark("runs inside the bench process: its consumer's CPU is in the bench column");
    Ok(())
}

/// Consumes with acks; each message is POSTed, then acked (nacked back to
/// the queue when the POST fails), `IN_FLIGHT` at a time.
async fn consume(
    channel: lapin::Channel,
    queue: String,
    url: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    channel
        .basic_qos(IN_FLIGHT, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bare-bound".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let work = consumer.for_each_concurrent(IN_FLIGHT as usize, |delivery| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let Ok(delivery) = delivery else { return };
            let posted = client
                .post(&url)
                .header("content-type", "application/json")
                .body(delivery.data.clone())
                .send()
                .await;
            if matches!(&posted, Ok(r) if r.status().is_success()) {
                delivery.ack(BasicAckOptions::default()).await.ok();
            } else {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .ok();
            }
        }
    });
    tokio::select! {
        _ = work => {}
        _ = stop.cancelled() => {}
    }
    Ok(())
}
