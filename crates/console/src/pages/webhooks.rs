//! The webhooks of a workspace: the list with each endpoint's health, the
//! create and edit form, the Active switch, secret rotation, the test
//! button and permanent deletion.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use courier_api::ApiError;
use courier_api::service::Service;
use courier_api::testsend::TestReport;
use courier_api::webhooks::{self, HeaderList, NewWebhook, RateLimitInput, WebhookPatch, Whole};
use courier_model::{
    DeliveryStatus, Disabled, EventType, Subscription, SubscriptionId, SubscriptionStatus,
    ValidationError,
};
use courier_store::{CircuitRow, DeliveryFilter, WebhookHealth};
use serde::Deserialize;

use super::{Chrome, page, see_other};
use crate::form::{FormData, split_list};
use crate::session::Session;
use crate::{Console, PageError};

/// Most webhooks one page of the list shows.
const LIST_PAGE: u32 = 100;

pub(crate) fn webhook_id(id: &str) -> Result<SubscriptionId, PageError> {
    SubscriptionId::parse(id).map_err(|_| PageError::NotFound)
}

/// One row of the list.
pub(crate) struct Row {
    pub sub: Subscription,
    pub health: Option<WebhookHealth>,
    /// Its paused deliveries (counted for disabled webhooks only).
    pub paused: u64,
    /// Its circuit, while open (shared by every worker replica).
    pub circuit: Option<CircuitRow>,
}

