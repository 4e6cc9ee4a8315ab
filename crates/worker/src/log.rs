//! What a log line at info or above is about.
//!
//! The per-event and per-delivery spans are debug-level: created at info
//! for every delivery they cost CPU though most deliveries log nothing
//! (docs/benchmarks.md). So the lines operators read name their event or
//! delivery themselves, with the same fields the spans carry.

use courier_model::{DeliveryMessage, Event};

#[derive(Clone, Copy)]
pub(crate) enum About<'a> {
    /// An event in the fan-out stage.
    Event(&'a Event),
    /// One attempt of a delivery.
    Delivery(&'a DeliveryMessage),
    /// A message that could not be read.
    Message,
}

/// `about!(warn, About::Delivery(&msg), error = %e, "...")`: a `tracing`
/// event at that level with the event id, and for a delivery its id, its
/// webhook and its attempt, as fields.
macro_rules! about {
    ($level:ident, $about:expr, $($rest:tt)+) => {
        match $about {
            $crate::log::About::Event(event) => tracing::$level!(
                event_id = %event.id,
                event_type = %event.event_type,
                $($rest)+
            ),
            $crate::log::About::Delivery(msg) => tracing::$level!(
                event_id = %msg.event_id,
                delivery_id = %msg.delivery_id,
                webhook_id = %msg.subscription_id,
                attempt = msg.attempt,
                $($rest)+
            ),
            $crate::log::About::Message => tracing::$level!($($rest)+),
        }
    };
}
pub(crate) use about;

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use courier_model::{DeliveryId, DeliveryMessage, EventId, SubscriptionId};

    use super::About;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// At info, with no span to lend them, a delivery's lines still carry
    /// its event, delivery, webhook and attempt, as JSON fields.
    #[test]
    fn lines_at_info_name_their_delivery() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let event_id = EventId::generate();
        let webhook = SubscriptionId::generate();
        let msg = DeliveryMessage::new(
            DeliveryId::derive(&event_id, webhook),
            event_id.clone(),
            webhook,
            3,
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = crate::pipeline::delivery_span(&msg);
            let _entered = span.enter();
            about!(
                info,
                About::Delivery(&msg),
                status = "retrying",
                "attempt recorded"
            );
            about!(warn, About::Message, "poison");
        });

        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{output}");
        let fields = &lines[0]["fields"];
        assert_eq!(fields["message"], "attempt recorded");
        assert_eq!(fields["event_id"], event_id.to_string());
        assert_eq!(fields["delivery_id"], msg.delivery_id.to_string());
        assert_eq!(fields["webhook_id"], webhook.to_string());
        assert_eq!(fields["attempt"], 3);
        assert_eq!(fields["status"], "retrying");
        // The debug-level span was not created at info.
        assert!(lines[0].get("span").is_none(), "{output}");
        assert_eq!(lines[1]["fields"]["message"], "poison");
    }
}
