//! The broker's address: one RabbitMQ node's URL, or a cluster's nodes as
//! several URLs separated by commas. Connecting tries the nodes in turn
//! until one answers; after a connection is lost, the next attempt starts
//! with the node after the one it was on, so a dead node is tried last.
//!
//! ```
//! use courier_producer::BrokerNodes;
//!
//! let nodes = BrokerNodes::parse(
//!     "amqp://courier:s3cret@rabbit-1:5672/%2f, amqp://courier:s3cret@rabbit-2:5672/%2f",
//! )
//! .unwrap();
//! assert_eq!(nodes.len(), 2);
//! assert_eq!(
//!     nodes.redacted(),
//!     "amqp://courier:***@rabbit-1:5672/%2f, amqp://courier:***@rabbit-2:5672/%2f"
//! );
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::redact_url;

/// The nodes to connect to, and where the next attempt starts. Clones share
/// that position.
#[derive(Clone, Debug)]
pub struct BrokerNodes {
    urls: Arc<[String]>,
    start: Arc<AtomicUsize>,
}

/// Why an address list cannot be used; the message names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodesError(String);

impl BrokerNodes {
    /// Reads `text`: URLs separated by commas, each `amqp://` or `amqps://`
    /// with a host. The first attempt starts at a node picked at random, so
    /// that the replicas of a deployment spread their connections over the
    /// cluster.
    pub fn parse(text: &str) -> Result<Self, NodesError> {
        let urls: Vec<String> = text.split(',').map(|url| url.trim().to_owned()).collect();
        for (n, url) in urls.iter().enumerate() {
            let place = if urls.len() == 1 {
                String::new()
            } else {
                format!(" (node {} of {})", n + 1, urls.len())
            };
            if url.is_empty() {
                return Err(NodesError(format!(
                    "an empty address{place}: separate the nodes' URLs with single commas"
                )));
            }
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(NodesError(format!(
                    "{:?}{place} must start with amqp:// or amqps://",
                    redact_url(url)
                )));
            }
            match url::Url::parse(url) {
                Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
                Ok(_) => {
                    return Err(NodesError(format!(
                        "{:?}{place} names no host",
                        redact_url(url)
                    )));
                }
                Err(error) => {
                    return Err(NodesError(format!(
                        "{:?}{place} is not a URL: {error}",
                        redact_url(url)
                    )));
                }
            }
        }
        let start = rand::random_range(0..urls.len());
        Ok(Self {
            urls: urls.into(),
            start: Arc::new(AtomicUsize::new(start)),
        })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Every node once, in the order the next attempt tries them, with
    /// its place in the list.
    pub fn in_turn(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.start.load(Ordering::Relaxed) % self.urls.len();
        (0..self.urls.len()).map(move |k| {
            let n = (start + k) % self.urls.len();
            (n, self.urls[n].as_str())
        })
    }

    /// Notes that a connection to node `n` was made: when it is lost, the
    /// next attempt starts with the node after it.
    pub fn connected(&self, n: usize) {
        self.start.store(n + 1, Ordering::Relaxed);
    }

    /// The URLs with their passwords hidden, for logs and errors.
    pub fn redacted(&self) -> String {
        self.urls
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The address of node `n`, password hidden.
    pub fn redacted_node(&self, n: usize) -> String {
        redact_url(&self.urls[n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_list_of_one() {
        let nodes = BrokerNodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(nodes.len(), 1);
        let order: Vec<usize> = nodes.in_turn().map(|(n, _)| n).collect();
        assert_eq!(order, [0]);
    }

    #[test]
    fn after_a_connection_the_next_attempt_starts_with_the_following_node() {
        let nodes = BrokerNodes::parse("amqp://a:5672, amqp://b:5673,amqp://c:5674").unwrap();
        nodes.connected(1);
        let order: Vec<&str> = nodes.in_turn().map(|(_, url)| url).collect();
        assert_eq!(order, ["amqp://c:5674", "amqp://a:5672", "amqp://b:5673"]);
        nodes.connected(2);
        assert_eq!(nodes.in_turn().next().unwrap().1, "amqp://a:5672");
    }

    #[test]
    fn a_bad_entry_is_named_by_its_place() {
        let error = BrokerNodes::parse("amqp://a:5672,,amqp://c").unwrap_err();
        assert!(
            error.to_string().contains("empty address (node 2 of 3)"),
            "{error}"
        );
        let error = BrokerNodes::parse("amqp://a:5672, http://u:pw@b").unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"http://u:***@b/\" (node 2 of 2) must start with amqp:// or amqps://"
        );
        let error = BrokerNodes::parse("rabbit:5672").unwrap_err();
        assert!(
            error.to_string().contains("must start with amqp://"),
            "{error}"
        );
    }
}
