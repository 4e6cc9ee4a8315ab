//! A publisher for producers that run for a while against a broker that
//! may lose a node: when its connection or channel breaks, it connects
//! again (to the next node of the list that answers, see [`BrokerNodes`])
//! and publishes the event again, for up to a given patience.
//!
//! Publishing an event again is safe: courier keeps one event per id and
//! workspace, so one that the broker had in fact stored before the
//! connection broke is delivered once all the same.

use std::time::Duration;

use courier_model::Event;
use lapin::Connection;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{BrokerNodes, PublishError, Publisher};

/// The first pause before publishing again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Publishes as [`Publisher`] does (an `Ok` means the broker confirmed the
/// event), connecting again when the connection breaks.
pub struct ReconnectingPublisher {
    nodes: BrokerNodes,
    prefix: String,
    patience: Duration,
    current: Mutex<Current>,
}

#[derive(Default)]
struct Current {
    connected: Option<(Publisher, Connection)>,
    /// Counts connections made, so that a failure seen on an old one does
    /// not throw away a newer one.
    generation: u64,
}

impl ReconnectingPublisher {
    /// Connects to a node of `url` (several separated by commas) and
    /// declares the ingress topology; fails at once when none answers. Later
    /// failures are retried for up to `patience` per event.
    pub async fn connect(
        url: &str,
        prefix: &str,
        patience: Duration,
    ) -> Result<Self, PublishError> {
        let publisher = Self {
            nodes: BrokerNodes::parse(url)?,
            prefix: prefix.to_owned(),
            patience,
            current: Mutex::default(),
        };
        publisher.connected().await?;
        Ok(publisher)
    }

    /// Publishes `event` and waits for its confirm, as
    /// [`Publisher::publish`].
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let body = event.to_vec()?;
        self.publish_encoded(event, &body).await
    }

    /// As [`ReconnectingPublisher::publish`], with the body already encoded
    /// by [`Event::to_vec`].
    pub async fn publish_encoded(&self, event: &Event, body: &[u8]) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.patience;
        let mut pause = FIRST_PAUSE;
        loop {
            let (result, generation) = match self.connected().await {
                Ok((publisher, generation)) => (
                    publisher.publish_encoded(event, body).await,
                    Some(generation),
                ),
                Err(error) => (Err(error), None),
            };
            match result {
                // The connection or channel broke, or no node answered:
                // worth another try. Anything else (a nack the channel
                // already retried, an unroutable event, a bad event) is
                // the answer.
                Err(error @ (PublishError::Broker(_) | PublishError::Connect { .. }))
                    if Instant::now() + pause < deadline =>
                {
                    tracing::warn!(event_id = %event.id, %error, ?pause, "publish failed; connecting again");
                    if let Some(generation) = generation {
                        self.forget(generation).await;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// Closes the connection politely; everything published was confirmed.
    pub async fn close(self) {
        if let Some((_, connection)) = self.current.into_inner().connected
            && let Err(error) = connection.close(200, "done".into()).await
        {
            tracing::debug!(%error, "closing the RabbitMQ connection failed");
        }
    }

    /// The current publisher and its generation, connecting first when
    /// there is none or its connection is gone.
    async fn connected(&self) -> Result<(Publisher, u64), PublishError> {
        let mut current = self.current.lock().await;
        if let Some((publisher, connection)) = &current.connected
            && connection.status().connected()
        {
            return Ok((publisher.clone(), current.generation));
        }
        current.connected = None;
        // Each node's handshake and the declaration are bounded there.
        let (publisher, connection) = Publisher::connect_to(&self.nodes, &self.prefix).await?;
        current.generation += 1;
        tracing::debug!(nodes = %self.nodes.redacted(), generation = current.generation, "connected to RabbitMQ");
        current.connected = Some((publisher.clone(), connection));
        Ok((publisher, current.generation))
    }

    /// Drops connection `generation` after a failure on it, unless a newer
    /// one replaced it meanwhile.
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.generation == generation
            && let Some((_, connection)) = current.connected.take()
        {
            // The broker may still hold it open: close it, bounded.
            let close = connection.close(320, "reconnecting".into());
            crate::bounded("connection.close", close).await;
        }
    }
}

impl std::fmt::Debug for ReconnectingPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingPublisher")
            .field("nodes", &self.nodes.redacted())
            .field("prefix", &self.prefix)
            .finish()
    }
}
