//! A small WebDriver (W3C) client for browser tests: headless Chromium driven
//! by chromedriver (Debian's `chromium` and `chromium-driver`, which
//! tests/tools.sh installs), everything on 127.0.0.1.
//!
//! Each [`Browser`] has a chromedriver of its own on a free port, one session
//! and a fresh profile directory; dropping it ends all three, also after a
//! panic. Its helpers panic with the page's URL and the selector, as test
//! helpers should. Nothing waits implicitly (the session's implicit wait is
//! 0): `wait_for*` poll with a deadline.
//!
//! Console messages: a session that asks for `goog:loggingPrefs: {"browser":
//! "ALL"}` has chromedriver keep what the page logged (console API calls,
//! failed resource loads such as 404s, Content-Security-Policy violations)
//! and hand each entry out once through `POST /session/{id}/se/log
//! {"type": "browser"}`, which chromedriver still serves in W3C mode. The
//! `Browser` keeps every entry it has read, so [`Browser::browser_log`]
//! returns everything since the start (or since [`Browser::clear_log`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngExt;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium's flags besides `--user-data-dir`. The machine has no network
/// beyond the loopback: these also keep Chromium from reaching for it
/// (component updates, sync, QUIC probes, first-run pings).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    // Tests run as root, where Chromium refuses to start sandboxed.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

/// The JSON key W3C gives an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Generous: two cores shared by tests running in parallel.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// One entry of the browser's console log.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG` as chromedriver names them.
    pub level: String,
    pub message: String,
    /// Where it came from: `console-api`, `network`, `security`, ...
    #[serde(default)]
    pub source: String,
}

impl LogEntry {
    /// An error: `console.error`, a failed load, a CSP violation.
    pub fn is_error(&self) -> bool {
        matches!(self.level.as_str(), "SEVERE" | "ERROR")
    }
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} {}] {}", self.level, self.source, self.message)
    }
}

