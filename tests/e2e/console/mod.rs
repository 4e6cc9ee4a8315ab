//! The web console in a real browser (headless Chromium), against a courier
//! running in this process over real RabbitMQ, on both ledgers, with real
//! receivers on 127.0.0.1: what a person does with webhooks (create, switch
//! off and on, test, delete, read their events, redeliver), what the form
//! refuses, what a session may see and do (its own workspace, CSRF, portal
//! links, read-only, the admin's picker, signing out), and the portal inside
//! an `<iframe>` of an allowed origin only.
//!
//! Every page visited is checked for console errors (failed requests
//! included). The pages a test expects to answer 4xx are logged by
//! Chromium as failed loads: those are checked to be exactly that and
//! cleared (`ConsoleBrowser::expect_refused`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::response::Html;
use axum::routing::get;
use courier_api::webhooks::{NewWebhook, UrlPolicy};
use courier_model::{Event, EventType, Subscription, SubscriptionStatus, WorkspaceId};
use courier_producer::Publisher;
use courier_tests::browser::Browser;
use courier_tests::console::{ConsoleBrowser, SESSION_COOKIE, WAIT, WebhookFields};
use courier_tests::{Behavior, Db, Receiver, TestEnv, verify_signature, wait_for};
use serde_json::{Value, json};

mod deliveries;
mod form;
mod framing;
mod replay;
mod retention;
mod sessions;
mod switching;

use deliveries::a_webhook_made_in_the_console_delivers_and_is_redelivered;
use form::the_form_shows_each_error_at_its_field_and_saves_nothing;
use replay::a_webhook_switched_on_again_sends_what_it_paused;
use retention::retention_is_read_and_set_in_the_console;
use sessions::sessions_see_their_own_workspace_and_portal_links_open_once;
use switching::a_webhook_is_switched_tested_and_deleted;

crate::on_both_databases!(
    a_webhook_made_in_the_console_delivers_and_is_redelivered,
    a_webhook_is_switched_tested_and_deleted,
    the_form_shows_each_error_at_its_field_and_saves_nothing,
    sessions_see_their_own_workspace_and_portal_links_open_once,
    a_webhook_switched_on_again_sends_what_it_paused,
    retention_is_read_and_set_in_the_console
);

const ADMIN_TOKEN: &str = "e2e-console-admin-token-0123456789abcdef";