/// "Disabled: its endpoint answered 410 Gone, 2026-12-02 10:00 UTC".
pub(crate) fn disabled_text(disabled: &Disabled) -> String {
    format!(
        "Disabled: {}, {}",
        disabled.reason.describe(),
        disabled.at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// "1 paused delivery", "12 paused deliveries".
pub(crate) fn paused_text(n: u64) -> String {
    if n == 1 {
        "1 paused delivery".into()
    } else {
        format!("{n} paused deliveries")
    }
}

impl Row {
    pub(crate) fn active(&self) -> bool {
        self.sub.status == SubscriptionStatus::Enabled
    }

    /// Why and since when it is off, when it is.
    pub(crate) fn disabled(&self) -> Option<String> {
        self.sub.disabled.as_ref().map(disabled_text)
    }

    pub(crate) fn paused_text(&self) -> String {
        paused_text(self.paused)
    }

    pub(crate) fn events(&self) -> String {
        self.sub
            .event_types
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn channels(&self) -> String {
        channels_text(&self.sub)
    }

    /// Of the deliveries of the last 24 h that settled or are retrying, the
    /// share that succeeded.
    pub(crate) fn success_rate(&self) -> String {
        let Some(h) = &self.health else {
            return "no deliveries".into();
        };
        let tried = h.succeeded + h.dead + h.retrying;
        if tried == 0 {
            return "no deliveries".into();
        }
        format!(
            "{:.0} % of {tried}",
            100.0 * h.succeeded as f64 / tried as f64
        )
    }

    pub(crate) fn last_response(&self) -> String {
        match &self.health {
            Some(WebhookHealth {
                last_attempt_at: Some(at),
                last_response_status,
                ..
            }) => format!(
                "{} at {}",
                last_response_status.map_or("no response".to_owned(), |s| s.to_string()),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => "none yet".into(),
        }
    }

    pub(crate) fn waiting(&self) -> u64 {
        self.health.as_ref().map_or(0, |h| h.waiting)
    }

    pub(crate) fn held(&self) -> u64 {
        self.health.as_ref().map_or(0, |h| h.held)
    }

    /// The latest attempt of the last 24 h failed.
    pub(crate) fn failing(&self) -> bool {
        self.health.as_ref().is_some_and(|h| {
            h.last_attempt_at.is_some()
                && !h
                    .last_response_status
                    .is_some_and(|s| (200..300).contains(&s))
        })
    }

    /// Its circuit is open: the workers hold its deliveries back while the
    /// endpoint keeps failing, probing it once per cool-down.
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit.is_some()
    }
}

pub(crate) fn channels_text(sub: &Subscription) -> String {
    if sub.channels.is_empty() {
        "all".into()
    } else {
        sub.channels
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
    notice: Option<String>,
    replayed: Option<u64>,
    canceled: Option<u64>,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<Row>,
    next: Option<String>,
    notice: Option<String>,
}

/// What switching a webhook on did to its paused deliveries, as a
/// sentence; empty when it had none.
fn replay_notice(replayed: Option<u64>, canceled: Option<u64>) -> String {
    match (replayed, canceled) {
        (Some(n), _) if n > 0 => format!(" {} sent now.", paused_text(n)),
        (_, Some(n)) if n > 0 => format!(" {} canceled.", paused_text(n)),
        _ => String::new(),
    }
}

pub(crate) async fn webhooks(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let service = Service::new(console.api(), &ws);
    let after = query.after.as_deref().map(webhook_id).transpose()?;
    let mut subs = service.webhooks(LIST_PAGE + 1, after).await?;
    let next =
        (subs.len() > LIST_PAGE as usize).then(|| subs[LIST_PAGE as usize - 1].id.to_string());
    subs.truncate(LIST_PAGE as usize);
    let mut health: HashMap<SubscriptionId, WebhookHealth> = service
        .webhook_health(Utc::now() - Duration::hours(24))
        .await?
        .into_iter()
        .map(|h| (h.subscription_id, h))
        .collect();
    let ids: Vec<SubscriptionId> = subs.iter().map(|s| s.id).collect();
    let mut circuits: HashMap<SubscriptionId, CircuitRow> = service
        .open_circuits(&ids)
        .await?
        .into_iter()
        .map(|c| (c.subscription_id, c))
        .collect();
    let mut rows = Vec::with_capacity(subs.len());
    for sub in subs {
        // One indexed count per disabled webhook: most are enabled.
        let paused = if sub.status == SubscriptionStatus::Disabled {
            service.paused_count(sub.id).await?
        } else {
            0
        };
        rows.push(Row {
            circuit: circuits.remove(&sub.id),
            health: health.remove(&sub.id),
            sub,
            paused,
        });
    }
    let notice = match query.notice.as_deref() {
        Some("deleted") => Some("The webhook was deleted.".to_owned()),
        Some("activated") => Some(format!(
            "The webhook is active: new events are delivered to it.{}",
            replay_notice(query.replayed, query.canceled)
        )),
        Some("deactivated") => Some(
            "The webhook is off: new events are kept, paused, until it is turned on again."
                .to_owned(),
        ),
        _ => None,
    };
    page(
        StatusCode::OK,
        &ListPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "Webhooks"),
            rows,
            next,
            notice,
        },
    )
}

// --- the form ------------------------------------------------------------------

/// One event type as a checkbox.
pub(crate) struct EventChoice {
    pub name: &'static str,
    pub description: &'static str,
    pub checked: bool,
}

/// What the form shows: the values as entered and a message per field.
pub(crate) struct WebhookForm {
    /// `None` for a new webhook.
    pub id: Option<String>,
    pub name: String,
    pub url: String,
    pub active: bool,
    pub events: Vec<EventChoice>,
    pub all_channels: bool,
    pub channels: String,
    pub secret: String,
    pub description: String,
    pub timeout_ms: String,
    pub max_attempts: String,
    /// One `Name: value` per line.
    pub headers: String,
    pub rate_per_second: String,
    pub rate_burst: String,
    /// "Disabled: ..." while the webhook is off.
    pub disabled: Option<String>,
    /// Its paused deliveries, while it is off.
    pub paused: u64,
    /// Turning it on sends the paused deliveries (or cancels them).
    pub replay: bool,
    pub errors: HashMap<String, String>,
}

/// The settings' boxes as the form shows them.
struct SettingsText {
    description: String,
    timeout_ms: String,
    max_attempts: String,
    headers: String,
    rate_per_second: String,
    rate_burst: String,
}

impl SettingsText {
    fn of(sub: &Subscription) -> Self {
        let s = &sub.settings;
        let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
        Self {
            description: s.description.clone().unwrap_or_default(),
            timeout_ms: number(s.timeout_ms),
            max_attempts: number(s.max_attempts),
            headers: s
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            rate_per_second: number(s.rate_limit.map(|r| r.per_second)),
            rate_burst: number(s.rate_limit.map(|r| r.burst)),
        }
    }
}

/// The settings as posted, read into what the API takes; what cannot be
/// read at all (a word in a number box, a header line without a colon)
/// is refused under the API's field name.
struct PostedSettings {
    text: SettingsText,
    description: Option<String>,
    timeout_ms: Option<Whole>,
    max_attempts: Option<Whole>,
    headers: HeaderList,
    rate_limit: Option<RateLimitInput>,
    problems: Vec<ValidationError>,
}

impl PostedSettings {
    fn read(form: &FormData) -> Self {
        // Browsers send a textarea's line breaks as CRLF.
        let description = form
            .get("description")
            .unwrap_or_default()
            .replace("\r\n", "\n");
        let text = SettingsText {
            description: description.clone(),
            timeout_ms: form.text("timeout_ms").unwrap_or_default().to_owned(),
            max_attempts: form.text("max_attempts").unwrap_or_default().to_owned(),
            headers: form
                .get("headers")
                .unwrap_or_default()
                .replace("\r\n", "\n"),
            rate_per_second: form.text("rate_per_second").unwrap_or_default().to_owned(),
            rate_burst: form.text("rate_burst").unwrap_or_default().to_owned(),
        };
        let mut problems = Vec::new();
        let mut number = |field: &'static str, text: &str| -> Option<Whole> {
            if text.is_empty() {
                return None;
            }
            let n = text.parse::<i64>().ok().map(Whole);
            if n.is_none() {
                problems.push(ValidationError::new(field, "must be a whole number"));
            }
            n
        };
        let timeout_ms = number("timeoutMs", &text.timeout_ms);
        let max_attempts = number("maxAttempts", &text.max_attempts);
        let per_second = number("rateLimit.perSecond", &text.rate_per_second);
        let burst = number("rateLimit.burst", &text.rate_burst);
        let rate_limit = match (per_second, burst) {
            (Some(per_second), burst) => Some(RateLimitInput { per_second, burst }),
            (None, Some(_)) => {
                problems.push(ValidationError::new(
                    "rateLimit.perSecond",
                    "give the requests per second too, or leave both empty",
                ));
                None
            }
            (None, None) => None,
        };
        let mut headers = Vec::new();
        for (i, line) in text.headers.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((name, value)) => {
                    headers.push((name.trim().to_owned(), value.trim().to_owned()))
                }
                None => {
                    problems.push(ValidationError::new(
                        "headers",
                        format!("line {}: write each header as Name: value", i + 1),
                    ));
                    break;
                }
            }
        }
        Self {
            description: (!description.trim().is_empty()).then_some(description),
            text,
            timeout_ms,
            max_attempts,
            headers: HeaderList(headers),
            rate_limit,
            problems,
        }
    }
}