/// A browser session; the browser, its driver and its profile go on drop.
pub struct Browser {
    /// `http://127.0.0.1:<port>/session/<id>`, every command's prefix.
    session: String,
    http: reqwest::Client,
    /// Every console entry read so far: chromedriver hands each out once.
    log: Mutex<Vec<LogEntry>>,
    /// Only held: it goes after the session is deleted (fields drop after
    /// `drop`).
    _driver: Driver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (about a second).
    pub async fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run tests/tools.sh (it installs chromium and chromium-driver)"
            );
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("HTTP client");
        let driver = Driver::start(&http).await;
        let profile = driver.dir.join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = send(
            &http,
            Method::POST,
            &format!("{}/session", driver.url),
            capabilities,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "browser: creating a Chromium session failed: {e}\nchromedriver's log ends with:\n{}",
                driver.log_tail()
            )
        });
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("browser: a new session without an id: {created}"));
        let browser = Self {
            session: format!("{}/session/{id}", driver.url),
            http,
            log: Mutex::new(Vec::new()),
            _driver: driver,
        };
        browser
            .run(
                Method::POST,
                "/timeouts",
                json!({"implicit": 0, "pageLoad": 30_000, "script": 30_000}),
                "set timeouts",
            )
            .await;
        browser
    }

    /// Navigates and waits for the page's load event.
    pub async fn goto(&self, url: &str) {
        self.run(
            Method::POST,
            "/url",
            json!({"url": url}),
            &format!("go to {url}"),
        )
        .await;
    }

    pub async fn current_url(&self) -> String {
        string(
            self.run(Method::GET, "/url", Value::Null, "read the URL")
                .await,
        )
    }

    pub async fn title(&self) -> String {
        string(
            self.run(Method::GET, "/title", Value::Null, "read the title")
                .await,
        )
    }

    pub async fn page_source(&self) -> String {
        string(
            self.run(Method::GET, "/source", Value::Null, "read the source")
                .await,
        )
    }

    pub async fn back(&self) {
        self.run(Method::POST, "/back", json!({}), "go back").await;
    }

    pub async fn refresh(&self) {
        self.run(Method::POST, "/refresh", json!({}), "refresh")
            .await;
    }

    /// The first element matching `css`; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        match self.try_find(css).await {
            Some(element) => element,
            None => panic!(
                "{}",
                self.failure(&format!("find `{css}`"), "no match").await
            ),
        }
    }

    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        self.locate("", css, css).await
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.locate_all("", css, css).await
    }

    /// Polls until an element matches `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(element) = self.try_find(css).await {
                return element;
            }
            if Instant::now() >= deadline {
                let what = format!("wait {timeout:?} for `{css}`");
                panic!("{}", self.failure(&what, "no match").await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until an element matching `css` has a text containing `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no element matched");
        loop {
            if let Some(element) = self.try_find(css).await {
                // The page may replace the element between finding and
                // reading it: that is "not yet", not a failure.
                match element.call(Method::GET, "text", Value::Null).await {
                    Ok(Value::String(text)) if text.contains(needle) => return element,
                    Ok(text) => last = format!("its text was {text}"),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                let what = format!("wait {timeout:?} for `{css}` to show {needle:?}");
                panic!("{}", self.failure(&what, last).await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `script` as a function body with `arguments` = `args`; elements
    /// go in as [`Element::as_arg`].
    pub async fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.run(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
            &format!("execute {script:?}"),
        )
        .await
    }

    /// The viewport as a PNG.
    pub async fn screenshot_png(&self) -> Vec<u8> {
        let encoded = string(
            self.run(Method::GET, "/screenshot", Value::Null, "take a screenshot")
                .await,
        );
        STANDARD
            .decode(encoded)
            .expect("a screenshot is base64-encoded")
    }

    /// The window's outer size. Headless Chromium keeps a top bar: the
    /// viewport (and a screenshot) is as wide but shorter, 1280x757 for
    /// 1280x900 with Chromium 156; read `window.innerHeight` when it matters.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.run(
            Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
            &format!("resize the window to {width}x{height}"),
        )
        .await;
    }

    /// The current page's cookies as W3C serializes them (`name`, `value`,
    /// `httpOnly`, `sameSite`, `secure`, `path`, `domain`, `expiry`).
    pub async fn cookies(&self) -> Vec<Value> {
        match self
            .run(Method::GET, "/cookie", Value::Null, "read cookies")
            .await
        {
            Value::Array(cookies) => cookies,
            other => panic!("browser: cookies are not a list: {other}"),
        }
    }

    /// Adds a cookie to the current page's domain (`{"name", "value", ...}`).
    pub async fn add_cookie(&self, cookie: Value) {
        let what = format!("add cookie {cookie}");
        self.run(Method::POST, "/cookie", json!({"cookie": cookie}), &what)
            .await;
    }

    pub async fn delete_cookies(&self) {
        self.run(Method::DELETE, "/cookie", Value::Null, "delete cookies")
            .await;
    }

    /// Accepts the open alert, confirm or prompt and returns its text;
    /// `None` when none is open.
    pub async fn accept_alert(&self) -> Option<String> {
        self.answer_alert("accept").await
    }

    /// Dismisses the open alert, confirm or prompt and returns its text;
    /// `None` when none is open.
    pub async fn dismiss_alert(&self) -> Option<String> {
        self.answer_alert("dismiss").await
    }

    async fn answer_alert(&self, action: &str) -> Option<String> {
        let text = match self.call(Method::GET, "/alert/text", Value::Null).await {
            Ok(text) => string(text),
            Err(e) if e.error == "no such alert" => return None,
            Err(e) => panic!("{}", self.failure("read the alert", e).await),
        };
        let what = format!("{action} the alert {text:?}");
        self.run(Method::POST, &format!("/alert/{action}"), json!({}), &what)
            .await;
        Some(text)
    }

    /// Commands go to `frame` (an `<iframe>` element) until
    /// [`Browser::switch_to_parent`].
    pub async fn switch_to_frame(&self, frame: &Element<'_>) {
        let what = format!("switch to frame `{}`", frame.selector);
        self.run(Method::POST, "/frame", json!({"id": frame.as_arg()}), &what)
            .await;
    }

    pub async fn switch_to_parent(&self) {
        self.run(
            Method::POST,
            "/frame/parent",
            json!({}),
            "switch to the parent frame",
        )
        .await;
    }

    /// Every console entry since the start or [`Browser::clear_log`], oldest
    /// first, across pages.
    pub async fn browser_log(&self) -> Vec<LogEntry> {
        let fresh = self
            .run(
                Method::POST,
                "/se/log",
                json!({"type": "browser"}),
                "read the browser log",
            )
            .await;
        let fresh: Vec<LogEntry> = serde_json::from_value(fresh.clone()).unwrap_or_else(|e| {
            panic!("browser: a log that is not a list of entries ({e}): {fresh}")
        });
        let mut log = self.log.lock().unwrap();
        log.extend(fresh);
        log.clone()
    }

    /// Forgets the entries logged so far.
    pub async fn clear_log(&self) {
        self.browser_log().await;
        self.log.lock().unwrap().clear();
    }

    /// Polls the log until an entry's message contains `needle`. Use it for
    /// what is logged after the load event (late requests, timers).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> LogEntry {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.browser_log().await;
            if let Some(entry) = log.iter().find(|e| e.message.contains(needle)) {
                return entry.clone();
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = log.iter().map(|e| format!("  {e}")).collect();
                let what = format!("wait {timeout:?} for a log entry with {needle:?}");
                let why = format!("the log holds:\n{}", seen.join("\n"));
                panic!("{}", self.failure(&what, why).await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The log's errors (see [`LogEntry::is_error`]).
    pub async fn console_errors(&self) -> Vec<LogEntry> {
        let log = self.browser_log().await;
        log.into_iter().filter(LogEntry::is_error).collect()
    }

    /// Panics listing every error the console has logged. Chromium asks
    /// each page for /favicon.ico: a 404 there is an error too, so pages
    /// under test serve one or declare one (`<link rel="icon" href="data:,">`).
    pub async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        if !errors.is_empty() {
            let listed: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            let url = self.current_url().await;
            panic!(
                "browser: {} console error(s), now on {url}:\n{}",
                errors.len(),
                listed.join("\n")
            );
        }
    }

    async fn locate(&self, scope: &str, css: &str, selector: &str) -> Option<Element<'_>> {
        let query = json!({"using": "css selector", "value": css});
        match self
            .call(Method::POST, &format!("{scope}/element"), query)
            .await
        {
            Ok(found) => Some(self.element(&found, selector)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("{}", self.failure(&format!("find `{selector}`"), e).await),
        }
    }

    async fn locate_all(&self, scope: &str, css: &str, selector: &str) -> Vec<Element<'_>> {
        let query = json!({"using": "css selector", "value": css});
        let what = format!("find all `{selector}`");
        match self
            .run(Method::POST, &format!("{scope}/elements"), query, &what)
            .await
        {
            Value::Array(found) => found.iter().map(|f| self.element(f, selector)).collect(),
            other => panic!("browser: {what}: not a list: {other}"),
        }
    }

    fn element(&self, found: &Value, selector: &str) -> Element<'_> {
        let id = found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("browser: not an element reference: {found}"));
        Element {
            browser: self,
            id: id.to_owned(),
            selector: selector.to_owned(),
        }
    }

    /// `path` under the session, panicking with `what` and the URL.
    async fn run(&self, method: Method, path: &str, body: Value, what: &str) -> Value {
        match self.call(method, path, body).await {
            Ok(value) => value,
            Err(e) => panic!("{}", self.failure(what, e).await),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Result<Value, WebDriverError> {
        send(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    /// The panic message for `what` failing: with the page's URL.
    async fn failure(&self, what: &str, error: impl fmt::Display) -> String {
        let url = match self.call(Method::GET, "/url", Value::Null).await {
            Ok(Value::String(url)) => url,
            _ => "an unknown URL".into(),
        };
        format!("browser: {what} on {url}: {error}")
    }
}

impl Drop for Browser {
    /// Deletes the session, which closes Chromium, before the driver goes.
    /// On a thread and runtime of its own (with a client of its own: the
    /// test's may belong to a runtime this thread blocks), so it works
    /// inside or outside a runtime and after a panic.
    fn drop(&mut self) {
        let session = self.session.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                if let Ok(http) = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(15))
                    .build()
                {
                    http.delete(session).send().await.ok();
                }
            });
        })
        .join()
        .ok();
    }
}

/// An element of the page (or of the frame switched to) found by a selector.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
    /// For messages: how it was found.
    selector: String,
}

impl Element<'_> {
    pub async fn click(&self) {
        self.run(Method::POST, "click", json!({}), "click").await;
    }

    /// Types `text` (focusing the element first).
    pub async fn send_keys(&self, text: &str) {
        let what = format!("type {text:?} into");
        self.run(Method::POST, "value", json!({"text": text}), &what)
            .await;
    }

    pub async fn clear(&self) {
        self.run(Method::POST, "clear", json!({}), "clear").await;
    }

    /// The rendered text, as a person sees it.
    pub async fn text(&self) -> String {
        string(
            self.run(Method::GET, "text", Value::Null, "read the text of")
                .await,
        )
    }

    /// The HTML attribute `name`, as written in the markup.
    pub async fn attr(&self, name: &str) -> Option<String> {
        let what = format!("read attribute {name} of");
        let value = self
            .run(
                Method::GET,
                &format!("attribute/{name}"),
                Value::Null,
                &what,
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// The DOM property `name`, as it is now (`value`, `checked`, ...).
    pub async fn prop(&self, name: &str) -> Value {
        let what = format!("read property {name} of");
        self.run(Method::GET, &format!("property/{name}"), Value::Null, &what)
            .await
    }

    /// Whether a checkbox, radio button or option is checked/selected.
    pub async fn is_selected(&self) -> bool {
        let what = "read whether selected";
        bool(self.run(Method::GET, "selected", Value::Null, what).await)
    }

    pub async fn is_displayed(&self) -> bool {
        let what = "read whether displayed";
        bool(self.run(Method::GET, "displayed", Value::Null, what).await)
    }

    /// The first descendant matching `css`; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        match self.try_find(css).await {
            Some(element) => element,
            None => {
                let what = format!("find `{} {css}`", self.selector);
                panic!("{}", self.browser.failure(&what, "no match").await)
            }
        }
    }

    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let selector = format!("{} {css}", self.selector);
        self.browser.locate(&self.scope(), css, &selector).await
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let selector = format!("{} {css}", self.selector);
        self.browser.locate_all(&self.scope(), css, &selector).await
    }

    /// This element as an argument of [`Browser::execute`].
    pub fn as_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    fn scope(&self) -> String {
        format!("/element/{}", self.id)
    }

    async fn run(&self, method: Method, path: &str, body: Value, what: &str) -> Value {
        match self.call(method, path, body).await {
            Ok(value) => value,
            Err(e) => {
                let what = format!("{what} `{}`", self.selector);
                panic!("{}", self.browser.failure(&what, e).await)
            }
        }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Result<Value, WebDriverError> {
        let path = format!("{}/{path}", self.scope());
        self.browser.call(method, &path, body).await
    }
}

/// chromedriver on a free port of 127.0.0.1 with a temporary directory for
/// the profile and its log; killed and removed on drop.
struct Driver {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    url: String,
    dir: PathBuf,
}

impl Driver {
    async fn start(http: &reqwest::Client) -> Self {
        // A port found free may be taken before chromedriver binds it: then
        // chromedriver exits and another port is tried.
        for _ in 0..5 {
            let mut driver = Self::spawn();
            if driver.wait_ready(http).await {
                return driver;
            }
        }
        panic!("browser: chromedriver did not become ready (5 tries)");
    }

    fn spawn() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "courier-browser-{}-{:016x}",
            std::process::id(),
            rand::rng().random::<u64>()
        ));
        std::fs::create_dir_all(dir.join("profile")).expect("create the browser's profile dir");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("browser: start {CHROMEDRIVER}: {e}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Until `GET /status` says ready (true), or chromedriver exits or the
    /// deadline passes (false).
    async fn wait_ready(&mut self, http: &reqwest::Client) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let status = format!("{}/status", self.url);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let probe = http
                .get(&status)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = probe
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// The last lines chromedriver logged, for a failed start.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A command's failure: W3C's error code (`no such element`, ...) or what
/// went wrong on the way.
#[derive(Debug)]
struct WebDriverError {
    error: String,
    message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// One WebDriver command: its `value`, or its error without the stack trace.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Value,
) -> Result<Value, WebDriverError> {
    let transport = |e: reqwest::Error| WebDriverError {
        error: "transport".into(),
        message: format!("{method} {url}: {e}"),
    };
    let mut request = http.request(method.clone(), url);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let mut answer: Value = response.json().await.map_err(transport)?;
    let value = answer["value"].take();
    if status.is_success() {
        return Ok(value);
    }
    let message = value["message"].as_str().unwrap_or_default();
    Err(WebDriverError {
        error: value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_owned(),
        // chromedriver appends "(Session info: ...)" and a stack trace.
        message: message.lines().next().unwrap_or_default().to_owned(),
    })
}

fn string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("browser: expected a string, got {other}"),
    }
}

fn bool(value: Value) -> bool {
    value
        .as_bool()
        .unwrap_or_else(|| panic!("browser: expected a boolean, got {value}"))
}
