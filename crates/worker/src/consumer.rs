//! One stage's consume loop: take messages within the prefetch window, run
//! the stage's handler on each in its own task, and ack or requeue by what
//! the handler decided through the message's [`Finish`] (in batches: see
//! `acks`). A handler may settle its message before it ends: the fan-out
//! acks an event once everything it caused is durable, while a slow first
//! attempt, which the ledger then owes, finishes on the same task.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WorkerError;
use crate::acks::{AckCounts, Settle, Settler};
use crate::health::{HEARTBEAT, StageHealth};

/// What to tell the broker about a message once its handler is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Everything the message caused is durable: remove it.
    Ack,
    /// Something failed before the effects were durable: hand it back so
    /// this or another worker tries again.
    Requeue,
}

/// Settles one message: acks or requeues it and gives its place in the
/// stage back. Dropped unused (the handler panicked), it requeues.
pub struct Finish {
    tag: u64,
    settle: Settle,
    permit: Option<OwnedSemaphorePermit>,
}

impl Finish {
    pub fn done(mut self, handled: Handled) {
        self.settle.finished(self.tag, handled);
        self.permit = None;
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.settle.finished(self.tag, Handled::Requeue);
        }
    }
}

pub struct Stage<'a> {
    pub connection: &'a Connection,
    pub health: &'a StageHealth,
    pub queue: String,
    pub prefetch: u16,
    /// Bounds concurrently running handlers of this stage.
    pub slots: Arc<Semaphore>,
    pub grace: Duration,
    pub acks: AckCounts,
}

/// How long opening a stage's channel and starting its consumer may take:
/// longer than RabbitMQ's own minute for a queue without a leader.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run<H, F>(
    stage: Stage<'_>,
    shutdown: CancellationToken,
    handler: H,
) -> Result<(), WorkerError>
where
    H: Fn(Delivery, Finish) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let setup = async {
        let channel = stage.connection.create_channel().await?;
        channel
            .basic_qos(stage.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                stage.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    // A queue whose leader is being elected holds basic.consume; neither
    // that nor a broker that never answers may hold a shutdown.
    let (channel, mut consumer) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        setup = tokio::time::timeout(SETUP_TIMEOUT, setup) => match setup {
            Ok(setup) => setup?,
            Err(_) => {
                return Err(WorkerError::ConsumerStopped {
                    queue: stage.queue.clone(),
                    reason: format!(
                        "RabbitMQ did not start the consumer within {} s",
                        SETUP_TIMEOUT.as_secs()
                    ),
                });
            }
        },
    };
    tracing::info!(queue = %stage.queue, prefetch = stage.prefetch, "consuming");
    stage.health.attached();

    let tasks = TaskTracker::new();
    let settler = Settler::start(stage.acks.clone());
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let result = loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
            // Idle is healthy: beat so /healthz can tell idle from stuck.
            _ = heartbeat.tick() => {
                stage.health.beat();
                continue;
            }
        };
        stage.health.beat();
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => break Err(WorkerError::Broker(error)),
            None => {
                break Err(WorkerError::ConsumerStopped {
                    queue: stage.queue.clone(),
                    reason: "the broker ended the consumer".into(),
                });
            }
        };
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = Arc::clone(&stage.slots).acquire_owned() => permit.expect("stage semaphores are never closed"),
        };
        let tag = delivery.delivery_tag;
        settler.received(tag, delivery.acker.clone());
        let finish = Finish {
            tag,
            settle: settler.handle(),
            permit: Some(permit),
        };
        tasks.spawn(handler(delivery, finish));
    };

    stage.health.detached();
    // Stop the broker from sending more, then let in-flight work finish.
    let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
    if let Some(Err(error)) = courier_producer::bounded("basic.cancel", cancel).await {
        tracing::debug!(error = %error, "cancelling the consumer");
    }
    // Whatever is still unacked after the grace period is redelivered once
    // the channel closes.
    tasks.close();
    if tokio::time::timeout(stage.grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(queue = %stage.queue, unfinished = tasks.len(), "grace period over; handing unfinished messages back");
    }
    settler.finish().await;
    close(&channel).await;
    result
}

async fn close(channel: &Channel) {
    let close = channel.close(200, "shutdown".into());
    if let Some(Err(error)) = courier_producer::bounded("channel.close", close).await {
        tracing::debug!(error = %error, "closing channel");
    }
}
