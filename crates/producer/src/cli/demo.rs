//! `courier-producer demo`: a believable stream of order and shipment events
//! for trying courier out and for dashboards that need traffic.
//!
//! A [`Generator`] keeps a few open orders in memory and moves each through
//! a plausible life: created, perhaps updated, processing, shipped in
//! parcels that travel to delivery, fulfilled, perhaps refunded; or canceled
//! (its shipment first) or failed. Every event after `order.created` refers
//! to an order that was created earlier in the same stream, and an order
//! that reached its end gets no further events. The generator is pure, so
//! the life cycle is unit-tested without a broker.

use std::pin::pin;

use clap::Args;
use courier_model::{Channel, Event, EventType, WorkspaceId};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

use super::{Broker, Failure, parse_rate, period};

/// Below this many open orders, the next event always creates one, so the
/// stream never stalls on an empty set.
const MIN_OPEN: usize = 3;
/// Above it no new orders are created, keeping the memory bounded and each
/// order's events close together.
const MAX_OPEN: usize = 12;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Workspace every event belongs to.
    #[arg(long, value_name = "W", default_value = "demo")]
    pub workspace: WorkspaceId,

    /// Stop after this many events; without it, run until Ctrl-C.
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,

    /// Events per second.
    #[arg(long, value_name = "R", default_value_t = 5.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Seed for a reproducible stream of orders (event ids stay unique).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
}

pub async fn run(broker: &Broker, args: &DemoArgs) -> Result<(), Failure> {
    let publisher = super::connect(broker).await?;
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut generator = Generator::new(StdRng::seed_from_u64(seed));
    let streamed = stream(&publisher, &mut generator, args, super::ctrl_c()).await;
    super::close(publisher).await;
    let published = streamed?;
    eprintln!("published {published} events");
    Ok(())
}

/// Publishes one event per tick until `events` were published or
/// `shutdown` resolves. Each event is confirmed before its line is printed
/// and before the next one is made, so the printed order is the order in
/// the queue and a Ctrl-C never abandons an unconfirmed event.
async fn stream<R: Rng>(
    publisher: &courier_producer::ReconnectingPublisher,
    generator: &mut Generator<R>,
    args: &DemoArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, Failure> {
    let mut ticker = tokio::time::interval(period(args.rate));
    // After a slow confirm, carry on at the normal pace instead of bursting.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = pin!(shutdown);
    let mut published = 0;
    while args.events.is_none_or(|limit| published < limit) {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        let step = generator.next_step();
        let order_id = step.data["order_id"].as_str().unwrap_or("-").to_owned();
        let event = step.into_event(&args.workspace);
        publisher
            .publish(&event)
            .await
            .map_err(Failure::from_publish)?;
        println!("{} {} {}", event.event_type, event.id, order_id);
        published += 1;
    }
    Ok(published)
}

/// One event to publish, before it gets its id and timestamp.
#[derive(Debug)]
pub struct Step {
    pub event_type: EventType,
    pub channel: &'static str,
    /// Always an object carrying `order_id`.
    pub data: Value,
}

impl Step {
    fn into_event(self, workspace: &WorkspaceId) -> Event {
        let channel = Channel::parse(self.channel).expect("demo channels are valid");
        Event::new(workspace.clone(), self.event_type, Some(channel), self.data)
            .expect("demo data is a JSON object")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderStatus {
    Pending,
    Processing,
    Fulfilled,
    FailedPermanently,
    Canceled,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Fulfilled => "FULFILLED",
            Self::FailedPermanently => "FAILED_PERMANENTLY",
            Self::Canceled => "CANCELED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParcelStatus {
    LabelCreated,
    InTransit,
    OutForDelivery,
    Delivered,
}

impl ParcelStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::LabelCreated => "LABEL_CREATED",
            Self::InTransit => "IN_TRANSIT",
            Self::OutForDelivery => "OUT_FOR_DELIVERY",
            Self::Delivered => "DELIVERED",
        }
    }

    fn next(self) -> Self {
        match self {
            Self::LabelCreated => Self::InTransit,
            Self::InTransit => Self::OutForDelivery,
            Self::OutForDelivery | Self::Delivered => Self::Delivered,
        }
    }
}

