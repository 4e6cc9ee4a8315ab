//! The browser harness (courier_tests::browser) against small pages served
//! on 127.0.0.1 by the test itself: forms driven by clicks, the console log
//! (errors, failed loads, CSP violations), screenshots, cookies, dialogs and
//! frames refused or allowed by `frame-ancestors`.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::Router;
use axum::http::header::{CONTENT_SECURITY_POLICY, SET_COOKIE};
use axum::response::{AppendHeaders, Html};
use axum::routing::{get, post};
use courier_tests::browser::Browser;
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Generous: browsers share two cores with the other tests.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_is_filled_and_submitted_by_clicks() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/form")).await;
    assert_eq!(browser.title().await, "Form");

    let name = browser.find("#name").await;
    assert_eq!(name.attr("placeholder").await.as_deref(), Some("your name"));
    assert_eq!(name.attr("data-nothing").await, None);
    name.send_keys("draft").await;
    name.clear().await;
    name.send_keys("Ada & <Lovelace>").await;
    assert_eq!(name.prop("value").await, "Ada & <Lovelace>");

    let form = browser.find("form").await;
    assert_eq!(form.find_all("input").await.len(), 2);
    let agree = form.find("#agree").await;
    assert!(!agree.is_selected().await);
    agree.click().await;
    assert!(agree.is_selected().await);
    assert_eq!(agree.prop("checked").await, true);
    assert!(!browser.find("#note").await.is_displayed().await);
    assert!(form.try_find("#note").await.is_none());
    assert!(browser.try_find("#nothing-like-this").await.is_none());
    let tag = browser
        .execute(
            "return arguments[0].tagName + ' ' + arguments[1];",
            &[agree.as_arg(), json!(7)],
        )
        .await;
    assert_eq!(tag, "INPUT 7");

    form.find("button[type=submit]").await.click().await;
    let shown = browser.wait_for_text("#got-name", "Ada", WAIT).await;
    assert_eq!(shown.text().await, "Ada & <Lovelace>");
    assert_eq!(browser.find("#got-agree").await.text().await, "yes");
    assert_eq!(browser.current_url().await, format!("http://{site}/submit"));
    assert!(
        browser
            .page_source()
            .await
            .contains("Ada &amp; &lt;Lovelace&gt;"),
        "the server escaped the name"
    );

    browser.back().await;
    browser.wait_for("#name", WAIT).await;
    assert_eq!(browser.current_url().await, format!("http://{site}/form"));
    browser.refresh().await;
    assert_eq!(browser.title().await, "Form");
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_errors_and_failed_loads_are_reported() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;

    browser.goto(&format!("http://{site}/console-error")).await;
    let boom = browser.wait_for_log("\"boom\"", WAIT).await;
    assert!(boom.is_error(), "console.error is an error: {boom}");
    assert_eq!(boom.source, "console-api");

    browser.goto(&format!("http://{site}/broken-image")).await;
    let missing = browser.wait_for_log("/missing.png", WAIT).await;
    assert!(missing.is_error(), "a failed load is an error: {missing}");
    assert!(missing.message.contains("404"), "{missing}");
    assert_eq!(browser.console_errors().await.len(), 2);

    let outcome = AssertUnwindSafe(browser.assert_no_console_errors())
        .catch_unwind()
        .await;
    let message = panic_text(outcome.expect_err("two errors were logged"));
    assert!(message.contains("2 console error(s)"), "{message}");
    assert!(message.contains("\"boom\""), "{message}");
    assert!(message.contains("/missing.png"), "{message}");

    browser.clear_log().await;
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_page_logs_no_errors() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/clean")).await;
    // Its own log line shows the page's messages have been read.
    let hello = browser.wait_for_log("hello from a clean page", WAIT).await;
    assert_eq!(hello.level, "INFO");
    assert_eq!(browser.find("h1").await.text().await, "Clean");
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_security_policy_violation_is_logged() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/csp-inline")).await;
    let violation = browser
        .wait_for_log("violates the following Content Security Policy", WAIT)
        .await;
    assert!(violation.is_error(), "{violation}");
    assert!(
        violation.message.contains("script-src 'self'"),
        "{violation}"
    );
    assert_eq!(
        browser.find("#ran").await.text().await,
        "no",
        "the inline script was blocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_is_a_png_of_the_window() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/clean")).await;
    // The window less the browser's top bar, which headless Chromium keeps.
    let viewport = async || {
        let size = browser
            .execute("return [window.innerWidth, window.innerHeight];", &[])
            .await;
        let side = |i: usize| size[i].as_u64().expect("a size") as u32;
        (side(0), side(1))
    };
    let png = browser.screenshot_png().await;
    assert_eq!(png_size(&png), viewport().await);
    assert_eq!(png_size(&png).0, 1280, "the --window-size");

    browser.set_window_size(800, 600).await;
    let (width, height) = png_size(&browser.screenshot_png().await);
    assert_eq!((width, height), viewport().await);
    assert_eq!(width, 800);
    assert!((400..=600).contains(&height), "height {height}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_set_by_the_server_are_visible_with_their_attributes() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/cookies")).await;

    let cookies = browser.cookies().await;
    let session = cookie(&cookies, "session").expect("the session cookie");
    assert_eq!(session["value"], "s3cr3t");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert_eq!(session["path"], "/");
    let theme = cookie(&cookies, "theme").expect("the theme cookie");
    assert_eq!(theme["httpOnly"], false);
    assert_eq!(theme["sameSite"], "Lax");
    let visible = browser.execute("return document.cookie;", &[]).await;
    assert_eq!(visible, "theme=dark", "scripts do not see HttpOnly cookies");

    browser
        .add_cookie(json!({"name": "added", "value": "1", "sameSite": "Strict"}))
        .await;
    assert_eq!(
        cookie(&browser.cookies().await, "added").unwrap()["value"],
        "1"
    );
    browser.delete_cookies().await;
    assert_eq!(browser.cookies().await, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialogs_are_accepted_and_dismissed() {
    let site = serve(pages()).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{site}/dialogs")).await;
    assert_eq!(browser.accept_alert().await, None, "no dialog is open");

    browser.find("#confirm").await.click().await;
    assert_eq!(browser.dismiss_alert().await.as_deref(), Some("Delete it?"));
    browser.wait_for_text("#answer", "false", WAIT).await;

    browser.find("#confirm").await.click().await;
    assert_eq!(browser.accept_alert().await.as_deref(), Some("Delete it?"));
    browser.wait_for_text("#answer", "true", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_refusing_every_ancestor_is_not_framed() {
    let (framer, framed) = framing_sites().await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{framer}/frame-none")).await;
    let refusal = browser.wait_for_log("frame-ancestors 'none'", WAIT).await;
    assert!(refusal.is_error(), "{refusal}");
    assert!(
        refusal.message.contains(&format!("http://{framed}/")),
        "{refusal}"
    );

    browser.switch_to_frame(&browser.find("iframe").await).await;
    assert!(
        browser.try_find("#framed").await.is_none(),
        "the framed page must not render"
    );
    browser.switch_to_parent().await;
    assert_eq!(browser.find("h1").await.text().await, "Framer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_allowing_its_framer_is_framed() {
    let (framer, _framed) = framing_sites().await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{framer}/frame-allowed"))
        .await;

    browser.switch_to_frame(&browser.find("iframe").await).await;
    browser
        .wait_for_text("#framed", "framed content", WAIT)
        .await;
    browser.switch_to_parent().await;
    assert_eq!(browser.find("h1").await.text().await, "Framer");
    browser.assert_no_console_errors().await;
}

/// The pages of most tests, on one origin.
fn pages() -> Router {
    Router::new()
        .route(
            "/form",
            get(|| async {
                page(
                    "Form",
                    r#"<form method="post" action="/submit">
                         <input id="name" name="name" placeholder="your name">
                         <input id="agree" name="agree" type="checkbox" value="on">
                         <button type="submit">Send</button>
                       </form>
                       <p id="note" hidden>not shown</p>"#,
                )
            }),
        )
        .route("/submit", post(submitted))
        .route(
            "/console-error",
            get(|| async { page("Console", r#"<script>console.error("boom");</script>"#) }),
        )
        .route(
            "/broken-image",
            get(|| async { page("Broken", r#"<img src="/missing.png" alt="">"#) }),
        )
        .route(
            "/clean",
            get(|| async {
                page(
                    "Clean",
                    r#"<h1>Clean</h1><script>console.log("hello from a clean page");</script>"#,
                )
            }),
        )
        .route(
            "/csp-inline",
            get(|| async {
                (
                    [(CONTENT_SECURITY_POLICY, "script-src 'self'")],
                    page(
                        "CSP",
                        r#"<p id="ran">no</p>
                           <script>document.getElementById("ran").textContent = "yes";</script>"#,
                    ),
                )
            }),
        )
        .route(
            "/cookies",
            get(|| async {
                (
                    AppendHeaders([
                        (SET_COOKIE, "session=s3cr3t; Path=/; HttpOnly; SameSite=Strict"),
                        (SET_COOKIE, "theme=dark; Path=/; SameSite=Lax"),
                    ]),
                    page("Cookies", "<p>set</p>"),
                )
            }),
        )
        .route(
            "/dialogs",
            get(|| async {
                page(
                    "Dialogs",
                    r#"<button id="confirm"
                         onclick="document.getElementById('answer').textContent = confirm('Delete it?')">
                         Delete</button>
                       <p id="answer"></p>"#,
                )
            }),
        )
}

/// What the form posted, escaped.
async fn submitted(body: String) -> Html<String> {
    let form = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).expect("a form body");
    let field = |name: &str| {
        form.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let name = escape(&field("name").unwrap_or_default());
    let agree = if field("agree").as_deref() == Some("on") {
        "yes"
    } else {
        "no"
    };
    page(
        "Submitted",
        &format!(r#"<p id="got-name">{name}</p><p id="got-agree">{agree}</p>"#),
    )
}

/// Two origins: a framer, and a framed page that refuses every ancestor
/// (`/none`) or allows only the framer (`/allowed`). Returns both addresses.
async fn framing_sites() -> (SocketAddr, SocketAddr) {
    let framer_listener = bind().await;
    let framed_listener = bind().await;
    let framer = framer_listener.local_addr().unwrap();
    let framed = framed_listener.local_addr().unwrap();

    let framed_page = || page("Framed", r#"<p id="framed">framed content</p>"#);
    let only_framer = format!("frame-ancestors http://{framer}");
    let framed_routes = Router::new()
        .route(
            "/none",
            get(move || async move {
                (
                    [(CONTENT_SECURITY_POLICY, "frame-ancestors 'none'")],
                    framed_page(),
                )
            }),
        )
        .route(
            "/allowed",
            get(move || {
                let policy = only_framer.clone();
                async move { ([(CONTENT_SECURITY_POLICY, policy)], framed_page()) }
            }),
        );
    let framing = move |path: &str| {
        page(
            "Framer",
            &format!(r#"<h1>Framer</h1><iframe src="http://{framed}{path}"></iframe>"#),
        )
    };
    let (refused, allowed) = (framing("/none"), framing("/allowed"));
    let framer_routes = Router::new()
        .route(
            "/frame-none",
            get(move || std::future::ready(refused.clone())),
        )
        .route(
            "/frame-allowed",
            get(move || std::future::ready(allowed.clone())),
        );

    spawn(framer_listener, framer_routes);
    spawn(framed_listener, framed_routes);
    (framer, framed)
}

/// A page whose icon is inline: Chromium asks every page for one, and a 404
/// for /favicon.ico would be a console error.
fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><link rel="icon" href="data:,"></head><body>{body}</body></html>"#
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test site")
}

/// Serves `routes` on a free port of 127.0.0.1 until the test's runtime ends.
async fn serve(routes: Router) -> SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    spawn(listener, routes);
    addr
}

fn spawn(listener: TcpListener, routes: Router) {
    tokio::spawn(async move { axum::serve(listener, routes).await });
}

fn cookie<'a>(cookies: &'a [Value], name: &str) -> Option<&'a Value> {
    cookies.iter().find(|c| c["name"] == name)
}

/// Width and height from a PNG's signature and IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..png.len().min(8)]
    );
    assert_eq!(&png[12..16], b"IHDR", "a PNG starts with its header chunk");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (width, height)
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}
