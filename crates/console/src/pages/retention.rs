//! A workspace's retention: how long the ledger keeps its finished
//! deliveries, what the deployment sets, and the workspace's own values,
//! which the form changes through the API's rules
//! ([`courier_api::retention`]).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use courier_api::ApiError;
use courier_api::retention::{self, RetentionView};

use super::{Chrome, page, see_other};
use crate::form::FormData;
use crate::session::Session;
use crate::{Console, PageError};

#[derive(Template)]
#[template(path = "retention.html")]
struct RetentionPage {
    chrome: Chrome,
    view: RetentionView,
    /// What the form's fields hold: what was typed when it was refused,
    /// the workspace's own values otherwise (empty: the deployment's).
    succeeded: String,
    failed: String,
    errors: HashMap<&'static str, String>,
    notice: Option<&'static str>,
}

impl RetentionPage {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct RetentionQuery {
    notice: Option<String>,
}

fn days_text(days: Option<u32>) -> String {
    days.map(|d| d.to_string()).unwrap_or_default()
}

pub(crate) async fn retention(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
    Query(query): Query<RetentionQuery>,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    let view = retention::get(console.api(), &ws).await?;
    page(
        StatusCode::OK,
        &RetentionPage {
            chrome: Chrome::new(&session, Some(&ws), "retention", "Retention"),
            succeeded: days_text(view.own.succeeded_days),
            failed: days_text(view.own.failed_days),
            view,
            errors: HashMap::new(),
            notice: (query.notice.as_deref() == Some("saved"))
                .then_some("Saved. Pruning uses these values from its next round."),
        },
    )
}

/// The form's two fields, as the API names them in its errors.
const FIELDS: [(&str, &str); 2] = [
    ("succeeded_days", "succeededDays"),
    ("failed_days", "failedDays"),
];

pub(crate) async fn set_retention(
    State(console): State<Console>,
    session: Session,
    Path(ws): Path<String>,
    form: FormData,
) -> Result<Response, PageError> {
    let ws = session.workspace(&console, &ws).await?;
    session.check_write(&form)?;
    let mut errors = HashMap::new();
    let mut days = [None, None];
    for ((field, _), value) in FIELDS.iter().zip(days.iter_mut()) {
        if let Some(text) = form.text(field) {
            match text.parse::<i64>() {
                Ok(number) => *value = Some(number),
                Err(_) => {
                    errors.insert(
                        *field,
                        "a whole number of days, or empty for the deployment's".to_owned(),
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        match retention::set(console.api(), &ws, days[0], days[1]).await {
            Ok(_) => {
                return Ok(see_other(&format!(
                    "/console/w/{ws}/retention?notice=saved"
                )));
            }
            Err(ApiError::Invalid {
                field: Some(field),
                message,
            }) => {
                let ours = FIELDS
                    .iter()
                    .find(|(_, api)| *api == field)
                    .map_or("succeeded_days", |(ours, _)| *ours);
                errors.insert(ours, message);
            }
            Err(other) => return Err(other.into()),
        }
    }
    let view = retention::get(console.api(), &ws).await?;
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        &RetentionPage {
            chrome: Chrome::new(&session, Some(&ws), "retention", "Retention"),
            view,
            succeeded: form.get("succeeded_days").unwrap_or_default().to_owned(),
            failed: form.get("failed_days").unwrap_or_default().to_owned(),
            errors,
            notice: None,
        },
    )
}
