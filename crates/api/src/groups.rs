//! HTTP ingest publishes in groups. Each accepted event goes to one task,
//! which sends the events that have gathered as one message (an
//! [`EventGroup`] on the fan-out queue) while earlier groups wait for their
//! confirms, and answers every event of a group once the broker confirmed
//! it. Under load the events of concurrent requests share a message: one
//! publish and one confirm for courier, one message for the broker to store
//! and for a worker to take. A request that comes alone is sent alone, at
//! once.

use std::sync::{Arc, RwLock};

use courier_model::{EventGroup, EventId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::Broker;

/// Most events in one message.
pub const MAX_GROUP_EVENTS: usize = 64;
/// Most bytes of events in one message, so that a group weighs no more in
/// a worker's prefetch window than the largest single event does; an event
/// larger than this still goes, alone.
pub const MAX_GROUP_BYTES: usize = 256 * 1024;
/// Groups awaiting their confirms at once. Events that arrive meanwhile
/// gather into the next group; more groups in flight would make each
/// smaller.
const GROUPS_IN_FLIGHT: usize = 2;
/// Events waiting for a group; a request waits for room beyond that.
const QUEUED_EVENTS: usize = 8 * MAX_GROUP_EVENTS;

/// Where the current broker connection is, shared with the API's state:
/// `None` while there is none.
pub type BrokerSlot = Arc<RwLock<Option<Arc<Broker>>>>;

/// Why an event was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPublished {
    /// No broker connection when its group was sent.
    NoBroker,
    /// The broker refused its group or did not confirm it.
    NotConfirmed,
}

/// An encoded event waiting for its group's confirm.
struct Pending {
    id: EventId,
    body: Vec<u8>,
    answer: oneshot::Sender<Result<(), NotPublished>>,
}

/// Hands events to the grouping task. Cheap to clone; the task ends when
/// the last handle is gone and the groups in flight are answered.
#[derive(Clone)]
pub struct Groups {
    queue: mpsc::Sender<Pending>,
}

impl Groups {
    /// Starts the grouping task on the current runtime.
    pub fn start(broker: BrokerSlot) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUED_EVENTS);
        tokio::spawn(run(waiting, broker));
        Self { queue }
    }

    /// Queues one event (its id, and its body from [`courier_model::Event::to_vec`])
    /// for the next group; the receiver answers once the broker confirmed
    /// that group, or did not.
    pub async fn submit(
        &self,
        id: EventId,
        body: Vec<u8>,
    ) -> oneshot::Receiver<Result<(), NotPublished>> {
        let (answer, answered) = oneshot::channel();
        // The task outlives every handle; should it be gone, the dropped
        // sender answers the receiver with an error.
        let _ = self.queue.send(Pending { id, body, answer }).await;
        answered
    }

    /// Publishes one event and waits for its group's confirm.
    pub async fn publish(&self, id: EventId, body: Vec<u8>) -> Result<(), NotPublished> {
        self.submit(id, body)
            .await
            .await
            .unwrap_or(Err(NotPublished::NotConfirmed))
    }
}

async fn run(mut waiting: mpsc::Receiver<Pending>, broker: BrokerSlot) {
    let mut in_flight = FuturesUnordered::new();
    // The event that did not fit the last group: the next one's first.
    let mut carried: Option<Pending> = None;
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next(&mut carried, &mut waiting), if in_flight.len() < GROUPS_IN_FLIGHT => {
                let Some(first) = first else { break };
                let group = gather(first, &mut waiting, &mut carried);
                let broker = broker.read().unwrap_or_else(|e| e.into_inner()).clone();
                in_flight.push(publish(group, broker));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

async fn next(
    carried: &mut Option<Pending>,
    waiting: &mut mpsc::Receiver<Pending>,
) -> Option<Pending> {
    match carried.take() {
        Some(pending) => Some(pending),
        None => waiting.recv().await,
    }
}

/// `first` and whatever else is waiting, up to the group's limits.
fn gather(
    first: Pending,
    waiting: &mut mpsc::Receiver<Pending>,
    carried: &mut Option<Pending>,
) -> Vec<Pending> {
    let mut bytes = first.body.len();
    let mut group = vec![first];
    while group.len() < MAX_GROUP_EVENTS {
        let Ok(pending) = waiting.try_recv() else {
            break;
        };
        if bytes + pending.body.len() > MAX_GROUP_BYTES {
            *carried = Some(pending);
            break;
        }
        bytes += pending.body.len();
        group.push(pending);
    }
    group
}

/// Sends one group and answers each of its events.
async fn publish(group: Vec<Pending>, broker: Option<Arc<Broker>>) {
    let outcome = match broker {
        None => Err(NotPublished::NoBroker),
        Some(broker) => {
            let body = EventGroup::encode(group.iter().map(|p| p.body.as_slice()));
            broker
                .publisher
                .publish_group(group.len(), body)
                .await
                .map_err(|error| {
                    tracing::error!(
                        events = group.len(),
                        first_event_id = %group[0].id,
                        error = %courier_model::error_chain(&error),
                        "ingest publish failed"
                    );
                    NotPublished::NotConfirmed
                })
        }
    };
    for pending in group {
        // A request that went away needs no answer.
        let _ = pending.answer.send(outcome);
    }
}