impl WebhookForm {
    fn new_webhook() -> Self {
        Self {
            id: None,
            name: String::new(),
            url: String::new(),
            active: true,
            events: choices(&[]),
            all_channels: true,
            channels: String::new(),
            secret: String::new(),
            description: String::new(),
            timeout_ms: String::new(),
            max_attempts: String::new(),
            headers: String::new(),
            rate_per_second: String::new(),
            rate_burst: String::new(),
            disabled: None,
            paused: 0,
            replay: true,
            errors: HashMap::new(),
        }
    }

    fn with_settings(mut self, text: SettingsText) -> Self {
        self.description = text.description;
        self.timeout_ms = text.timeout_ms;
        self.max_attempts = text.max_attempts;
        self.headers = text.headers;
        self.rate_per_second = text.rate_per_second;
        self.rate_burst = text.rate_burst;
        self
    }

    /// Shows the webhook's disabled state and paused deliveries.
    fn with_state(mut self, sub: &Subscription, paused: u64) -> Self {
        self.disabled = sub.disabled.as_ref().map(disabled_text);
        self.paused = paused;
        self
    }

    pub(crate) fn paused_text(&self) -> String {
        paused_text(self.paused)
    }

    fn of(sub: &Subscription) -> Self {
        Self {
            id: Some(sub.id.to_string()),
            name: sub.name.clone(),
            url: sub.url.to_string(),
            active: sub.status == SubscriptionStatus::Enabled,
            events: choices(&sub.event_types),
            all_channels: sub.channels.is_empty(),
            channels: sub
                .channels
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            secret: String::new(),
            errors: HashMap::new(),
            ..Self::new_webhook()
        }
        .with_settings(SettingsText::of(sub))
    }

