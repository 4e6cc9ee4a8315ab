//! A workspace at a glance (the last 24 hours of deliveries as a chart, the
//! webhooks failing now, the dead deliveries waiting for a decision) and
//! the event catalogue.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Duration, Utc};
use courier_api::samples::sample_data;
use courier_api::service::Service;
use courier_model::{DeliveryStatus, Event, EventType, SubscriptionStatus};
use courier_store::DeliveryFilter;

use super::webhooks::Row;
use super::{Chrome, page};
use crate::chart::{self, Hour};
use crate::session::Session;
use crate::{Console, PageError};

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    hours: Vec<Hour>,
    /// Drawn by `chart::svg` from numbers only.
    chart: String,
    total: u64,
    webhooks: usize,
    active: usize,
    failing: Vec<Row>,
    dead: u64,
    can_make_links: bool,
}

pub(crate) async fn overview(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let service = Service::new(console.api(), &ws);
    let now = Utc::now();
    let since = now - Duration::hours(chart::HOURS as i64);
    let hours = chart::hours(&service.outcomes_by_hour(since).await?, now);
    let health = service.webhook_health(since).await?;
    // Webhooks are few per workspace; the list shows at most this many.
    let subs = service.webhooks(1000, None).await?;
    let active = subs
        .iter()
        .filter(|s| s.status == SubscriptionStatus::Enabled)
        .count();
    let webhooks = subs.len();
    let ids: Vec<_> = subs.iter().map(|s| s.id).collect();
    let circuits = service.open_circuits(&ids).await?;
    let failing = subs
        .into_iter()
        .map(|sub| Row {
            circuit: circuits
                .iter()
                .find(|c| c.subscription_id == sub.id)
                .cloned(),
            health: health.iter().find(|h| h.subscription_id == sub.id).cloned(),
            sub,
            paused: 0,
        })
        .filter(Row::failing)
        .collect();
    let dead = service
        .count_deliveries(&DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            ..DeliveryFilter::default()
        })
        .await?;
    page(
        StatusCode::OK,
        &OverviewPage {
            chrome: Chrome::new(&session, Some(&ws), "overview", "Overview"),
            chart: chart::svg(&hours),
            total: hours.iter().map(Hour::total).sum(),
            hours,
            webhooks,
            active,
            failing,
            dead,
            can_make_links: !session.is_portal() && !session.record.read_only,
        },
    )
}

/// An event type as the catalogue shows it.
struct CatalogueEntry {
    name: &'static str,
    description: &'static str,
    /// The body a receiver gets, pretty-printed: the sample the test button
    /// sends.
    example: String,
}

#[derive(Template)]
#[template(path = "catalogue.html")]
struct CataloguePage {
    chrome: Chrome,
    entries: Vec<CatalogueEntry>,
}

pub(crate) async fn catalogue(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let mut entries = Vec::with_capacity(EventType::ALL.len());
    for &ty in EventType::ALL {
        let event = Event::new(ws.clone(), ty, None, sample_data(ty))
            .map_err(|e| PageError::Internal(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_slice(&event.webhook_body())
            .map_err(|e| PageError::Internal(e.to_string()))?;
        entries.push(CatalogueEntry {
            name: ty.as_str(),
            description: ty.description(),
            example: serde_json::to_string_pretty(&body)
                .map_err(|e| PageError::Internal(e.to_string()))?,
        });
    }
    page(
        StatusCode::OK,
        &CataloguePage {
            chrome: Chrome::new(&session, Some(&ws), "catalogue", "Event catalogue"),
            entries,
        },
    )
}
