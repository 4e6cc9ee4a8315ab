//! The GraphQL explorer: GraphiQL in a browser at `GET /graphql`, its files
//! at `/graphql/explorer/{file}`, served only when `api.graphql_explorer` is
//! on. Every file is compiled into the binary from `static/graphql/` (whose
//! README says which npm packages the vendored ones come from): nothing is
//! fetched from a CDN, and the Content-Security-Policy lets the page load
//! nothing but these files and talk to nothing but this server.
//!
//! The page has no inline script; `explorer.js` starts GraphiQL and asks the
//! user for the API key in GraphiQL's Headers tab, so the key travels in an
//! `Authorization` header like any other client's, never in a URL.

use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// What the explorer's page may do, and the whole of it:
/// - scripts from courier only: no inline script, no eval (GraphiQL 4's
///   UMD bundle and React 18 need neither);
/// - stylesheets from courier, and one inline `<style>` by its hash: the
///   one GraphiQL's dialogs (settings, shortcuts) add to stop the page
///   behind them scrolling (react-remove-scroll-bar). Its text depends only
///   on the page's scrollbar width and body margins, which `explorer.css`
///   pins to 0. Refused, nothing visible changes, but the browser's console
///   reports a violation each time a dialog opens;
/// - fonts and images as `data:` URLs only, which is how GraphiQL's
///   stylesheet embeds its fonts and icons;
/// - requests to courier only (the POSTs to `/graphql`);
/// - no framing, no forms, no `<base>`.
///
/// A new GraphiQL version may change that style's text: the browser's
/// console then names the new hash (static/graphql/README.md).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'sha256-nzTgYzXYDNe6BAHiiI7NNlfK8n/auuOAhh2t92YvuXo='; \
     font-src data:; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("../../static/graphql/explorer.html");

/// The files under `/graphql/explorer/`: name, content type, body.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "explorer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/graphql/explorer.js"),
    ),
    (
        "explorer.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/graphql/explorer.css"),
    ),
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/graphql/vendor/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/graphql/vendor/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/graphql/vendor/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/graphql/vendor/react-dom.production.min.js"),
    ),
    (
        "licenses.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../static/graphql/vendor/LICENSES.txt"),
    ),
];

/// `GET /graphql`: the page. Revalidated on every visit, so a new courier
/// version's page is seen at once.
pub(super) async fn page() -> Response {
    respond("text/html; charset=utf-8", "no-cache", PAGE.as_bytes())
}

/// `GET /graphql/explorer/{file}`. The files change only with the binary.
pub(super) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => respond(content_type, "public, max-age=3600", body),
        None => ApiError::NotFound("route").into_response(),
    }
}

fn respond(content_type: &'static str, cache: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // For browsers that predate frame-ancestors.
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}
