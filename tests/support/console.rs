//! Driving courier's web console (`/console`) in a real browser: a
//! [`Browser`] that knows the console's address, signs in, fills the
//! webhook form, reads the events table, and checks after each page that the
//! browser logged nothing unexpected.
//!
//! Console errors: every page a test visits must leave no error in the
//! browser's log. A page the test expects to answer 4xx (another tenant's
//! page, a refused form) is logged by Chromium as a failed resource load:
//! [`ConsoleBrowser::expect_refused`] checks that exactly that was logged,
//! then clears the log, so that anything else still fails the test.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::Browser;

/// How long a page or a delivery may take on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "courier_session";

/// A browser pointed at one courier's console.
pub struct ConsoleBrowser {
    browser: Browser,
    /// `http://127.0.0.1:<port>`, no trailing slash.
    base: String,
}

impl Deref for ConsoleBrowser {
    type Target = Browser;

    fn deref(&self) -> &Browser {
        &self.browser
    }
}

/// What a webhook form gets typed into it.
#[derive(Clone, Debug, Default)]
pub struct WebhookFields<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub events: &'a [&'a str],
    /// `None`: all channels; `Some(text)`: "only these channels" with `text`.
    pub channels: Option<&'a str>,
    pub secret: Option<&'a str>,
}

/// One row of a webhook's events table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    pub delivery: String,
    pub event: String,
    pub status: String,
    pub response: String,
    pub attempts: u32,
}

