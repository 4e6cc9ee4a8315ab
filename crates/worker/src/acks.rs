//! Settling one channel's messages with the broker, in batches where the
//! order allows it.
//!
//! Handlers finish out of order; each reports to the settler, which acks
//! the longest run of finished messages at the front of the channel's
//! window with one `basic.ack multiple=true`. A finished message stuck
//! behind one still running (a slow endpoint's attempt can take seconds) is
//! acked on its own after [`HOLD`], so it does not keep its place in the
//! prefetch window. Requeues go out at once, one by one. Only finished
//! messages are ever acked, so batching changes when an ack is sent, never
//! what it covers.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::Handled;
use crate::metrics::Metrics;

/// How long a finished message may wait behind an unfinished one for a
/// batch before it is acked alone. Longer than a group commit of the
/// ledger under load, so that an event whose ops missed one commit does
/// not turn every event of that commit into an ack of its own (the broker
/// pays per ack frame; docs/benchmarks.md, "Findings behind design
/// choices", has the counts).
pub const HOLD: Duration = Duration::from_millis(50);

/// The ack frames a stage sends and the messages they cover: how well
/// acks batch (the broker's cost is per frame).
#[derive(Clone)]
pub struct AckCounts {
    multiple: IntCounter,
    single: IntCounter,
    messages: IntCounter,
}

impl AckCounts {
    pub fn new(metrics: &Metrics, stage: &str) -> Self {
        Self {
            multiple: metrics.acks_sent.with_label_values(&[stage, "multiple"]),
            single: metrics.acks_sent.with_label_values(&[stage, "single"]),
            messages: metrics.messages_acked.with_label_values(&[stage]),
        }
    }
}

enum Note {
    Received(u64, Acker),
    Finished(u64, Handled),
    /// Settle what has finished and stop.
    Close,
}

/// The settler of one channel. Every message taken from the channel is
/// announced with [`Settler::received`], in the order the broker sent them,
/// and settled later through a [`Settle`].
pub struct Settler {
    notes: mpsc::UnboundedSender<Note>,
    task: JoinHandle<()>,
}

/// Reports a message's outcome to its settler.
#[derive(Clone)]
pub struct Settle {
    notes: mpsc::UnboundedSender<Note>,
}

impl Settle {
    pub fn finished(&self, delivery_tag: u64, handled: Handled) {
        // After `Settler::finish` nothing settles on this channel any more:
        // the message stays unacked and comes back once the channel closes.
        let _ = self.notes.send(Note::Finished(delivery_tag, handled));
    }
}

#[cfg(test)]
impl Settle {
    /// A `Settle` whose outcomes a test reads from [`Recorded`].
    pub fn recording() -> (Self, Recorded) {
        let (notes, inbox) = mpsc::unbounded_channel();
        (Self { notes }, Recorded(inbox))
    }
}

/// The outcomes reported through a [`Settle::recording`].
#[cfg(test)]
pub struct Recorded(mpsc::UnboundedReceiver<Note>);

#[cfg(test)]
impl Recorded {
    /// The next outcome reported, if one was.
    pub fn next(&mut self) -> Option<(u64, Handled)> {
        match self.0.try_recv() {
            Ok(Note::Finished(tag, handled)) => Some((tag, handled)),
            _ => None,
        }
    }
}

impl Settler {
    pub fn start(counts: AckCounts) -> Self {
        let (notes, inbox) = mpsc::unbounded_channel();
        Self {
            notes,
            task: tokio::spawn(settle(inbox, counts)),
        }
    }

    pub fn received(&self, delivery_tag: u64, acker: Acker) {
        let _ = self.notes.send(Note::Received(delivery_tag, acker));
    }

    pub fn handle(&self) -> Settle {
        Settle {
            notes: self.notes.clone(),
        }
    }

    /// Settles everything reported finished so far, and stops. Messages
    /// not finished by then stay unacked: the broker hands them back when
    /// the channel closes.
    pub async fn finish(self) {
        let _ = self.notes.send(Note::Close);
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "the ack settler failed; unacked messages will be redelivered");
        }
    }
}

enum State {
    Running(Acker),
    Finished(Acker),
}

struct Window {
    /// Every message received and not yet settled, by delivery tag.
    open: BTreeMap<u64, State>,
    /// Finished messages in the order they finished, with when: the ones
    /// still open after [`HOLD`] are acked alone.
    finished: VecDeque<(Instant, u64)>,
    counts: AckCounts,
}

