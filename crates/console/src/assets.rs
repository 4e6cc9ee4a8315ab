//! The console's stylesheet, script and icon, compiled into the binary and
//! served by courier: nothing comes from a CDN, nothing needs building.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::PageError;

const CSS: &str = include_str!("../static/console.css");
const JS: &str = include_str!("../static/console.js");
const ICON: &str = include_str!("../static/icon.svg");

pub(crate) async fn serve(Path(file): Path<String>) -> Result<Response, PageError> {
    let (body, content_type) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => return Err(PageError::NotFound),
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The files change only with the binary.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response())
}