impl ConsoleBrowser {
    /// A fresh headless Chromium for the console of the courier at `addr`.
    pub async fn start(addr: SocketAddr) -> Self {
        Self {
            browser: Browser::start().await,
            base: format!("http://{addr}"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The absolute URL of `path` (`/console/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Opens `path` and checks that the page logged no error.
    pub async fn open(&self, path: &str) {
        self.goto(&self.url(path)).await;
        self.assert_no_console_errors().await;
    }

    /// Opens `path`, which the test expects to be refused with `status`
    /// and the error page titled `title`; returns the page's message.
    pub async fn open_refused(&self, path: &str, status: u16, title: &str) -> String {
        self.goto(&self.url(path)).await;
        self.expect_refused(status, title).await
    }

    /// The current page is the console's error page `title`, and the only
    /// errors logged since the last check are the browser's report of the
    /// page's `status` (Chromium logs every 4xx document as a failed
    /// resource load). Clears the log and returns the page's message.
    pub async fn expect_refused(&self, status: u16, title: &str) -> String {
        let heading = self.wait_for("main h1", WAIT).await.text().await;
        assert_eq!(
            heading,
            title,
            "the error page on {}",
            self.current_url().await
        );
        let message = self.find("#error-message").await.text().await;
        self.expect_failed_load(status).await;
        message
    }

    /// The only errors logged since the last check are the browser's report
    /// of the current page's `status`; clears the log. For pages the test
    /// expects to answer 4xx.
    pub async fn expect_failed_load(&self, status: u16) {
        let url = self.current_url().await;
        let errors = self.console_errors().await;
        let report = format!("the server responded with a status of {status}");
        assert!(
            !errors.is_empty() && errors.iter().all(|e| e.message.contains(&report)),
            "expected only Chromium's report of {status} for {url}, got: {errors:#?}"
        );
        self.clear_log().await;
    }

    /// Clicks `css` and waits until another document has replaced this
    /// one: a form posted back to its own URL shows elements of the same ids,
    /// so waiting for those could read the old page.
    pub async fn click_to_next_page(&self, css: &str) {
        self.execute("window.courierTestOldPage = true;", &[]).await;
        self.find(css).await.click().await;
        let deadline = Instant::now() + WAIT;
        while self
            .execute("return window.courierTestOldPage === true;", &[])
            .await
            == Value::Bool(true)
        {
            assert!(
                Instant::now() < deadline,
                "clicking `{css}` on {} led to no new page within {WAIT:?}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the current URL contains `needle`: after a click that
    /// navigates, before reading the new page (the old one may still be
    /// there, with the same elements).
    pub async fn wait_for_url(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if url.contains(needle) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for a URL with {needle:?}; still on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in with an API key or the admin token and waits for the page
    /// after it: `landing` is an element only that page has.
    pub async fn sign_in(&self, credential: &str, landing: &str) {
        self.open("/console/sign-in").await;
        self.find("#key").await.send_keys(credential).await;
        self.find("#sign-in").await.click().await;
        self.wait_for(landing, WAIT).await;
        self.assert_no_console_errors().await;
    }

    /// Fills the webhook form on the current page with `fields` (unticking
    /// every event and clearing every box first), clicks its button and
    /// waits for the page it answers with.
    pub async fn submit_webhook_form(&self, fields: &WebhookFields<'_>) {
        for (css, text) in [("#name", fields.name), ("#url", fields.url)] {
            let input = self.find(css).await;
            input.clear().await;
            if !text.is_empty() {
                input.send_keys(text).await;
            }
        }
        for checkbox in self.find_all("input[name=events]").await {
            let value = checkbox.attr("value").await.unwrap_or_default();
            if checkbox.is_selected().await != fields.events.contains(&value.as_str()) {
                checkbox.click().await;
            }
        }
        let channels = self.find("#channels").await;
        channels.clear().await;
        match fields.channels {
            None => self.find("#channels-all").await.click().await,
            Some(text) => {
                self.find("#channels-some").await.click().await;
                if !text.is_empty() {
                    channels.send_keys(text).await;
                }
            }
        }
        if let Some(secret_box) = self.try_find("#secret").await {
            secret_box.clear().await;
            if let Some(secret) = fields.secret {
                secret_box.send_keys(secret).await;
            }
        }
        self.click_to_next_page("#save").await;
    }

    /// The selector of an event type's checkbox (its id has a dot).
    pub fn event_checkbox(event_type: &str) -> String {
        format!(r#"input[id="event-{event_type}"]"#)
    }

    /// Creates a webhook through the form (from the webhook list) and
    /// returns its id and the secret shown once.
    pub async fn create_webhook(&self, ws: &str, fields: &WebhookFields<'_>) -> (String, String) {
        self.open(&format!("/console/w/{ws}/webhooks")).await;
        self.find("#new-webhook").await.click().await;
        self.wait_for("#webhook-form", WAIT).await;
        self.assert_no_console_errors().await;
        assert!(
            self.find("#active").await.is_selected().await,
            "a new webhook is active by default"
        );
        assert!(self.find("#channels-all").await.is_selected().await);
        self.submit_webhook_form(fields).await;
        let secret = self.wait_for("input#secret[readonly]", WAIT).await;
        let secret = secret
            .prop("value")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(secret.starts_with("whsec_"), "the secret shown: {secret:?}");
        let link = self.find("#to-webhook").await.attr("href").await.unwrap();
        let id = link.rsplit('/').next().unwrap().to_owned();
        self.assert_no_console_errors().await;
        (id, secret)
    }

    /// The events table's row of `event_id`, if the page shows it.
    pub async fn event_row(&self, event_id: &str) -> Option<EventRow> {
        let row = self
            .try_find(&format!(r#"#events tr[data-event="{event_id}"]"#))
            .await?;
        let cell = |css: &'static str| {
            let row = &row;
            async move { row.find(css).await.text().await.trim().to_owned() }
        };
        Some(EventRow {
            delivery: row.attr("data-delivery").await.unwrap_or_default(),
            event: event_id.to_owned(),
            status: cell(".status").await,
            response: cell(".response").await,
            attempts: cell(".attempts")
                .await
                .parse()
                .expect("attempts is a number"),
        })
    }

    /// Reloads the page until `done` holds (a page does not update itself),
    /// checking each reload for console errors; panics after `timeout`
    /// with `what` and the last thing `done` saw.
    pub async fn refresh_until<T, F, Fut>(&self, what: &str, timeout: Duration, mut done: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_no_console_errors().await;
            let last = match done().await {
                Ok(value) => return value,
                Err(last) => last,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} on {} waiting for {what}; last seen: {last}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.refresh().await;
        }
    }

    /// The value of the session cookie the browser holds, if any (read on a
    /// `/console` page: the cookie's path).
    pub async fn session_cookie(&self) -> Option<String> {
        self.cookies()
            .await
            .into_iter()
            .find(|c| c["name"] == SESSION_COOKIE)
            .and_then(|c| c["value"].as_str().map(str::to_owned))
    }

    /// Submits the form on the page whose `action` ends with `action`, as a
    /// script would: no button needed, every field it has sent.
    pub async fn submit_form(&self, action: &str) {
        let found = self
            .execute(
                "for (const f of document.forms) { \
                   if (f.getAttribute('action').endsWith(arguments[0])) { f.submit(); return true; } \
                 } return false;",
                &[json!(action)],
            )
            .await;
        assert_eq!(found, Value::Bool(true), "no form posts to …{action}");
    }

    /// Posts a form the page does not have to `action`, with the session's
    /// CSRF token (read from the page's sign-out form) and `fields`.
    pub async fn forge_post(&self, action: &str, fields: &[(&str, &str)]) {
        let fields: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
        self.execute(
            "const f = document.createElement('form'); \
             f.method = 'post'; f.action = arguments[0]; \
             const fields = [['csrf', document.querySelector('input[name=csrf]').value]].concat(arguments[1]); \
             for (const [name, value] of fields) { \
               const i = document.createElement('input'); i.type = 'hidden'; \
               i.name = name; i.value = value; f.appendChild(i); \
             } \
             document.body.appendChild(f); f.submit();",
            &[json!(action), Value::Array(fields)],
        )
        .await;
    }
}
