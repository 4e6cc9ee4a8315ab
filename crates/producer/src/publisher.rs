//! Publishing with publisher confirms: a message counts as sent only when the
//! broker has acknowledged it and has not returned it as unroutable.

use courier_model::{Event, EventError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::{BrokerNodes, NodesError, Outgoing, Topology};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("could not reach RabbitMQ at {url}: {source}")]
    Connect {
        /// The node (or, when none answered, every node) tried.
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("amqp url: {0}")]
    Address(#[from] NodesError),
    #[error("RabbitMQ channel error")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack) on {exchange:?} with key {routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "message to {exchange:?} with key {routing_key:?} reached no queue (is the topology declared?)"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error(transparent)]
    Event(#[from] EventError),
}

/// A channel in confirm mode. Cheap to clone; clones share the channel, and
/// lapin pipelines concurrent publishes on it.
#[derive(Clone)]
pub struct ConfirmedChannel {
    channel: Channel,
}

impl std::fmt::Debug for ConfirmedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedChannel")
            .field("id", &self.channel.id())
            .finish()
    }
}

impl ConfirmedChannel {
    pub async fn open(connection: &Connection) -> Result<Self, PublishError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent, mandatory message and waits for the broker's
    /// confirm. Callers that want a pipeline drive many of these
    /// concurrently rather than one after the other.
    ///
    /// A nack means the broker did not take the message (a quorum queue
    /// briefly without a leader, say), so it is published again, a bounded
    /// number of times, before the nack is reported. Consumers deduplicate,
    /// so a republished message that was in fact stored does no harm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let properties = properties.with_delivery_mode(2);
        let mut pause = NACK_FIRST_PAUSE;
        for _ in 1..NACK_ATTEMPTS {
            match self
                .publish_once(exchange, routing_key, payload, properties.clone())
                .await
            {
                Err(PublishError::Nacked { .. }) => {
                    tracing::warn!(
                        exchange,
                        routing_key,
                        ?pause,
                        "publish nacked; publishing again"
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.publish_once(exchange, routing_key, payload, properties)
            .await
    }

    /// Sends one of courier's own messages (see [`crate::outgoing`]) as
    /// [`ConfirmedChannel::publish`] does.
    pub async fn send(&self, outgoing: &Outgoing<'_>) -> Result<(), PublishError> {
        self.publish(
            &outgoing.exchange,
            &outgoing.routing_key,
            &outgoing.body,
            outgoing.properties.clone(),
        )
        .await
    }

    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            // Mandatory and unroutable: the broker acks but hands the
            // message back; it is stored nowhere.
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::NotRequested => {
                unreachable!("ConfirmedChannel always enables confirms")
            }
        }
    }
}

/// How often a nacked message is offered to the broker in all, and the pause
/// before the first retry (doubling after each): about 1.5 s of patience.
const NACK_ATTEMPTS: u32 = 5;
const NACK_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long one node may take to complete the AMQP handshake before the
/// next node is tried.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the node that answered may take to open a channel and declare
/// the ingress topology. Declaring a quorum queue starts its replicas, which
/// a busy broker can take seconds to do.
pub const DECLARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn timed_out(what: String) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what).into()
}

/// Publishes events to the events exchange. An `Ok` from [`Publisher::publish`]
/// means RabbitMQ holds the event durably.
#[derive(Clone, Debug)]
pub struct Publisher {
    topology: Topology,
    channel: ConfirmedChannel,
}

impl Publisher {
    /// Connects and declares the ingress topology (events exchange and the
    /// fan-out queue), so events are kept even before any worker runs.
    /// `url` may name a cluster's nodes, separated by commas (see
    /// [`BrokerNodes`]): the first that answers is used.
    pub async fn connect(url: &str, prefix: &str) -> Result<(Self, Connection), PublishError> {
        Self::connect_to(&BrokerNodes::parse(url)?, prefix).await
    }

    /// As [`Publisher::connect`], to one of `nodes`, from where their turn
    /// stands (so a caller connecting again starts after the node it lost).
    ///
    /// Each node gets [`HANDSHAKE_TIMEOUT`] to complete the AMQP handshake,
    /// so a node that accepts TCP but never answers does not keep the next
    /// one from being tried; the node that answered then gets
    /// [`DECLARE_TIMEOUT`] to open a channel and declare the topology.
    pub async fn connect_to(
        nodes: &BrokerNodes,
        prefix: &str,
    ) -> Result<(Self, Connection), PublishError> {
        let mut failure = None;
        for (n, node) in nodes.in_turn() {
            let handshake = Connection::connect(node, ConnectionProperties::default());
            let source = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(connection)) => {
                    nodes.connected(n);
                    let topology = Topology::new(prefix, vec![]);
                    let declare = Self::on_connection(&connection, topology);
                    return match tokio::time::timeout(DECLARE_TIMEOUT, declare).await {
                        Ok(Ok(publisher)) => Ok((publisher, connection)),
                        Ok(Err(error)) => Err(error),
                        Err(_) => {
                            crate::bounded("connection.close", connection.close(320, "".into()))
                                .await;
                            Err(PublishError::Connect {
                                url: redact_url(node),
                                source: timed_out(format!(
                                    "the node answered but did not declare the topology within {} s",
                                    DECLARE_TIMEOUT.as_secs()
                                )),
                            })
                        }
                    };
                }
                Ok(Err(source)) => source,
                Err(_) => timed_out(format!(
                    "no AMQP handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )),
            };
            tracing::debug!(node = %redact_url(node), error = %source, "RabbitMQ node did not answer");
            failure = Some(source);
        }
        Err(PublishError::Connect {
            url: nodes.redacted(),
            source: failure.expect("a node list is never empty"),
        })
    }

    pub async fn on_connection(
        connection: &Connection,
        topology: Topology,
    ) -> Result<Self, PublishError> {
        let channel = ConfirmedChannel::open(connection).await?;
        topology.declare_ingress(channel.channel()).await?;
        Ok(Self { topology, channel })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes a group of `events` events (a body from
    /// [`courier_model::EventGroup::encode`]) to the fan-out queue and waits
    /// for its confirm: see [`Topology::event_group`].
    pub async fn publish_group(&self, events: usize, body: Vec<u8>) -> Result<(), PublishError> {
        self.channel
            .send(&self.topology.event_group(events, body))
            .await
    }

    /// Publishes one event and waits for its confirm.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let body = event.to_vec()?;
        self.publish_encoded(event, &body).await
    }

    /// As [`Publisher::publish`], with the body already encoded by
    /// [`Event::to_vec`].
    pub async fn publish_encoded(&self, event: &Event, body: &[u8]) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(event.id.as_str().into())
            .with_type(event.event_type.as_str().into())
            .with_timestamp(event.occurred_at.timestamp().max(0) as u64);
        self.channel
            .publish(
                &self.topology.events_exchange(),
                event.event_type.as_str(),
                body,
                properties,
            )
            .await
    }
}

/// Hides the password of an AMQP URL for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