/// The management API, for what the test checks besides the pages.
struct Api {
    http: reqwest::Client,
    addr: SocketAddr,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            addr,
        }
    }

    /// The event as the API shows it, once recorded (fanned out, matched or
    /// not).
    async fn wait_recorded(&self, ws: &str, key: &str, id: &str) -> Value {
        let url = format!("http://{}/v1/workspaces/{ws}/events/{id}", self.addr);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let response = self.http.get(&url).bearer_auth(key).send().await.unwrap();
            let status = response.status();
            if status == 200 {
                return response.json::<Value>().await.unwrap()["data"].clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "event {id} not recorded within {WAIT:?} (last answer {status})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /v1/workspaces/{ws}/portal-links`: the link's URL.
    async fn portal_link(&self, ws: &str, key: &str, body: Value) -> String {
        let response = self
            .http
            .post(format!(
                "http://{}/v1/workspaces/{ws}/portal-links",
                self.addr
            ))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let view: Value = response.json().await.unwrap();
        view["data"]["url"].as_str().unwrap().to_owned()
    }
}

/// Publishes one event through RabbitMQ (confirmed) and returns its id.
async fn publish(publisher: &Publisher, ws: &WorkspaceId, event_type: EventType) -> String {
    let event = Event::new(
        ws.clone(),
        event_type,
        None,
        json!({"order_id": format!("o-{}", next_order())}),
    )
    .unwrap();
    publisher.publish(&event).await.unwrap();
    event.id.to_string()
}

fn next_order() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A webhook made in the ledger before the worker starts (the console's
/// form is tested in its own scenarios).
async fn webhook(
    env: &TestEnv,
    ws: &WorkspaceId,
    name: &str,
    url: &str,
    events: &[&str],
) -> Subscription {
    courier_api::webhooks::create(
        &env.store,
        ws,
        NewWebhook {
            name: name.into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            channels: Vec::new(),
            secret: None,
            active: true,
            ..Default::default()
        },
        UrlPolicy {
            require_https: false,
        },
    )
    .await
    .unwrap()
}

async fn status_of(
    env: &TestEnv,
    ws: &WorkspaceId,
    hook: &Subscription,
) -> Option<SubscriptionStatus> {
    env.store
        .get_subscription(ws, hook.id)
        .await
        .unwrap()
        .map(|s| s.status)
}

async fn webhook_count(env: &TestEnv, ws: &WorkspaceId) -> usize {
    env.store
        .list_subscriptions(ws, 100, None)
        .await
        .unwrap()
        .len()
}

/// The Active switch in a webhook's row of the list.
fn switch_of(id: &str) -> String {
    format!(r#"tr[data-webhook="{id}"] button.switch"#)
}

/// The event ids of the events table's rows, in page order.
async fn events_listed(console: &ConsoleBrowser) -> Vec<String> {
    let mut ids = Vec::new();
    for row in console.find_all("#events tbody tr").await {
        ids.push(row.attr("data-event").await.expect("a row names its event"));
    }
    ids
}

async fn text(console: &ConsoleBrowser, css: &str) -> String {
    console.find(css).await.text().await.trim().to_owned()
}

async fn texts(console: &ConsoleBrowser, css: &str) -> Vec<String> {
    let mut all = Vec::new();
    for element in console.find_all(css).await {
        all.push(element.text().await.trim().to_owned());
    }
    all
}

/// After a form was sent: waits for the error page `title`, checks that
/// only its `status` was logged, and returns its message.
async fn console_refused(console: &ConsoleBrowser, status: u16, title: &str) -> String {
    console.wait_for_text("main h1", title, WAIT).await;
    console.expect_refused(status, title).await
}

/// `field`'s error says `message`, right under the field (`at`: the input,
/// or the fieldset it is in), and the field points to it.
async fn assert_field_error(console: &ConsoleBrowser, field: &str, at: &str, message: &str) {
    let error_id = format!("{field}-error");
    let error = console.find(&format!("#{error_id}")).await;
    let shown = error.text().await;
    assert!(shown.contains(message), "#{error_id} says {shown:?}");
    let placed = console
        .execute(
            "const error = document.getElementById(arguments[0]); \
             const at = document.querySelector(arguments[1]); \
             if (at.tagName === 'FIELDSET') return error.closest('fieldset') === at; \
             return at.nextElementSibling === error;",
            &[json!(error_id), json!(at)],
        )
        .await;
    assert_eq!(placed, Value::Bool(true), "#{error_id} is not at {at}");
    let described = console.find(at).await.attr("aria-describedby").await;
    assert_eq!(described.as_deref(), Some(error_id.as_str()), "{at}");
}

/// An HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A customer's app on its own origin that embeds a portal link: `GET
/// /embed?src=<link>`.
async fn serve_framer() -> SocketAddr {
    #[derive(serde::Deserialize)]
    struct Embed {
        src: String,
    }
    let routes = Router::new().route(
        "/embed",
        get(|Query(embed): Query<Embed>| async move {
            let src = embed.src.replace('&', "&amp;").replace('"', "&quot;");
            Html(format!(
                r#"<!doctype html><html><head><meta charset="utf-8"><title>App</title><link rel="icon" href="data:,"></head><body><h1>Embedding app</h1><iframe src="{src}" title="Webhooks" style="width: 100%; height: 600px"></iframe></body></html>"#
            ))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, routes).await });
    addr
}

fn embedding(framer: SocketAddr, link: &str) -> String {
    let mut url = reqwest::Url::parse(&format!("http://{framer}/embed")).unwrap();
    url.query_pairs_mut().append_pair("src", link);
    url.to_string()
}
