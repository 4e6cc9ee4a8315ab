//! The one error type of the API and the JSON envelope every response uses:
//! `{"data": ..., "error": null}` or `{"data": null, "error": {"code",
//! "message", "field"?}}`. Internal failures are logged here and answered
//! with a bare "internal error": clients never see ledger or broker details.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_model::{EventError, MAX_EVENT_BYTES, ValidationError, error_chain};
use courier_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::webhooks::WebhookError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or credentials that are not valid for this route.
    #[error("{0}")]
    Unauthorized(String),
    /// Also what another workspace's resources look like.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Well-formed input that breaks a rule (422).
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// Input that is not what the route reads: bad JSON, unknown fields (400).
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {0} bytes this route accepts")]
    TooLarge(usize),
    /// A dependency (the broker) is missing or refused the work; retryable.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The error as clients see it.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let field = match self {
            Self::Invalid { field, .. } | Self::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        ErrorBody {
            code: code.to_owned(),
            message: self.to_string(),
            field,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e.field, e.message)
    }
}

/// An event built from a request that the model refused. The route checked
/// everything else already, so what is left is about its data.
impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        match e {
            EventError::TooLarge { .. } => Self::TooLarge(MAX_EVENT_BYTES),
            other => Self::invalid("data", other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => Self::NotFound(what),
            StoreError::Conflict { what } => Self::Conflict(format!("{what} already exists")),
            other => Self::internal(other),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(v) => v.into(),
            WebhookError::NotFound(what) => Self::NotFound(what),
            WebhookError::Store(s) => s.into(),
        }
    }
}

/// `error` of the envelope.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What kind of error, one per status: `bad_request` (400),
    /// `unauthorized` (401), `not_found` (404), `conflict` (409),
    /// `payload_too_large` (413), `invalid` (422), `internal` (500) or
    /// `unavailable` (503).
    #[schema(schema_with = error_code)]
    pub code: String,
    /// What went wrong and, where it helps, what to do about it.
    pub message: String,
    /// The offending field, as named in the request, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn error_code() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some([
            "bad_request",
            "unauthorized",
            "not_found",
            "conflict",
            "payload_too_large",
            "invalid",
            "internal",
            "unavailable",
        ]))
        .into()
}

/// JSON `null`: the half of the envelope a response does not use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Null;

impl Serialize for Null {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

/// The body of every successful response: `data` holds the answer and
/// `error` is null.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    pub data: T,
    /// Always null.
    #[schema(schema_with = crate::openapi::null)]
    pub error: Null,
}

impl<T: Serialize> Envelope<T> {
    pub fn ok(data: T) -> Json<Self> {
        Json(Self { data, error: Null })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if let Self::Internal(source) = &self {
            tracing::error!(error = %error_chain(source.as_ref()), "management API request failed");
        }
        let body = ErrorEnvelope {
            data: Null,
            error: self.body(),
        };
        (status, Json(body)).into_response()
    }
}

/// The body of every error response: `data` is null and `error` says what
/// went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always null.
    #[schema(schema_with = crate::openapi::null)]
    pub data: Null,
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's list of codes is the one `status_and_code` answers.
    #[test]
    fn every_code_is_documented() {
        let schema = serde_json::to_value(error_code()).unwrap();
        let documented = schema["enum"].as_array().unwrap();
        let errors = [
            ApiError::Unauthorized(String::new()),
            ApiError::NotFound("x"),
            ApiError::invalid("f", "m"),
            ApiError::BadRequest {
                field: None,
                message: String::new(),
            },
            ApiError::Conflict(String::new()),
            ApiError::TooLarge(1),
            ApiError::Unavailable(String::new()),
            ApiError::internal(std::io::Error::other("x")),
        ];
        assert_eq!(documented.len(), errors.len());
        for error in errors {
            let (_, code) = error.status_and_code();
            assert!(documented.iter().any(|c| c == code), "{code}");
        }
    }
}