    /// The form as posted, with the fields the API reads (and the
    /// problems found reading them).
    fn posted(id: Option<String>, form: &FormData) -> (Self, NewWebhook) {
        let settings = PostedSettings::read(form);
        let events = form.all("events");
        let all_channels = form.get("channels_mode") != Some("some");
        let channels_text = form.get("channels").unwrap_or_default().to_owned();
        let input = NewWebhook {
            name: form.get("name").unwrap_or_default().to_owned(),
            url: form.text("url").unwrap_or_default().to_owned(),
            events: events.clone(),
            channels: if all_channels {
                Vec::new()
            } else {
                split_list(&channels_text)
            },
            secret: form.text("secret").map(str::to_owned),
            active: form.checked("active"),
            description: settings.description,
            timeout_ms: settings.timeout_ms,
            max_attempts: settings.max_attempts,
            headers: Some(settings.headers),
            rate_limit: settings.rate_limit,
        };
        let chosen: Vec<EventType> = events
            .iter()
            .filter_map(|e| EventType::parse(e).ok())
            .collect();
        let shown = Self {
            id,
            name: input.name.clone(),
            url: input.url.clone(),
            active: input.active,
            events: choices(&chosen),
            all_channels,
            channels: channels_text,
            secret: input.secret.clone().unwrap_or_default(),
            replay: form.get("replay") != Some("cancel"),
            errors: HashMap::new(),
            ..Self::new_webhook()
        }
        .with_settings(settings.text);
        let mut shown = shown;
        shown.add_errors(settings.problems);
        (shown, input)
    }

    pub(crate) fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }

    fn add_errors(&mut self, problems: Vec<ValidationError>) {
        for p in problems {
            self.errors.entry(p.field.to_string()).or_insert(p.message);
        }
    }

    /// A refusal from the API after the form's own checks passed: next to
    /// its field when it names one the form has.
    fn add_api_error(&mut self, error: ApiError) -> Result<(), PageError> {
        match error {
            ApiError::Invalid {
                field: Some(field),
                message,
            } => {
                self.errors.insert(field, message);
                Ok(())
            }
            other => Err(other.into()),
        }
    }

    /// The form's own rule on top of the API's: "some channels" needs at
    /// least one.
    fn check_channels(&mut self, input: &NewWebhook) {
        if !self.all_channels && input.channels.is_empty() {
            self.errors.insert(
                "channels".into(),
                "list at least one channel, or choose all channels".into(),
            );
        }
    }
}

fn choices(chosen: &[EventType]) -> Vec<EventChoice> {
    EventType::ALL
        .iter()
        .map(|t| EventChoice {
            name: t.as_str(),
            description: t.description(),
            checked: chosen.contains(t),
        })
        .collect()
}

/// A disabled webhook's paused deliveries; 0 for an enabled one.
async fn paused_of(service: &Service<'_>, sub: &Subscription) -> Result<u64, PageError> {
    Ok(if sub.status == SubscriptionStatus::Disabled {
        service.paused_count(sub.id).await?
    } else {
        0
    })
}

#[derive(Template)]
#[template(path = "webhook_form.html")]
struct FormPage {
    chrome: Chrome,
    form: WebhookForm,
    notice: Option<String>,
    /// When the previous secret stops signing, while it still does.
    previous_secret_until: Option<DateTime<Utc>>,
}

pub(crate) async fn new_webhook(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    if session.record.read_only {
        return Err(PageError::Forbidden(
            "this session is read-only: it can look but not create webhooks",
        ));
    }
    page(
        StatusCode::OK,
        &FormPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "New webhook"),
            form: WebhookForm::new_webhook(),
            notice: None,
            previous_secret_until: None,
        },
    )
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    chrome: Chrome,
    heading: &'static str,
    explanation: String,
    webhook_id: String,
    secret: String,
}

