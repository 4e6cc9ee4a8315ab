//! The portal inside an `<iframe>` of an allowed origin only.

use super::*;

/// (5) The portal inside an `<iframe>` of an allowed origin; a courier that
/// allows none is not framed. (Framing does not depend on the ledger:
/// SQLite only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_is_framed_only_by_allowed_origins() {
    let framer = serve_framer().await;
    let allowed = format!("http://{framer}");
    let env = TestEnv::with(
        Db::Sqlite,
        &[("COURIER__CONSOLE__FRAME_ANCESTORS", &allowed)],
    )
    .await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let worker = env.start_worker().await;
    let link = Api::new(worker.http_addr)
        .portal_link("acme", &key, json!({}))
        .await;

    let browser = Browser::start().await;
    browser.goto(&embedding(framer, &link)).await;
    let frame = browser.wait_for("iframe", WAIT).await;
    browser.switch_to_frame(&frame).await;
    browser.wait_for_text("main h1", "Overview", WAIT).await;
    browser.find("#total-24h").await;
    // The session's cookie works inside the frame: the next page opens.
    browser.find("nav a[href$='/webhooks']").await.click().await;
    browser.wait_for("#no-webhooks", WAIT).await;
    browser.switch_to_parent().await;
    assert_eq!(browser.find("h1").await.text().await, "Embedding app");
    browser.assert_no_console_errors().await;

    // A courier that names no frame ancestor refuses every frame.
    let plain = TestEnv::new(Db::Sqlite).await;
    let plain_ws = plain.workspace("acme").await;
    let (plain_key, _) = courier_api::keys::create_api_key(&plain.store, &plain_ws, Some("e2e"))
        .await
        .unwrap();
    let plain_worker = plain.start_worker().await;
    let plain_link = Api::new(plain_worker.http_addr)
        .portal_link("acme", &plain_key, json!({}))
        .await;
    browser.goto(&embedding(framer, &plain_link)).await;
    let violation = browser.wait_for_log("frame-ancestors 'none'", WAIT).await;
    assert!(violation.is_error(), "{violation}");
    assert!(
        violation
            .message
            .contains(&format!("http://{}/", plain_worker.http_addr)),
        "{violation}"
    );
    browser.switch_to_frame(&browser.find("iframe").await).await;
    assert!(
        browser.try_find("#total-24h").await.is_none(),
        "the console must not render in the frame"
    );
    browser.switch_to_parent().await;
    assert_eq!(browser.find("h1").await.text().await, "Embedding app");
    // The refusal is the error this page is meant to cause: checked above,
    // then cleared, so that anything else would still fail.
    let errors = browser.console_errors().await;
    assert!(
        errors
            .iter()
            .all(|e| e.message.contains("frame-ancestors 'none'")),
        "{errors:#?}"
    );
    browser.clear_log().await;
    browser.assert_no_console_errors().await;

    drop(browser);
    plain_worker.stop().await.unwrap();
    worker.stop().await.unwrap();
}

// --- helpers ---------------------------------------------------------------------