#[derive(Debug)]
struct LineItem {
    sku: &'static str,
    name: &'static str,
    quantity: u64,
    unit_price_cents: u64,
}

#[derive(Debug)]
struct Parcel {
    id: String,
    tracking_number: String,
    status: ParcelStatus,
}

#[derive(Debug)]
struct Shipment {
    id: String,
    carrier: &'static str,
    parcels: Vec<Parcel>,
}

#[derive(Debug)]
struct Order {
    id: String,
    number: String,
    channel: &'static str,
    currency: &'static str,
    items: Vec<LineItem>,
    status: OrderStatus,
    shipment: Option<Shipment>,
    updates: u8,
    /// `order.canceled` was sent; the shipment cancel and the final status
    /// change follow as their own events.
    cancel_requested: bool,
    /// Fulfilled and about to get a `refund.requested`.
    refund_due: bool,
}

impl Order {
    fn total_cents(&self) -> u64 {
        self.subtotal_cents() + SHIPPING_CENTS
    }

    fn subtotal_cents(&self) -> u64 {
        self.items
            .iter()
            .map(|item| item.quantity * item.unit_price_cents)
            .sum()
    }
}

const SHIPPING_CENTS: u64 = 495;
const CHANNELS: &[&str] = &["amazon", "ebay", "shopify", "zalando"];
const CURRENCIES: &[&str] = &["EUR", "EUR", "EUR", "GBP", "USD"];
const CARRIERS: &[&str] = &["DHL", "UPS", "DPD", "GLS", "Hermes"];
const PRODUCTS: &[(&str, &str, u64)] = &[
    ("TSHIRT-BLK-M", "Organic cotton T-shirt, black, M", 1999),
    ("HOODIE-GRY-L", "Zip hoodie, grey, L", 5490),
    ("SNEAKER-WHT-42", "Canvas sneaker, white, 42", 6995),
    ("MUG-CERAMIC", "Ceramic mug 350 ml", 1250),
    ("BACKPACK-20L", "Backpack 20 l", 7900),
    ("SOCKS-3PK", "Running socks, 3 pairs", 1499),
    ("CABLE-USBC-2M", "USB-C cable 2 m", 999),
    ("LAMP-DESK", "LED desk lamp", 3950),
];
const CUSTOMERS: &[(&str, &str)] = &[
    ("Ada Lovelace", "London"),
    ("Grace Hopper", "New York"),
    ("Alan Turing", "Manchester"),
    ("Hedy Lamarr", "Vienna"),
    ("Emmy Noether", "Erlangen"),
    ("Katherine Johnson", "Hampton"),
    ("Linus Pauling", "Portland"),
    ("Marie Curie", "Paris"),
];
const STREETS: &[&str] = &[
    "Hauptstrasse 12",
    "Baker Street 221b",
    "Rue de Rivoli 5",
    "Main Street 400",
    "Kastanienallee 3",
];
const CANCEL_REASONS: &[(&str, &str)] = &[
    ("customer", "ordered by mistake"),
    ("customer", "found a better price"),
    ("merchant", "item out of stock"),
    ("channel", "payment not received"),
];
const REFUND_REASONS: &[&str] = &["damaged in transit", "wrong size", "not as described"];
const UPDATES: &[&str] = &["shipping_address", "tags", "note"];

/// What can happen next to an order; chosen by weight among those that fit
/// its state.
#[derive(Clone, Copy, Debug)]
enum Action {
    StartProcessing,
    Update,
    Cancel,
    Ship,
    Fail,
    AdvanceParcel,
}

/// Makes the demo stream. Generic over the random source so tests can seed
/// it.
#[derive(Debug)]
pub struct Generator<R> {
    rng: R,
    open: Vec<Order>,
    orders_created: u64,
}

impl<R: Rng> Generator<R> {
    pub fn new(rng: R) -> Self {
        Self {
            rng,
            open: Vec::new(),
            orders_created: 0,
        }
    }

    pub fn next_step(&mut self) -> Step {
        let open = self.open.len();
        if open < MIN_OPEN || (open < MAX_OPEN && self.rng.random_bool(0.3)) {
            return self.create_order();
        }
        let index = self.rng.random_range(0..open);
        self.advance(index)
    }

