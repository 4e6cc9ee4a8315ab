//! What reached a webhook: its events page (one row per event delivered to
//! it, filtered and paged by cursor, so a page keeps its rows while new
//! deliveries arrive), one delivery with the request as sent and every
//! attempt, Redeliver, and Recover (replay the dead deliveries since a
//! time).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use courier_api::service::{PageRequest, SentRequest, Service, status_filter};
use courier_api::views::encode_delivery_cursor;
use courier_model::{DeliveryId, DeliveryStatus, EventType};
use courier_store::{AttemptRecord, DeliveryFilter, DeliveryLogEntry};
use serde::Deserialize;

use super::webhooks::webhook_id;
use super::{Chrome, page, see_other};
use crate::form::FormData;
use crate::session::Session;
use crate::{Console, PageError};

const EVENTS_PAGE: u32 = 25;
/// How `datetime-local` inputs send a time (taken as UTC).
const LOCAL_TIME: &str = "%Y-%m-%dT%H:%M";

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    after: Option<String>,
    recovered: Option<u32>,
    more: Option<u8>,
}

/// A filter choice in a `<select>`.
pub(crate) struct Choice {
    pub value: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    webhook_id: String,
    webhook_name: String,
    rows: Vec<DeliveryLogEntry>,
    statuses: Vec<Choice>,
    types: Vec<Choice>,
    /// The filters as a query string, for the next page's link.
    filter_query: String,
    next_cursor: Option<String>,
    paged: bool,
    recover_since: String,
    notice: Option<String>,
}

pub(crate) async fn webhook_events(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let id = webhook_id(&id)?;
    let service = Service::new(console.api(), &ws);
    let sub = service.webhook(id).await?;
    // An unknown filter value is ignored: it came from an edited URL.
    let status = query
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| status_filter("status", s).ok());
    let event_type = query
        .event_type
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|t| EventType::parse(t).ok());
    let filter = DeliveryFilter {
        event_type,
        status,
        subscription: Some(id),
    };
    let request = PageRequest::parse(Some(EVENTS_PAGE), query.after.as_deref())
        .map_err(|_| PageError::BadRequest("that page link is not one the console made"))?;
    let log = service.delivery_log(&filter, request).await?;
    let next_cursor = log
        .has_next_page
        .then(|| log.rows.last().map(|r| encode_delivery_cursor(r.cursor())))
        .flatten();
    let mut filter_query = String::new();
    if let Some(s) = status {
        filter_query.push_str(&format!("&status={}", s.as_str()));
    }
    if let Some(t) = event_type {
        filter_query.push_str(&format!("&type={}", t.as_str()));
    }
    let notice = query.recovered.map(|n| {
        let more = if query.more == Some(1) {
            " More remain: recover again to queue the next batch."
        } else {
            ""
        };
        format!("{n} dead or canceled deliveries were queued again.{more}")
    });
    page(
        StatusCode::OK,
        &EventsPage {
            chrome: Chrome::new(
                &session,
                Some(&ws),
                "webhooks",
                format!("Events of {}", sub.name),
            ),
            webhook_id: id.to_string(),
            webhook_name: sub.name,
            rows: log.rows,
            statuses: DeliveryStatus::ALL
                .iter()
                .map(|s| Choice {
                    value: s.as_str(),
                    selected: status == Some(*s),
                })
                .collect(),
            types: EventType::ALL
                .iter()
                .map(|t| Choice {
                    value: t.as_str(),
                    selected: event_type == Some(*t),
                })
                .collect(),
            filter_query,
            next_cursor,
            paged: query.after.is_some(),
            recover_since: (Utc::now() - Duration::hours(24))
                .format(LOCAL_TIME)
                .to_string(),
            notice,
        },
    )
}

/// Queues the webhook's dead and canceled deliveries created since the time
/// given again, as the REST recover call does.
pub(crate) async fn recover(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let id = webhook_id(&id)?;
    let since = form
        .text("since")
        .and_then(|t| NaiveDateTime::parse_from_str(t, LOCAL_TIME).ok())
        .map(|t| t.and_utc())
        .ok_or(PageError::BadRequest(
            "choose the time to recover from (date and time, UTC)",
        ))?;
    let reopened = Service::new(console.api(), &ws).recover(id, since).await?;
    let more = u8::from(reopened.len() as u32 == courier_api::service::MAX_RECOVER);
    Ok(see_other(&format!(
        "/console/w/{ws}/webhooks/{id}/events?recovered={}&more={more}",
        reopened.len()
    )))
}

#[derive(Template)]
#[template(path = "delivery.html")]
struct DeliveryPage {
    chrome: Chrome,
    entry: DeliveryLogEntry,
    webhook_name: Option<String>,
    attempts: Vec<AttemptRecord>,
    request: Option<SentRequest>,
    /// When the request shown was (or will be) signed.
    signed_at: DateTime<Utc>,
    notice: Option<&'static str>,
}

#[derive(Deserialize)]
pub(crate) struct DeliveryQuery {
    notice: Option<String>,
}

fn delivery_id(id: &str) -> Result<DeliveryId, PageError> {
    DeliveryId::parse(id).map_err(|_| PageError::NotFound)
}

pub(crate) async fn delivery(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let service = Service::new(console.api(), &ws);
    let (entry, attempts) = service.delivery(delivery_id(&id)?).await?;
    let webhook_name = service
        .find_webhook(entry.delivery.subscription_id)
        .await?
        .map(|s| s.name);
    let signed_at = attempts.last().map_or_else(Utc::now, |a| a.started_at);
    let request = service.request_sent(&entry.delivery, signed_at).await?;
    let notice = match query.notice.as_deref() {
        Some("redelivered") => Some("Queued: one more attempt is on its way."),
        _ => None,
    };
    page(
        StatusCode::OK,
        &DeliveryPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "Delivery"),
            entry,
            webhook_name,
            attempts,
            request,
            signed_at,
            notice,
        },
    )
}

pub(crate) async fn redeliver(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let id = delivery_id(&id)?;
    Service::new(console.api(), &ws).retry_delivery(id).await?;
    Ok(see_other(&format!(
        "/console/w/{ws}/deliveries/{id}?notice=redelivered"
    )))
}
