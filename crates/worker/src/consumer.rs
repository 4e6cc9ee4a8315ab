//! One stage's consume loop: take messages within the prefetch window, run
//! the stage's handler on each in its own task, and ack or requeue by what
//! the handler decided through the message's [`Finish`] (in batches: see
//! `acks`). A handler may settle its message before it ends: the fan-out
//! acks an event once everything it caused is durable, while a slow first
//! attempt, which the ledger then owes, finishes on the same task.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// stage back. Dropped unused (the handler panicked), it requeues. A message
/// that holds several pieces of work (a group of events) is settled through
/// parts of its `Finish` ([`Finish::split`]).
pub struct Finish {
    whom: Whom,
    settled: bool,
}

enum Whom {
    Message {
        tag: u64,
        settle: Settle,
        permit: Option<OwnedSemaphorePermit>,
    },
    Part(Arc<Parts>),
}

/// What the parts of one message share.
struct Parts {
    /// The message's own `Finish`, settled by the last part.
    message: Mutex<Option<Finish>>,
    left: AtomicUsize,
    requeue: AtomicBool,
}

impl Finish {
    pub fn done(mut self, handled: Handled) {
        self.settle(handled);
    }

    /// Splits the message's settling into `n` parts (at least one), one per
    /// piece of its work: the message is settled when the last part is,
    /// acked if every part was done with `Ack`, requeued if any was done
    /// with `Requeue` or dropped unused.
    pub fn split(self, n: usize) -> Vec<Finish> {
        assert!(n > 0, "a message is split into one part at least");
        let parts = Arc::new(Parts {
            message: Mutex::new(Some(self)),
            left: AtomicUsize::new(n),
            requeue: AtomicBool::new(false),
        });
        (0..n)
            .map(|_| Finish {
                whom: Whom::Part(Arc::clone(&parts)),
                settled: false,
            })
            .collect()
    }

    fn settle(&mut self, handled: Handled) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        match &mut self.whom {
            Whom::Message {
                tag,
                settle,
                permit,
            } => {
                settle.finished(*tag, handled);
                *permit = None;
            }
            Whom::Part(parts) => {
                if handled == Handled::Requeue {
                    parts.requeue.store(true, Ordering::Release);
                }
                if parts.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let message = parts
                        .message
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some(message) = message {
                        message.done(if parts.requeue.load(Ordering::Acquire) {
                            Handled::Requeue
                        } else {
                            Handled::Ack
                        });
                    }
                }
            }
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.settle(Handled::Requeue);
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
            whom: Whom::Message {
                tag,
                settle: settler.handle(),
                permit: Some(permit),
            },
            settled: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acks::{Recorded, Settle};

    fn message(tag: u64) -> (Finish, Recorded) {
        let (settle, settled) = Settle::recording();
        let finish = Finish {
            whom: Whom::Message {
                tag,
                settle,
                permit: None,
            },
            settled: false,
        };
        (finish, settled)
    }

    #[test]
    fn a_message_is_settled_once_by_its_last_part() {
        let (finish, mut settled) = message(7);
        let mut parts = finish.split(3);
        parts.pop().unwrap().done(Handled::Ack);
        parts.pop().unwrap().done(Handled::Ack);
        assert!(settled.next().is_none(), "one part is still working");
        parts.pop().unwrap().done(Handled::Ack);
        assert_eq!(settled.next().unwrap(), (7, Handled::Ack));
        assert!(settled.next().is_none(), "settled once");
    }

    #[test]
    fn one_part_requeued_or_dropped_requeues_the_message() {
        let (finish, mut settled) = message(8);
        let mut parts = finish.split(2);
        parts.pop().unwrap().done(Handled::Requeue);
        parts.pop().unwrap().done(Handled::Ack);
        assert_eq!(settled.next().unwrap(), (8, Handled::Requeue));

        let (finish, mut settled) = message(9);
        let mut parts = finish.split(2);
        parts.pop().unwrap().done(Handled::Ack);
        drop(parts);
        assert_eq!(settled.next().unwrap(), (9, Handled::Requeue));
        assert!(settled.next().is_none());

        // A whole message dropped unused requeues too, once.
        let (finish, mut settled) = message(10);
        drop(finish);
        assert_eq!(settled.next().unwrap(), (10, Handled::Requeue));
        assert!(settled.next().is_none());
    }
}