    fn create_order(&mut self) -> Step {
        self.orders_created += 1;
        let channel = *CHANNELS.choose(&mut self.rng).expect("not empty");
        let number = self.order_number(channel);
        let item_count = self.rng.random_range(1..=3);
        let items: Vec<LineItem> = PRODUCTS
            .sample(&mut self.rng, item_count)
            .map(|&(sku, name, unit_price_cents)| LineItem {
                sku,
                name,
                quantity: self.rng.random_range(1..=2),
                unit_price_cents,
            })
            .collect();
        let order = Order {
            id: self.id("ord"),
            number,
            channel,
            currency: CURRENCIES.choose(&mut self.rng).expect("not empty"),
            items,
            status: OrderStatus::Pending,
            shipment: None,
            updates: 0,
            cancel_requested: false,
            refund_due: false,
        };
        let &(name, city) = CUSTOMERS.choose(&mut self.rng).expect("not empty");
        let data = json!({
            "order_id": order.id,
            "order_number": order.number,
            "channel": order.channel,
            "status": order.status.as_str(),
            "currency": order.currency,
            "customer": {
                "id": self.id("cus"),
                "name": name,
                "email": format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
            },
            "shipping_address": self.address(name, city),
            "items": order.items.iter().map(|item| json!({
                "sku": item.sku,
                "name": item.name,
                "quantity": item.quantity,
                "unit_price": money(item.unit_price_cents),
                "total": money(item.quantity * item.unit_price_cents),
            })).collect::<Vec<_>>(),
            "subtotal": money(order.subtotal_cents()),
            "shipping_cost": money(SHIPPING_CENTS),
            "total": money(order.total_cents()),
        });
        let step = Step {
            event_type: EventType::OrderCreated,
            channel: order.channel,
            data,
        };
        self.open.push(order);
        step
    }

    /// Moves the order at `index` one step along its life. An order whose
    /// life ends here leaves the open set, so nothing can follow its end.
    fn advance(&mut self, index: usize) -> Step {
        let order = &self.open[index];
        if order.cancel_requested {
            return if order.shipment.is_some() {
                self.cancel_shipment(index)
            } else {
                self.change_status(index, OrderStatus::Canceled)
            };
        }
        if order.refund_due {
            return self.request_refund(index);
        }
        let status = order.status;
        let shipment = order.shipment.as_ref();
        let can_update = order.updates < 2;
        let choices: &[(u32, Action)] = match (status, shipment) {
            (OrderStatus::Pending, _) => &[
                (70, Action::StartProcessing),
                (if can_update { 15 } else { 0 }, Action::Update),
                (15, Action::Cancel),
            ],
            (OrderStatus::Processing, None) => &[
                (75, Action::Ship),
                (if can_update { 8 } else { 0 }, Action::Update),
                (10, Action::Cancel),
                (7, Action::Fail),
            ],
            (OrderStatus::Processing, Some(shipment)) => {
                if shipment
                    .parcels
                    .iter()
                    .all(|p| p.status == ParcelStatus::Delivered)
                {
                    return self.fulfil(index);
                }
                // Parcels that left the warehouse cannot be called back.
                if shipment
                    .parcels
                    .iter()
                    .all(|p| p.status == ParcelStatus::LabelCreated)
                {
                    &[(85, Action::AdvanceParcel), (15, Action::Cancel)]
                } else {
                    &[(100, Action::AdvanceParcel)]
                }
            }
            (done, _) => unreachable!("a {done:?} order is not open"),
        };
        match self.choose(choices) {
            Action::StartProcessing => self.change_status(index, OrderStatus::Processing),
            Action::Update => self.update(index),
            Action::Cancel => self.cancel(index),
            Action::Ship => self.ship(index),
            Action::Fail => self.change_status(index, OrderStatus::FailedPermanently),
            Action::AdvanceParcel => self.advance_parcel(index),
        }
    }

