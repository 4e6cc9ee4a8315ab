//! courier's web console and customer portal: server-rendered pages under
//! `/console` for the people who wire their shop, ERP or warehouse to order
//! and shipment events. A person signs in with a workspace API key, with a
//! single-use portal link an operator made for them, or with the operator's
//! admin token (which opens a workspace picker).
//!
//! What it owns: sessions and their cookies, CSRF tokens, the pages and
//! their forms, and the security headers of every response. What it must not
//! do: its own SQL about webhooks or deliveries, or HTTP calls to the API.
//! Every read and change goes through the management API's
//! [`courier_api::service::Service`], so the console, REST and GraphQL agree
//! on every rule and every change reaches the workers the same way. The
//! ledger is touched directly only for the console's own records (sessions,
//! portal links), through `courier-store`.
//!
//! Pages work without JavaScript: forms post, links navigate. The one small
//! script (copy buttons, a confirmation prompt) and the stylesheet are part
//! of this crate and served by courier; nothing is fetched from elsewhere,
//! and the Content-Security-Policy allows nothing else.

mod assets;
mod chart;
mod error;
mod form;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post};
use courier_api::ApiState;

pub use error::PageError;

/// Where the console lives under the server's root.
pub const BASE: &str = "/console";

/// What a deployment decides about the console (`console.*` settings).
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// Origins allowed to show the console in an `<iframe>`
    /// (`console.frame_ancestors`), e.g. `https://app.example.com`. Empty:
    /// nowhere.
    pub frame_ancestors: Vec<String>,
    /// How long a session lasts after sign-in (`console.session_ttl`).
    pub session_ttl: chrono::Duration,
    /// Mark cookies `Secure`: the console is reached over https
    /// (`console.public_url` starts with `https://`).
    pub secure_cookies: bool,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            frame_ancestors: Vec::new(),
            session_ttl: chrono::Duration::hours(8),
            secure_cookies: false,
        }
    }
}

/// What every console handler shares. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    api: ApiState,
    options: Arc<ConsoleOptions>,
    /// The Content-Security-Policy of every response, built once.
    csp: HeaderValue,
}

impl Console {
    pub(crate) fn api(&self) -> &ApiState {
        &self.api
    }

    pub(crate) fn options(&self) -> &ConsoleOptions {
        &self.options
    }
}

/// The console's routes, all under [`BASE`].
pub fn router(api: ApiState, options: ConsoleOptions) -> Router {
    let csp = content_security_policy(&options.frame_ancestors);
    let state = Console {
        api,
        options: Arc::new(options),
        csp,
    };
    let framed = !state.options.frame_ancestors.is_empty();
    let csp = state.csp.clone();
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            "/console/sign-in",
            get(pages::sign_in_page).post(pages::sign_in),
        )
        .route("/console/sign-out", post(pages::sign_out))
        .route("/console/portal/{token}", get(pages::redeem_portal_link))
        .route("/console/workspaces", get(pages::workspaces))
        .route("/console/w/{ws}", get(pages::overview))
        .route("/console/w/{ws}/event-types", get(pages::catalogue))
        .route(
            "/console/w/{ws}/retention",
            get(pages::retention).post(pages::set_retention),
        )
        .route(
            "/console/w/{ws}/portal-links",
            post(pages::create_portal_link),
        )
        .route(
            "/console/w/{ws}/webhooks",
            get(pages::webhooks).post(pages::create_webhook),
        )
        .route("/console/w/{ws}/webhooks/new", get(pages::new_webhook))
        .route(
            "/console/w/{ws}/webhooks/{id}",
            get(pages::edit_webhook).post(pages::update_webhook),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/active",
            post(pages::set_active),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/rotate-secret",
            post(pages::rotate_secret),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/test",
            post(pages::test_webhook),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/delete",
            get(pages::confirm_delete).post(pages::delete_webhook),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/events",
            get(pages::webhook_events),
        )
        .route(
            "/console/w/{ws}/webhooks/{id}/recover",
            post(pages::recover),
        )
        .route("/console/w/{ws}/deliveries/{id}", get(pages::delivery))
        .route(
            "/console/w/{ws}/deliveries/{id}/redeliver",
            post(pages::redeliver),
        )
        .route("/console/static/{file}", get(assets::serve))
        .route("/console/{*rest}", get(|| async { PageError::NotFound }))
        .layer(axum::extract::DefaultBodyLimit::max(form::MAX_FORM_BYTES))
        .with_state(state)
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let csp = csp.clone();
                async move {
                    security_headers(response.headers_mut(), csp, framed);
                    response
                }
            },
        ))
}

/// Scripts, styles and images from courier itself only; no inline script
/// or style; forms post only here; framed only by the listed origins.
fn content_security_policy(frame_ancestors: &[String]) -> HeaderValue {
    let ancestors = if frame_ancestors.is_empty() {
        "'none'".to_owned()
    } else {
        frame_ancestors.join(" ")
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; \
         frame-ancestors {ancestors}"
    );
    HeaderValue::from_str(&policy).expect("origins are validated when settings load")
}

fn security_headers(headers: &mut axum::http::HeaderMap, csp: HeaderValue, framed: bool) {
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A portal link's token is in its URL: never pass it on.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !framed {
        // For browsers that predate frame-ancestors.
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// Whether `origin` can be listed in `console.frame_ancestors`: a scheme
/// and host (and port), nothing else.
pub fn check_frame_ancestor(origin: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{origin:?} is not an origin ({why}); write it as https://host or https://host:port"
        ))
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("no scheme");
    };
    if scheme != "https" && scheme != "http" {
        return bad("the scheme must be http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', ';', ',', '\'', '"']) {
        return bad("nothing may follow the host and port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_are_origins() {
        assert!(check_frame_ancestor("https://app.example.com").is_ok());
        assert!(check_frame_ancestor("http://127.0.0.1:8080").is_ok());
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a.example.com; script-src *",
            "javascript://x",
            "https://",
        ] {
            assert!(check_frame_ancestor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_frames_nowhere_unless_told() {
        let none = content_security_policy(&[]);
        assert!(none.to_str().unwrap().ends_with("frame-ancestors 'none'"));
        let some = content_security_policy(&["https://a.example.com".into()]);
        assert!(
            some.to_str()
                .unwrap()
                .ends_with("frame-ancestors https://a.example.com")
        );
    }
}
