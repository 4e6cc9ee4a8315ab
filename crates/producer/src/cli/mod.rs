//! What the three subcommands share: the broker options, the two kinds of
//! failure (bad input, exit 2; broker trouble, exit 1), connecting with an
//! actionable message, and the value parsers clap runs before anything else.

pub mod demo;
pub mod load;
pub mod publish;

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use courier_model::Channel;
use courier_producer::{DEFAULT_AMQP_URL, PublishError, ReconnectingPublisher};

const START_HINT: &str = "is RabbitMQ running and are the URL and credentials right? \
     To start a local broker: `rabbitmq-server -detached`";

#[derive(Debug, Args)]
pub struct Broker {
    /// RabbitMQ URL, with credentials and vhost (`%2f` is the default vhost);
    /// a cluster's nodes as several URLs separated by commas.
    #[arg(
        long,
        global = true,
        env = "COURIER__AMQP__URL",
        default_value = DEFAULT_AMQP_URL,
        // The URL usually carries a password; --help must not print it.
        hide_env_values = true,
        value_name = "URL"
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name; courier's worker must use the same.
    #[arg(
        long,
        global = true,
        env = "COURIER__AMQP__PREFIX",
        default_value = "courier",
        value_parser = clap::builder::NonEmptyStringValueParser::new(),
        value_name = "PREFIX"
    )]
    pub prefix: String,
}

/// Why a command failed, which decides the exit code: scripts retry broker
/// trouble, but retrying bad input can never help.
#[derive(Debug)]
pub enum Failure {
    BadInput(anyhow::Error),
    Broker(anyhow::Error),
}

impl Failure {
    pub fn bad_input(message: impl std::fmt::Display) -> Self {
        Self::BadInput(anyhow!("{message}"))
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) => 2,
            Self::Broker(_) => 1,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::BadInput(error) | Self::Broker(error) => error,
        }
    }

    /// A failed publish. Only an event the library refuses to encode is the
    /// caller's fault; everything else is the broker's.
    pub fn from_publish(error: PublishError) -> Self {
        match error {
            PublishError::Event(error) => Self::BadInput(error.into()),
            PublishError::Address(error) => Self::BadInput(anyhow!("--amqp-url: {error}")),
            // Its message already includes the source; wrapping it would
            // print the source twice.
            PublishError::Connect { .. } => Self::Broker(anyhow!("{error}; {START_HINT}")),
            other => Self::Broker(other.into()),
        }
    }
}

/// How long a publish may keep trying when its connection breaks (a
/// broker node lost, a restart): connecting again, to another node when
/// there are several, and publishing the event again.
pub const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Connects and declares the ingress topology, so a confirmed event is kept
/// even when no worker runs yet. The publisher connects again when its
/// connection breaks (see [`RECONNECT_PATIENCE`]).
pub async fn connect(broker: &Broker) -> Result<ReconnectingPublisher, Failure> {
    // Each node's handshake and the topology's declaration are bounded
    // inside (a node that never answers is named as such).
    ReconnectingPublisher::connect(&broker.amqp_url, &broker.prefix, RECONNECT_PATIENCE)
        .await
        .map_err(Failure::from_publish)
}

/// Closes politely so the broker logs no "client unexpectedly closed TCP
/// connection". Everything was confirmed already, so a failure here loses
/// nothing and is only logged.
pub async fn close(publisher: ReconnectingPublisher) {
    publisher.close().await;
}

/// `Channel` has no `FromStr`; its message already names the value.
pub fn parse_channel(value: &str) -> Result<Channel, String> {
    Channel::parse(value).map_err(|error| error.message)
}

/// Events per second: positive and finite, fractions allowed (`0.5` is one
/// event every two seconds).
pub fn parse_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("{value} is not a positive rate"))
    }
}

/// The pause between two events at `rate` per second. A zero period would
/// make tokio's interval panic, so absurd rates become one nanosecond.
pub fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1))
}

/// Resolves on Ctrl-C. If the handler cannot be installed, it never
/// resolves: the default SIGINT behaviour still ends the process.
pub async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_positive_numbers() {
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("fast").unwrap_err().contains("fast"));
        assert_eq!(period(4.0), Duration::from_millis(250));
        assert_eq!(period(1e300), Duration::from_nanos(1));
    }

    #[test]
    fn urls_lose_their_password() {
        use courier_producer::redact_url;
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn broker_failures_and_input_failures_exit_differently() {
        let too_large = PublishError::Event(courier_model::EventError::TooLarge { size: 1 });
        assert_eq!(Failure::from_publish(too_large).exit_code(), 2);
        let nacked = PublishError::Nacked {
            exchange: "x".into(),
            routing_key: "k".into(),
        };
        assert_eq!(Failure::from_publish(nacked).exit_code(), 1);
    }
}