    fn choose(&mut self, choices: &[(u32, Action)]) -> Action {
        let total: u32 = choices.iter().map(|(weight, _)| weight).sum();
        let mut roll = self.rng.random_range(0..total);
        for &(weight, action) in choices {
            if roll < weight {
                return action;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    /// Also ends the order's life when `to` is final.
    fn change_status(&mut self, index: usize, to: OrderStatus) -> Step {
        let order = &mut self.open[index];
        let previous = std::mem::replace(&mut order.status, to);
        let reason = match to {
            OrderStatus::FailedPermanently => Some("payment declined by the channel"),
            OrderStatus::Canceled => Some("canceled on request"),
            _ => None,
        };
        let mut data = json!({
            "order_id": order.id,
            "order_number": order.number,
            "previous_status": previous.as_str(),
            "status": to.as_str(),
        });
        if let Some(reason) = reason {
            data["reason"] = reason.into();
        }
        let channel = order.channel;
        if matches!(to, OrderStatus::FailedPermanently | OrderStatus::Canceled) {
            self.open.swap_remove(index);
        }
        Step {
            event_type: EventType::OrderStatusChanged,
            channel,
            data,
        }
    }

    fn update(&mut self, index: usize) -> Step {
        let field = *UPDATES.choose(&mut self.rng).expect("not empty");
        let value = match field {
            "shipping_address" => {
                let &(name, city) = CUSTOMERS.choose(&mut self.rng).expect("not empty");
                self.address(name, city)
            }
            "tags" => json!(["gift", "priority"]),
            _ => json!("Please leave the parcel with the neighbour."),
        };
        let order = &mut self.open[index];
        order.updates += 1;
        Step {
            event_type: EventType::OrderUpdated,
            channel: order.channel,
            data: json!({
                "order_id": order.id,
                "order_number": order.number,
                "status": order.status.as_str(),
                "updated_fields": [field],
                "changes": { field: value },
            }),
        }
    }

    fn cancel(&mut self, index: usize) -> Step {
        let &(by, reason) = CANCEL_REASONS.choose(&mut self.rng).expect("not empty");
        let order = &mut self.open[index];
        order.cancel_requested = true;
        Step {
            event_type: EventType::OrderCanceled,
            channel: order.channel,
            data: json!({
                "order_id": order.id,
                "order_number": order.number,
                "previous_status": order.status.as_str(),
                "canceled_by": by,
                "reason": reason,
            }),
        }
    }

    fn ship(&mut self, index: usize) -> Step {
        let carrier = *CARRIERS.choose(&mut self.rng).expect("not empty");
        let parcel_count = self.rng.random_range(1..=2);
        let parcels: Vec<Parcel> = (0..parcel_count)
            .map(|_| Parcel {
                id: self.id("prc"),
                tracking_number: self.tracking_number(carrier),
                status: ParcelStatus::LabelCreated,
            })
            .collect();
        let shipment = Shipment {
            id: self.id("shp"),
            carrier,
            parcels,
        };
        let weights: Vec<u32> = (0..parcel_count)
            .map(|_| self.rng.random_range(200..5000))
            .collect();
        let order = &mut self.open[index];
        let data = json!({
            "order_id": order.id,
            "order_number": order.number,
            "shipment_id": shipment.id,
            "carrier": shipment.carrier,
            "parcels": shipment.parcels.iter().zip(weights).map(|(parcel, grams)| json!({
                "parcel_id": parcel.id,
                "tracking_number": parcel.tracking_number,
                "weight_grams": grams,
                "status": parcel.status.as_str(),
            })).collect::<Vec<_>>(),
        });
        order.shipment = Some(shipment);
        Step {
            event_type: EventType::ShipmentCreated,
            channel: order.channel,
            data,
        }
    }

    fn cancel_shipment(&mut self, index: usize) -> Step {
        let order = &mut self.open[index];
        let shipment = order.shipment.take().expect("checked by the caller");
        Step {
            event_type: EventType::ShipmentCanceled,
            channel: order.channel,
            data: json!({
                "order_id": order.id,
                "order_number": order.number,
                "shipment_id": shipment.id,
                "carrier": shipment.carrier,
                "reason": "order canceled",
            }),
        }
    }

    fn advance_parcel(&mut self, index: usize) -> Step {
        let undelivered: Vec<usize> = self.open[index]
            .shipment
            .as_ref()
            .expect("checked by the caller")
            .parcels
            .iter()
            .enumerate()
            .filter(|(_, p)| p.status != ParcelStatus::Delivered)
            .map(|(i, _)| i)
            .collect();
        let which = *undelivered
            .choose(&mut self.rng)
            .expect("checked by the caller");
        let order = &mut self.open[index];
        let shipment = order.shipment.as_mut().expect("checked by the caller");
        let parcel = &mut shipment.parcels[which];
        let previous = parcel.status;
        parcel.status = previous.next();
        Step {
            event_type: EventType::ParcelStatusChanged,
            channel: order.channel,
            data: json!({
                "order_id": order.id,
                "order_number": order.number,
                "shipment_id": shipment.id,
                "parcel_id": parcel.id,
                "carrier": shipment.carrier,
                "tracking_number": parcel.tracking_number,
                "previous_status": previous.as_str(),
                "status": parcel.status.as_str(),
            }),
        }
    }

    fn fulfil(&mut self, index: usize) -> Step {
        let refund_due = self.rng.random_bool(0.3);
        self.open[index].refund_due = refund_due;
        let step = self.change_status(index, OrderStatus::Fulfilled);
        if !refund_due {
            self.open.swap_remove(index);
        }
        step
    }

    fn request_refund(&mut self, index: usize) -> Step {
        let reason = *REFUND_REASONS.choose(&mut self.rng).expect("not empty");
        let refund_id = self.id("rfd");
        let order = self.open.swap_remove(index);
        let item = &order.items[0];
        Step {
            event_type: EventType::RefundRequested,
            channel: order.channel,
            data: json!({
                "order_id": order.id,
                "order_number": order.number,
                "refund_id": refund_id,
                "reason": reason,
                "amount": money(item.unit_price_cents),
                "currency": order.currency,
                "items": [{"sku": item.sku, "quantity": 1}],
            }),
        }
    }

    fn id(&mut self, kind: &str) -> String {
        format!("{kind}_{:012x}", self.rng.random::<u64>() >> 16)
    }

    fn digits(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| char::from(b'0' + self.rng.random_range(0..10u8)))
            .collect()
    }

    /// Shaped like each marketplace's own order numbers, as receivers would
    /// see them.
    fn order_number(&mut self, channel: &str) -> String {
        match channel {
            "amazon" => format!("{}-{}-{}", self.digits(3), self.digits(7), self.digits(7)),
            "ebay" => format!("{}-{}-{}", self.digits(2), self.digits(5), self.digits(5)),
            "shopify" => format!("#{}", 1000 + self.orders_created),
            _ => self.digits(14),
        }
    }

    fn tracking_number(&mut self, carrier: &str) -> String {
        match carrier {
            "DHL" => format!("00340434{}", self.digits(12)),
            "UPS" => format!("1Z{}", self.digits(16)),
            "Hermes" => format!("H{}", self.digits(19)),
            _ => self.digits(14),
        }
    }

    fn address(&mut self, name: &str, city: &str) -> Value {
        json!({
            "name": name,
            "street": STREETS.choose(&mut self.rng).expect("not empty"),
            "postal_code": self.digits(5),
            "city": city,
        })
    }
}

/// Amounts as decimal strings, as order systems send them, so no receiver
/// rounds a float.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn cents(value: &Value) -> u64 {
        let (units, fraction) = value.as_str().unwrap().split_once('.').unwrap();
        units.parse::<u64>().unwrap() * 100 + fraction.parse::<u64>().unwrap()
    }

