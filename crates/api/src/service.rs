//! What the REST and the GraphQL handlers both do, written once: changing a
//! workspace's webhooks, reading its delivery log a page at a time, and
//! redelivering. Handlers read their own inputs and shape their own
//! answers; for these, they go through a [`Service`] and nowhere else.
//!
//! Every webhook change tells the worker replicas (through
//! [`crate::SubscriptionChanges`]) once, after the ledger has it, so the
//! change applies to the next event.

use chrono::{DateTime, Utc};
use courier_model::{
    DeliveryId, DeliveryMessage, DeliveryStatus, EventData, EventId, EventType, Subscription,
    SubscriptionId, WorkspaceId,
};
use courier_store::{
    AttemptRecord, CircuitRow, DeliveryCursor, DeliveryFilter, DeliveryLogEntry, DeliveryRecord,
    EventRecord, WebhookHealth,
};
use courier_webhook::SignedWebhook;

use crate::testsend::{TestReport, send_tests};
use crate::views::{decode_delivery_cursor, page_size};
use crate::webhooks::{self, NewWebhook, StatusChange, WebhookPatch};
use crate::{ApiError, ApiState, Broker};

/// Most deliveries one recover call replays; call again for more.
pub const MAX_RECOVER: u32 = 1000;

/// One workspace's webhooks and deliveries, as the caller's key sees them.
pub struct Service<'a> {
    state: &'a ApiState,
    workspace: &'a WorkspaceId,
}

/// Where a page of the delivery log starts and how long it is, validated.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<DeliveryCursor>,
}

impl PageRequest {
    /// `first` (1-100, default 20) and `after` (a cursor this API handed
    /// out), refused under those names.
    pub fn parse(first: Option<u32>, after: Option<&str>) -> Result<Self, ApiError> {
        let limit = page_size(first)?;
        let after = after.map(decode_delivery_cursor).transpose()?;
        Ok(Self { limit, after })
    }
}

/// A webhook request as sent: the headers courier sets (in the order it
/// sets them) and the body.
#[derive(Clone, Debug)]
pub struct SentRequest {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A page of the delivery log, newest first.
#[derive(Debug)]
pub struct LogPage {
    pub rows: Vec<DeliveryLogEntry>,
    pub has_next_page: bool,
}

/// A delivery status filter, refused under `field`.
pub fn status_filter(field: &str, text: &str) -> Result<DeliveryStatus, ApiError> {
    DeliveryStatus::parse(text).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be pending, retrying, succeeded, dead, canceled or paused",
        )
    })
}

/// A webhook filter (the webhook may be deleted since), refused under
/// `field`.
pub fn webhook_filter(field: &str, text: &str) -> Result<SubscriptionId, ApiError> {
    SubscriptionId::parse(text).map_err(|_| ApiError::invalid(field, "is not a webhook id"))
}

impl<'a> Service<'a> {
    pub fn new(state: &'a ApiState, workspace: &'a WorkspaceId) -> Self {
        Self { state, workspace }
    }

    // --- webhooks ------------------------------------------------------------

    /// At most `limit` webhooks, oldest first, after `after`.
    pub async fn webhooks(
        &self,
        limit: u32,
        after: Option<SubscriptionId>,
    ) -> Result<Vec<Subscription>, ApiError> {
        Ok(self
            .state
            .store()
            .list_subscriptions(self.workspace, limit, after)
            .await?)
    }

    pub async fn find_webhook(&self, id: SubscriptionId) -> Result<Option<Subscription>, ApiError> {
        Ok(self
            .state
            .store()
            .get_subscription(self.workspace, id)
            .await?)
    }

    /// The webhook, or `NotFound("webhook")`.
    pub async fn webhook(&self, id: SubscriptionId) -> Result<Subscription, ApiError> {
        self.find_webhook(id)
            .await?
            .ok_or(ApiError::NotFound("webhook"))
    }

    pub async fn create_webhook(&self, input: NewWebhook) -> Result<Subscription, ApiError> {
        let sub = webhooks::create(
            self.state.store(),
            self.workspace,
            input,
            self.state.url_policy(),
        )
        .await?;
        self.changed();
        Ok(sub)
    }