async fn settle(mut inbox: mpsc::UnboundedReceiver<Note>, counts: AckCounts) {
    let mut window = Window {
        open: BTreeMap::new(),
        finished: VecDeque::new(),
        counts,
    };
    loop {
        let overdue = window.finished.front().map(|&(at, _)| at + HOLD);
        let note = tokio::select! {
            note = inbox.recv() => note,
            () = sleep_until(overdue) => {
                window.ack_overdue(Instant::now()).await;
                continue;
            }
        };
        let mut closing = !window.note(note).await;
        // Take whatever else is waiting: the busier the stage, the bigger
        // the batch, with no timer in the way.
        while !closing && let Ok(note) = inbox.try_recv() {
            closing = !window.note(Some(note)).await;
        }
        window.ack_front().await;
        if closing {
            // Everything finished is acked now, front run or not.
            window.ack_overdue(Instant::now() + HOLD).await;
            return;
        }
        window.ack_overdue(Instant::now()).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Window {
    /// Takes one note; false for [`Note::Close`] (or every sender gone).
    async fn note(&mut self, note: Option<Note>) -> bool {
        match note {
            None | Some(Note::Close) => return false,
            Some(Note::Received(tag, acker)) => {
                self.open.insert(tag, State::Running(acker));
            }
            Some(Note::Finished(tag, Handled::Ack)) => {
                if let Some(state) = self.open.get_mut(&tag)
                    && let State::Running(acker) = state
                {
                    *state = State::Finished(acker.clone());
                    self.finished.push_back((Instant::now(), tag));
                }
            }
            Some(Note::Finished(tag, Handled::Requeue)) => {
                if let Some(State::Running(acker)) = self.open.remove(&tag) {
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    };
                    report(Handled::Requeue, acker.nack(requeue).await);
                }
            }
        }
        true
    }

    /// Acks the finished messages at the front of the window with one
    /// `multiple` ack of the last of them.
    async fn ack_front(&mut self) {
        let (mut last, mut run) = (None, 0);
        while let Some(entry) = self.open.first_entry() {
            if !matches!(entry.get(), State::Finished(_)) {
                break;
            }
            last = Some(entry.remove());
            run += 1;
        }
        if let Some(State::Finished(acker)) = last {
            self.counts.multiple.inc();
            self.counts.messages.inc_by(run);
            report(
                Handled::Ack,
                acker.ack(BasicAckOptions { multiple: true }).await,
            );
        }
    }

    /// Acks alone each message that finished [`HOLD`] before `now` and is
    /// still waiting behind an unfinished one.
    async fn ack_overdue(&mut self, now: Instant) {
        while let Some(&(at, tag)) = self.finished.front() {
            if at + HOLD > now {
                break;
            }
            self.finished.pop_front();
            if let Some(State::Finished(acker)) = self.open.remove(&tag) {
                self.counts.single.inc();
                self.counts.messages.inc();
                report(Handled::Ack, acker.ack(BasicAckOptions::default()).await);
            }
        }
    }
}

fn report(handled: Handled, outcome: lapin::Result<bool>) {
    match outcome {
        Ok(true) => {}
        // The channel closed since these messages arrived: the broker will
        // redeliver them, and the handlers are idempotent.
        Ok(false) => tracing::warn!(
            ?handled,
            "message settled on a closed channel; it will be redelivered"
        ),
        Err(error) => {
            tracing::warn!(?handled, error = %error, "could not settle message; it will be redelivered")
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against the real broker: what it sends and what it still holds
    //! after the channel closes tell what was acked.

    use futures_util::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties, message::Delivery};

    use super::*;

    fn amqp_url() -> String {
        std::env::var("COURIER_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    async fn next(consumer: &mut lapin::Consumer) -> Delivery {
        // A bound so a broken settler fails the test instead of hanging it.
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the broker sends the next message")
            .expect("the consumer is open")
            .expect("a delivery")
    }

    /// Receives the `expected` bodies in order and reports each to the
    /// settler, keeping their delivery tags.
    async fn take(
        consumer: &mut lapin::Consumer,
        settler: &Settler,
        expected: &[&str],
        tags: &mut Vec<u64>,
    ) {
        for body in expected {
            let delivery = next(consumer).await;
            assert_eq!(delivery.data, body.as_bytes());
            settler.received(delivery.delivery_tag, delivery.acker.clone());
            tags.push(delivery.delivery_tag);
        }
    }

    #[tokio::test]
    async fn acks_finished_messages_in_runs_or_alone_and_nothing_else() {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        let queue = format!("courier-test-acks-{}", uuid::Uuid::new_v4());
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for body in ["0", "1", "2", "3", "4"] {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }

        // A window of three: the broker sends 3 only once one of 0..=2 is
        // acked.
        let consuming = connection.create_channel().await.unwrap();
        consuming
            .basic_qos(3, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consuming
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let metrics = Metrics::new();
        let settler = Settler::start(AckCounts::new(&metrics, "test"));
        let settle = settler.handle();
        let mut tags = Vec::new();
        take(&mut consumer, &settler, &["0", "1", "2"], &mut tags).await;

        // 1 and 2 finish behind 0, which keeps running: they are acked
        // alone after HOLD, and their places in the window go to 3 and 4.
        settle.finished(tags[1], Handled::Ack);
        settle.finished(tags[2], Handled::Ack);
        take(&mut consumer, &settler, &["3", "4"], &mut tags).await;

        // 0 and 3 finish (a run at the front), 4 is handed back and comes
        // again, and is left unfinished.
        settle.finished(tags[0], Handled::Ack);
        settle.finished(tags[3], Handled::Ack);
        settle.finished(tags[4], Handled::Requeue);
        let again = next(&mut consumer).await;
        assert_eq!(again.data, b"4");
        assert!(again.redelivered);
        settler.received(again.delivery_tag, again.acker.clone());
        settler.finish().await;

        // What the broker still holds once the channel is gone: exactly the
        // unfinished message. A lost ack would leave more, an ack of an
        // unfinished message fewer, a double ack an error on the channel.
        assert!(consuming.status().connected(), "no channel error");
        consuming.close(200, "done".into()).await.unwrap();
        let mut left = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            left.push(String::from_utf8(message.delivery.data.clone()).unwrap());
        }
        assert_eq!(left, ["4"]);
        // 1 and 2 alone, then 0 and 3 in runs (one, or two if the settler
        // woke between their notes).
        let acks = |mode: &str| metrics.acks_sent.with_label_values(&["test", mode]).get();
        assert_eq!(acks("single"), 2);
        assert!((1..=2).contains(&acks("multiple")), "{}", acks("multiple"));
        assert_eq!(metrics.messages_acked.with_label_values(&["test"]).get(), 4);
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}
