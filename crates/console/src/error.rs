//! What a page answers when it cannot show what was asked: sign in first,
//! not found (also another workspace's objects, exactly alike), refused,
//! or a failure, each as a small page that says what to do.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use courier_api::ApiError;
use courier_model::error_chain;
use courier_store::StoreError;

#[derive(Debug)]
pub enum PageError {
    /// No session, or it expired: to the sign-in page.
    SignIn,
    NotFound,
    /// A form without its session's CSRF token.
    Csrf,
    Forbidden(&'static str),
    BadRequest(&'static str),
    /// Refused by the API's rules; the message is the API's.
    Conflict(String),
    /// The broker is not there right now.
    Unavailable(String),
    Internal(String),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(_) => Self::NotFound,
            ApiError::Unauthorized(_) => Self::SignIn,
            ApiError::Unavailable(message) => Self::Unavailable(message),
            ApiError::Internal(source) => Self::Internal(error_chain(source.as_ref())),
            other => Self::Conflict(other.to_string()),
        }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound,
            other => Self::Internal(error_chain(&other)),
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        Self::Internal(format!("rendering a page: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message): (StatusCode, &str, String) = match &self {
            Self::SignIn => return Redirect::to("/console/sign-in").into_response(),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it is not yours to see.".into(),
            ),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was not sent from a page of your current session. Go back, reload \
                 the page and send it again."
                    .into(),
            ),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, "Not allowed", (*why).into()),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", (*why).into()),
            Self::Conflict(why) => (StatusCode::CONFLICT, "Not done", why.clone()),
            Self::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                why.clone(),
            ),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "courier could not show this page; the server log says why.".into(),
                )
            }
        };
        let page = ErrorPage {
            title,
            message: &message,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}