    /// Applies the patch; says too what it did to the webhook's deliveries
    /// (paused when it was switched off; replayed, or canceled with
    /// `replay_paused: Some(false)`, when it was switched on again).
    pub async fn update_webhook(
        &self,
        id: SubscriptionId,
        patch: WebhookPatch,
    ) -> Result<(Subscription, StatusChange), ApiError> {
        let updated = webhooks::update_reporting(
            self.state.store(),
            self.workspace,
            id,
            patch,
            self.state.url_policy(),
        )
        .await?;
        self.changed();
        Ok(updated)
    }

    /// How many of the webhook's deliveries are paused (kept while it is
    /// disabled).
    pub async fn paused_count(&self, id: SubscriptionId) -> Result<u64, ApiError> {
        Ok(self.state.store().count_paused(self.workspace, id).await?)
    }

    /// Its delivery history stays readable.
    pub async fn delete_webhook(&self, id: SubscriptionId) -> Result<(), ApiError> {
        webhooks::delete(self.state.store(), self.workspace, id).await?;
        self.changed();
        Ok(())
    }

    /// The old secret keeps signing for `api.rotation_grace`.
    pub async fn rotate_secret(
        &self,
        id: SubscriptionId,
        new_secret: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let sub = webhooks::rotate_secret(
            self.state.store(),
            self.workspace,
            id,
            new_secret,
            self.state.options().rotation_grace,
        )
        .await?;
        self.changed();
        Ok(sub)
    }

    fn changed(&self) {
        self.state.changed(self.workspace);
    }

    /// Sends test events to the webhook's endpoint now: one of `event`, or
    /// one per type it subscribes to; each with `data` or its type's sample.
    /// Nothing is recorded: they are not deliveries of real events.
    pub async fn test_send(
        &self,
        id: SubscriptionId,
        event: Option<EventType>,
        data: Option<EventData>,
    ) -> Result<TestReport, ApiError> {
        if let Some(data) = &data {
            data.validate()?;
        }
        let sub = self.webhook(id).await?;
        let types = match event {
            Some(ty) => vec![ty],
            None => sub.event_types.clone(),
        };
        send_tests(self.state, &sub, &types, data.as_ref()).await
    }

    // --- delivery log ----------------------------------------------------------

    pub async fn delivery_log(
        &self,
        filter: &DeliveryFilter,
        page: PageRequest,
    ) -> Result<LogPage, ApiError> {
        // One row more than the page holds tells whether there is a next.
        let mut rows = self
            .state
            .store()
            .list_deliveries(self.workspace, filter, page.limit + 1, page.after)
            .await?;
        let has_next_page = rows.len() > page.limit as usize;
        rows.truncate(page.limit as usize);
        Ok(LogPage {
            rows,
            has_next_page,
        })
    }

    /// How many deliveries of the workspace match `filter`, over all time.
    pub async fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<u64, ApiError> {
        Ok(self
            .state
            .store()
            .count_deliveries(self.workspace, filter)
            .await?)
    }

    /// The open circuits of `webhooks` (ids the caller listed from this
    /// workspace): the ledger's circuits of other webhooks never show.
    pub async fn open_circuits(
        &self,
        webhooks: &[SubscriptionId],
    ) -> Result<Vec<CircuitRow>, ApiError> {
        let mut open = self.state.store().open_circuits().await?;
        open.retain(|c| webhooks.contains(&c.subscription_id));
        Ok(open)
    }