pub(crate) async fn create_webhook(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let chrome = Chrome::new(&session, Some(&ws), "webhooks", "New webhook");
    let (mut shown, input) = WebhookForm::posted(None, &form);
    shown.add_errors(webhooks::check_new(&input, console.api().url_policy()));
    shown.check_channels(&input);
    let supplied_secret = input.secret.is_some();
    let created = if shown.errors.is_empty() {
        match Service::new(console.api(), &ws).create_webhook(input).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                shown.add_api_error(e)?;
                None
            }
        }
    } else {
        None
    };
    let Some(sub) = created else {
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &FormPage {
                chrome,
                form: shown,
                notice: None,
                previous_secret_until: None,
            },
        );
    };
    let explanation = if supplied_secret {
        "It signs with the secret you supplied, shown here once more.".to_owned()
    } else {
        "courier generated its signing secret. Copy it now into the receiving system: it \
         verifies each delivery's webhook-signature header with it. It is not shown again \
         (rotate it to get a new one)."
            .to_owned()
    };
    page(
        StatusCode::CREATED,
        &SecretPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "Webhook created"),
            heading: "Webhook created",
            explanation,
            webhook_id: sub.id.to_string(),
            secret: sub.secret.expose().to_owned(),
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct NoticeQuery {
    notice: Option<String>,
    replayed: Option<u64>,
    canceled: Option<u64>,
}

pub(crate) async fn edit_webhook(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let service = Service::new(console.api(), &ws);
    let sub = service.webhook(webhook_id(&id)?).await?;
    let paused = paused_of(&service, &sub).await?;
    let notice = match query.notice.as_deref() {
        Some("saved") => Some(format!(
            "Saved. The change applies to the next event.{}",
            replay_notice(query.replayed, query.canceled)
        )),
        _ => None,
    };
    page(
        StatusCode::OK,
        &FormPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", sub.name.clone()),
            previous_secret_until: webhooks::previous_secret_expiry(&sub, Utc::now()),
            form: WebhookForm::of(&sub).with_state(&sub, paused),
            notice,
        },
    )
}

pub(crate) async fn update_webhook(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let id = webhook_id(&id)?;
    let service = Service::new(console.api(), &ws);
    let current = service.webhook(id).await?;
    let (shown, input) = WebhookForm::posted(Some(id.to_string()), &form);
    let paused = paused_of(&service, &current).await?;
    let mut shown = shown.with_state(&current, paused);
    // Every setting as the form shows it: an empty box clears it.
    let patch = WebhookPatch {
        name: Some(input.name.clone()),
        url: Some(input.url.clone()),
        events: Some(input.events.clone()),
        channels: Some(input.channels.clone()),
        secret: None,
        active: Some(input.active),
        replay_paused: Some(shown.replay),
        description: Some(input.description.clone()),
        timeout_ms: Some(input.timeout_ms),
        max_attempts: Some(input.max_attempts),
        headers: Some(input.headers.clone()),
        rate_limit: Some(input.rate_limit),
    };
    shown.add_errors(webhooks::check_patch(&patch, console.api().url_policy()));
    shown.check_channels(&input);
    if shown.errors.is_empty() {
        match service.update_webhook(id, patch).await {
            Ok((_, change)) => {
                return Ok(see_other(&format!(
                    "/console/w/{ws}/webhooks/{id}?notice=saved{}",
                    change_query(change)
                )));
            }
            Err(e) => shown.add_api_error(e)?,
        }
    }
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        &FormPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", current.name.clone()),
            previous_secret_until: webhooks::previous_secret_expiry(&current, Utc::now()),
            form: shown,
            notice: None,
        },
    )
}