    /// Replays a long stream and checks every event against what the
    /// stream said before it: the coherence receivers rely on.
    #[test]
    fn every_event_follows_from_earlier_ones() {
        let mut generator = Generator::new(StdRng::seed_from_u64(7));
        let mut status: HashMap<String, String> = HashMap::new();
        let mut channel: HashMap<String, &str> = HashMap::new();
        let mut ended: HashSet<String> = HashSet::new();
        let mut shipments: HashMap<String, String> = HashMap::new();
        let mut parcels: HashMap<String, String> = HashMap::new();
        let mut seen_types = HashSet::new();
        let mut seen_statuses = HashSet::new();

        for _ in 0..20_000 {
            let step = generator.next_step();
            assert!(generator.open.len() <= MAX_OPEN);
            let data = &step.data;
            let order = data["order_id"].as_str().unwrap().to_owned();
            seen_types.insert(step.event_type);
            if step.event_type == EventType::OrderCreated {
                assert!(!channel.contains_key(&order), "order id reused");
                let items: u64 = data["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| cents(&i["total"]))
                    .sum();
                assert_eq!(items + cents(&data["shipping_cost"]), cents(&data["total"]));
                assert_eq!(data["channel"], step.channel);
                channel.insert(order.clone(), step.channel);
                status.insert(order, "PENDING".into());
                continue;
            }
            assert_eq!(
                channel.get(&order),
                Some(&step.channel),
                "{order} not created before"
            );
            assert!(
                !ended.contains(&order),
                "{:?} after {order} ended",
                step.event_type
            );
            match step.event_type {
                EventType::OrderStatusChanged => {
                    let to = data["status"].as_str().unwrap().to_owned();
                    assert_eq!(
                        data["previous_status"].as_str(),
                        status.get(&order).map(|s| s.as_str())
                    );
                    seen_statuses.insert(to.clone());
                    if matches!(to.as_str(), "CANCELED" | "FAILED_PERMANENTLY") {
                        assert!(!shipments.contains_key(&order), "shipment outlives {order}");
                        ended.insert(order.clone());
                    }
                    if to == "FULFILLED" {
                        let shipment = &shipments[&order];
                        assert!(
                            parcels
                                .iter()
                                .filter(|(k, _)| k.starts_with(shipment.as_str()))
                                .all(|(_, s)| s == "DELIVERED")
                        );
                    }
                    status.insert(order, to);
                }
                EventType::ShipmentCreated => {
                    assert_eq!(status[&order], "PROCESSING");
                    let shipment = data["shipment_id"].as_str().unwrap().to_owned();
                    for parcel in data["parcels"].as_array().unwrap() {
                        let key = format!("{shipment}/{}", parcel["parcel_id"].as_str().unwrap());
                        parcels.insert(key, "LABEL_CREATED".into());
                    }
                    assert!(shipments.insert(order, shipment).is_none());
                }
                EventType::ParcelStatusChanged => {
                    let key = format!(
                        "{}/{}",
                        shipments[&order],
                        data["parcel_id"].as_str().unwrap()
                    );
                    assert_eq!(
                        data["previous_status"].as_str(),
                        parcels.get(&key).map(|s| s.as_str())
                    );
                    let to = data["status"].as_str().unwrap();
                    let expected = match data["previous_status"].as_str().unwrap() {
                        "LABEL_CREATED" => "IN_TRANSIT",
                        "IN_TRANSIT" => "OUT_FOR_DELIVERY",
                        _ => "DELIVERED",
                    };
                    assert_eq!(to, expected);
                    seen_statuses.insert(to.to_owned());
                    parcels.insert(key, to.to_owned());
                }
                EventType::ShipmentCanceled => {
                    assert_eq!(
                        shipments.remove(&order).as_deref(),
                        data["shipment_id"].as_str()
                    );
                }
                EventType::RefundRequested => {
                    assert_eq!(status[&order], "FULFILLED");
                    ended.insert(order);
                }
                EventType::OrderCanceled | EventType::OrderUpdated => {
                    assert_ne!(status[&order], "FULFILLED");
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        assert_eq!(seen_types.len(), 8, "{seen_types:?}");
        for expected in [
            "PROCESSING",
            "FULFILLED",
            "FAILED_PERMANENTLY",
            "CANCELED",
            "IN_TRANSIT",
            "OUT_FOR_DELIVERY",
            "DELIVERED",
        ] {
            assert!(seen_statuses.contains(expected), "never saw {expected}");
        }
    }

    #[test]
    fn seeds_reproduce_the_stream() {
        let run = |seed| {
            let mut generator = Generator::new(StdRng::seed_from_u64(seed));
            (0..50)
                .map(|_| generator.next_step().data)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn steps_become_valid_events() {
        let mut generator = Generator::new(StdRng::seed_from_u64(3));
        let workspace = WorkspaceId::parse("demo").unwrap();
        for _ in 0..200 {
            let event = generator.next_step().into_event(&workspace);
            assert!(event.to_vec().is_ok());
        }
        assert_eq!(money(1999), "19.99");
        assert_eq!(money(5), "0.05");
    }
}