    /// Each webhook's deliveries since `since` by outcome, its latest
    /// response, and what it still owes (over all time).
    pub async fn webhook_health(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<WebhookHealth>, ApiError> {
        Ok(self
            .state
            .store()
            .webhook_health(self.workspace, since)
            .await?)
    }

    /// The workspace's deliveries created since `since`, per hour and
    /// current status.
    pub async fn outcomes_by_hour(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, DeliveryStatus, u64)>, ApiError> {
        Ok(self
            .state
            .store()
            .delivery_outcomes_by_hour(self.workspace, since)
            .await?)
    }

    /// One event of the workspace as recorded, with its deliveries (oldest
    /// first); `None` when the workspace has no event of that id.
    pub async fn event(
        &self,
        id: &str,
    ) -> Result<Option<(EventRecord, Vec<DeliveryLogEntry>)>, ApiError> {
        let Ok(id) = EventId::parse(id) else {
            return Ok(None);
        };
        let store = self.state.store();
        let Some(record) = store.get_event(self.workspace, &id).await? else {
            return Ok(None);
        };
        let deliveries = store.event_deliveries(self.workspace, &id).await?;
        Ok(Some((record, deliveries)))
    }

    /// One delivery of the workspace with its attempts, first to last.
    pub async fn delivery(
        &self,
        id: DeliveryId,
    ) -> Result<(DeliveryLogEntry, Vec<AttemptRecord>), ApiError> {
        let store = self.state.store();
        // Scope first: attempts carry no workspace of their own.
        let entry = store
            .get_delivery_entry(self.workspace, id)
            .await?
            .ok_or(ApiError::NotFound("delivery"))?;
        let attempts = store.list_attempts(id).await?;
        Ok((entry, attempts))
    }

    /// The request courier sends for `delivery` at `at`: its body and the
    /// headers courier sets, signed with the secrets the webhook holds now
    /// (the same as at `at` unless a secret was rotated since). `None` when
    /// the webhook was deleted or the event is no longer recorded.
    pub async fn request_sent(
        &self,
        delivery: &DeliveryRecord,
        at: DateTime<Utc>,
    ) -> Result<Option<SentRequest>, ApiError> {
        let Some(sub) = self.find_webhook(delivery.subscription_id).await? else {
            return Ok(None);
        };
        let Some(record) = self
            .state
            .store()
            .get_event(self.workspace, &delivery.event_id)
            .await?
        else {
            return Ok(None);
        };
        let webhook = SignedWebhook::new(
            &sub,
            &delivery.id.to_string(),
            at,
            record.event.webhook_body(),
        );
        Ok(Some(SentRequest {
            headers: webhook.header_list(),
            body: String::from_utf8_lossy(webhook.body()).into_owned(),
        }))
    }

    // --- redelivery -------------------------------------------------------------

    /// Queues one more attempt of a delivery, whatever its status; returns
    /// the delivery as it was.
    pub async fn retry_delivery(&self, id: DeliveryId) -> Result<DeliveryRecord, ApiError> {
        let entry = self
            .state
            .store()
            .get_delivery_entry(self.workspace, id)
            .await?
            .ok_or(ApiError::NotFound("delivery"))?;
        // A delivery of a deleted webhook would only be canceled again.
        self.webhook(entry.delivery.subscription_id)
            .await
            .map_err(|_| ApiError::Conflict("the webhook of this delivery was deleted".into()))?;
        let broker = self.state.broker()?;
        let before = self
            .state
            .store()
            .reopen_delivery(self.workspace, id)
            .await?
            .ok_or(ApiError::NotFound("delivery"))?;
        self.publish_or_restore(&broker, std::slice::from_ref(&before))
            .await?;
        Ok(before)
    }

    /// Queues the `dead` and `canceled` deliveries of a webhook created at
    /// or after `since` again, oldest first, at most [`MAX_RECOVER`];
    /// returns them as they were.
    pub async fn recover(
        &self,
        webhook: SubscriptionId,
        since: DateTime<Utc>,
    ) -> Result<Vec<DeliveryRecord>, ApiError> {
        self.webhook(webhook).await?;
        let broker = self.state.broker()?;
        let reopened = self
            .state
            .store()
            .reopen_failed_deliveries(self.workspace, webhook, since, MAX_RECOVER)
            .await?;
        self.publish_or_restore(&broker, &reopened).await?;
        Ok(reopened)
    }

    /// Publishes the next attempt of each reopened delivery; at the first
    /// that fails, puts that one and the rest back as they were, so nothing
    /// is left reopened without a message that would ever attempt it.
    async fn publish_or_restore(
        &self,
        broker: &Broker,
        reopened: &[DeliveryRecord],
    ) -> Result<(), ApiError> {
        for (i, before) in reopened.iter().enumerate() {
            if let Err(e) = redeliver(broker, before).await {
                for rest in &reopened[i..] {
                    if let Err(restore) = self.state.store().restore_delivery(rest).await {
                        tracing::error!(delivery_id = %rest.id, error = %restore, "could not restore a delivery after a failed redelivery");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Publishes the message for the attempt after `before.attempts` and waits
/// for the broker's confirm.
async fn redeliver(broker: &Broker, before: &DeliveryRecord) -> Result<(), ApiError> {
    let msg = DeliveryMessage::new(
        before.id,
        before.event_id.clone(),
        before.subscription_id,
        before.attempts + 1,
    );
    broker
        .deliveries
        .send(&broker.publisher.topology().delivery(&msg))
        .await
        .map_err(|e| {
            tracing::error!(delivery_id = %before.id, error = %courier_model::error_chain(&e), "redelivery publish failed");
            ApiError::Unavailable("the broker did not accept the redelivery; try again".into())
        })
}