/// The Active switch: on or off at once, on every worker.
pub(crate) async fn set_active(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let active = match form.get("active") {
        Some("true") => true,
        Some("false") => false,
        _ => return Err(PageError::BadRequest("active must be true or false")),
    };
    let replay = match form.get("replay") {
        Some("send") => Some(true),
        Some("cancel") => Some(false),
        None => None,
        _ => return Err(PageError::BadRequest("replay must be send or cancel")),
    };
    let id = webhook_id(&id)?;
    let service = Service::new(console.api(), &ws);
    if active && replay.is_none() {
        // Switching on a webhook that kept deliveries paused: ask first
        // whether to send them.
        let sub = service.webhook(id).await?;
        let paused = paused_of(&service, &sub).await?;
        if paused > 0 {
            return page(
                StatusCode::OK,
                &EnablePage {
                    chrome: Chrome::new(
                        &session,
                        Some(&ws),
                        "webhooks",
                        format!("Turn on {}", sub.name),
                    ),
                    disabled: sub.disabled.as_ref().map(disabled_text),
                    paused_text: paused_text(paused),
                    sub,
                },
            );
        }
    }
    let patch = WebhookPatch {
        active: Some(active),
        replay_paused: replay,
        ..WebhookPatch::default()
    };
    let (_, change) = service.update_webhook(id, patch).await?;
    let notice = if active { "activated" } else { "deactivated" };
    Ok(see_other(&format!(
        "/console/w/{ws}/webhooks?notice={notice}{}",
        change_query(change)
    )))
}

/// `&replayed=N` or `&canceled=N` for the page after a change, when the
/// change replayed or canceled paused deliveries.
fn change_query(change: webhooks::StatusChange) -> String {
    if change.replayed > 0 {
        format!("&replayed={}", change.replayed)
    } else if change.canceled > 0 {
        format!("&canceled={}", change.canceled)
    } else {
        String::new()
    }
}

/// Turning on a webhook with paused deliveries: send them, or cancel them.
#[derive(Template)]
#[template(path = "enable.html")]
struct EnablePage {
    chrome: Chrome,
    sub: Subscription,
    disabled: Option<String>,
    paused_text: String,
}

pub(crate) async fn rotate_secret(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let sub = Service::new(console.api(), &ws)
        .rotate_secret(webhook_id(&id)?, None)
        .await?;
    let until = webhooks::previous_secret_expiry(&sub, Utc::now())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    page(
        StatusCode::OK,
        &SecretPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "Secret rotated"),
            heading: "New signing secret",
            explanation: format!(
                "Deliveries are signed with both the new and the old secret until {until}, so \
                 the receiving system can switch over without rejecting any. Copy the new one \
                 now: it is not shown again."
            ),
            webhook_id: sub.id.to_string(),
            secret: sub.secret.expose().to_owned(),
        },
    )
}

#[derive(Template)]
#[template(path = "test_report.html")]
struct TestPage {
    chrome: Chrome,
    webhook_id: String,
    webhook_name: String,
    report: TestReport,
}

/// Sends the webhook's test events now, as the REST test endpoint does.
pub(crate) async fn test_webhook(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let id = webhook_id(&id)?;
    let service = Service::new(console.api(), &ws);
    let sub = service.webhook(id).await?;
    let report = service.test_send(id, None, None).await?;
    page(
        StatusCode::OK,
        &TestPage {
            chrome: Chrome::new(&session, Some(&ws), "webhooks", "Test report"),
            webhook_id: id.to_string(),
            webhook_name: sub.name,
            report,
        },
    )
}

#[derive(Template)]
#[template(path = "delete.html")]
struct DeletePage {
    chrome: Chrome,
    sub: Subscription,
    waiting: u64,
}

pub(crate) async fn confirm_delete(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let service = Service::new(console.api(), &ws);
    let sub = service.webhook(webhook_id(&id)?).await?;
    // This webhook's only: two counts on its own index, not the
    // workspace's health figures.
    let mut waiting = 0;
    for status in [DeliveryStatus::Pending, DeliveryStatus::Retrying] {
        waiting += service
            .count_deliveries(&DeliveryFilter {
                status: Some(status),
                subscription: Some(sub.id),
                ..DeliveryFilter::default()
            })
            .await?;
    }
    page(
        StatusCode::OK,
        &DeletePage {
            chrome: Chrome::new(
                &session,
                Some(&ws),
                "webhooks",
                format!("Delete {}", sub.name),
            ),
            sub,
            waiting,
        },
    )
}

pub(crate) async fn delete_webhook(
    State(console): State<Console>,
    session: Session,
    Path((ws, id)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    Service::new(console.api(), &ws)
        .delete_webhook(webhook_id(&id)?)
        .await?;
    Ok(see_other(&format!(
        "/console/w/{ws}/webhooks?notice=deleted"
    )))
}
