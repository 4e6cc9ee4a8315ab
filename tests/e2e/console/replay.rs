//! A switched-off webhook keeps its deliveries paused; switching it on
//! again asks whether to send them, sends them, and says how many.

use super::*;

/// (5) Off: events are kept, paused, and the list says why it is off and
/// how many wait. On again: the console asks first (send them, checked by
/// default, or cancel them), sends them, and says how many it sent; the
/// receiver gets each once.
pub(super) async fn a_webhook_switched_on_again_sends_what_it_paused(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let receiver = Receiver::start(Behavior::Ok).await;
    let hook = webhook(&env, &ws, "Warehouse", &receiver.url(), &["order.created"]).await;
    let worker = env.start_worker().await;
    let (publisher, _connection) = env.publisher().await;
    let console = ConsoleBrowser::start(worker.http_addr).await;
    console.sign_in(&key, "#total-24h").await;

    console.open("/console/w/acme/webhooks").await;
    let switch = switch_of(&hook.id.to_string());
    console.find(&switch).await.click().await;
    console.wait_for_text(&switch, "Off", WAIT).await;
    console.assert_no_console_errors().await;

    let mut published = Vec::new();
    for _ in 0..3 {
        published.push(publish(&publisher, &ws, EventType::OrderCreated).await);
    }
    wait_for("three paused deliveries", WAIT, || async {
        env.store.count_paused(&ws, hook.id).await.unwrap() == 3
    })
    .await;
    assert_eq!(
        receiver.count(),
        0,
        "nothing reached the switched-off webhook"
    );

    // The list says why it is off and what waits.
    console.open("/console/w/acme/webhooks").await;
    let row = format!(r#"tr[data-webhook="{}"]"#, hook.id);
    let state = text(&console, &format!("{row} .disabled-state")).await;
    assert!(
        state.starts_with("Disabled: switched off by hand, ")
            && state.ends_with("3 paused deliveries"),
        "{state}"
    );

    // On: asked first, sending checked by default.
    console.click_to_next_page(&switch).await;
    console.wait_for("#enable-form", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(text(&console, "main h1").await, "Turn on Warehouse?");
    assert!(console.find("#replay-send").await.is_selected().await);
    assert!(!console.find("#replay-cancel").await.is_selected().await);
    assert!(
        text(&console, r#"label[for="replay-send"]"#)
            .await
            .contains("3 paused deliveries")
    );
    console.click_to_next_page("#confirm-enable").await;
    console
        .wait_for_text("p.notice", "3 paused deliveries sent now.", WAIT)
        .await;
    console.assert_no_console_errors().await;
    assert_eq!(
        console
            .find(&switch)
            .await
            .attr("aria-checked")
            .await
            .as_deref(),
        Some("true")
    );
    wait_for("the paused deliveries", WAIT, || async {
        receiver.count() >= 3
    })
    .await;
    let mut got: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    published.sort();
    assert_eq!(got, published, "each paused event once");
    assert_eq!(env.store.count_paused(&ws, hook.id).await.unwrap(), 0);
}
