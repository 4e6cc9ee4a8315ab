//! The Active switch, the test button and deletion.

use super::*;

/// (2) The Active switch stops and resumes deliveries; the test button's
/// report is what the receiver saw; deletion asks first, then the webhook
/// is gone from the list and from matching.
pub(super) async fn a_webhook_is_switched_tested_and_deleted(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let receiver = Receiver::start(Behavior::Ok).await;
    let hook = webhook(
        &env,
        &ws,
        "Warehouse",
        &receiver.url(),
        &["order.created", "shipment.created"],
    )
    .await;
    let worker = env.start_worker().await;
    let api = Api::new(worker.http_addr);
    let (publisher, _connection) = env.publisher().await;
    let console = ConsoleBrowser::start(worker.http_addr).await;
    console.sign_in(&key, "#total-24h").await;

    // Off: an event is recorded, its delivery paused, and nothing arrives.
    console.open("/console/w/acme/webhooks").await;
    let switch = switch_of(&hook.id.to_string());
    console.find(&switch).await.click().await;
    console.wait_for_text(&switch, "Off", WAIT).await;
    console.assert_no_console_errors().await;
    let off = console.find(&switch).await;
    assert_eq!(off.attr("aria-checked").await.as_deref(), Some("false"));
    assert!(text(&console, "p.notice").await.contains("off"));
    assert_eq!(
        status_of(&env, &ws, &hook).await,
        Some(SubscriptionStatus::Disabled)
    );
    let while_off = publish(&publisher, &ws, EventType::OrderCreated).await;
    let event = api.wait_recorded("acme", &key, &while_off).await;
    assert_eq!(event["matched"], 1, "{event}");
    assert_eq!(event["deliveries"][0]["status"], "paused", "{event}");
    assert_eq!(
        receiver.count(),
        0,
        "nothing reached the switched-off webhook"
    );

    // On again, canceling what was paused (replay.rs sends it): the next
    // event arrives, the paused one never.
    console.click_to_next_page(&switch).await;
    console.wait_for("#enable-form", WAIT).await;
    console.find("#replay-cancel").await.click().await;
    console.click_to_next_page("#confirm-enable").await;
    console
        .wait_for_text("p.notice", "1 paused delivery canceled.", WAIT)
        .await;
    console.wait_for_text(&switch, "On", WAIT).await;
    console.assert_no_console_errors().await;
    let while_on = publish(&publisher, &ws, EventType::OrderCreated).await;
    wait_for("the event after switching on", WAIT, || async {
        receiver.count() == 1
    })
    .await;
    assert_eq!(receiver.requests()[0].json()["id"], while_on.as_str());

    // Its page: the form as saved. A new name is saved.
    console
        .find(&format!(r#"tr[data-webhook="{}"] a.webhook-name"#, hook.id))
        .await
        .click()
        .await;
    console.wait_for("#test", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(console.find("#name").await.prop("value").await, "Warehouse");
    assert_eq!(
        console.find("#url").await.prop("value").await,
        receiver.url().as_str()
    );
    for event_type in ["order.created", "shipment.created"] {
        let checkbox = console
            .find(&ConsoleBrowser::event_checkbox(event_type))
            .await;
        assert!(checkbox.is_selected().await, "{event_type} is ticked");
    }
    let name = console.find("#name").await;
    name.clear().await;
    name.send_keys("Warehouse EU").await;
    console.click_to_next_page("#save").await;
    console.wait_for_text("p.notice", "Saved", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(text(&console, "main h1").await, "Warehouse EU");
    let saved = env.store.get_subscription(&ws, hook.id).await.unwrap();
    assert_eq!(saved.map(|s| s.name).as_deref(), Some("Warehouse EU"));

    // Rotate: a new secret, shown once; the old one keeps signing.
    console.click_to_next_page("#rotate").await;
    assert_eq!(text(&console, "main h1").await, "New signing secret");
    console.assert_no_console_errors().await;
    let new_secret = console.find("input#secret").await.prop("value").await;
    let new_secret = new_secret.as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != hook.secret.expose());
    // The copy button (the console's script): on a page served over http
    // it may only select the text, but it answers either way.
    let copy = console.find("button.copy[data-copy=secret]").await;
    copy.click().await;
    let deadline = std::time::Instant::now() + WAIT;
    let answered = loop {
        let label = copy.text().await;
        if label != "Copy" {
            break label;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy button did nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        answered == "Copied" || answered == "Selected: press Ctrl+C",
        "{answered}"
    );
    console.assert_no_console_errors().await;
    console.find("#to-webhook").await.click().await;
    console.wait_for("#test", WAIT).await;
    console.assert_no_console_errors().await;
    assert!(
        text(&console, "main")
            .await
            .contains("The previous secret also signs until")
    );

    // The test button: its report is what the receiver saw.
    let before = receiver.count();
    console.find("#test").await.click().await;
    let summary = console.wait_for("#test-summary", WAIT).await.text().await;
    console.assert_no_console_errors().await;
    assert_eq!(text(&console, "main h1").await, "Test of Warehouse EU");
    assert_eq!(summary, "2 tests run: 2 succeeded, 0 failed.");
    let mut reported = Vec::new();
    for row in console.find_all("#tests tbody tr").await {
        let event_type = row.find("code").await.text().await;
        let status = row.find(".status").await.text().await;
        reported.push((event_type, status));
    }
    let received = &receiver.requests()[before..];
    let mut seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            (
                r.json()["type"].as_str().unwrap().to_owned(),
                "200".to_owned(),
            )
        })
        .collect();
    reported.sort();
    seen.sort();
    assert_eq!(reported, seen, "the report lists what the receiver got");
    assert_eq!(
        reported,
        [
            ("order.created".to_owned(), "200".to_owned()),
            ("shipment.created".to_owned(), "200".to_owned())
        ]
    );
    for request in received {
        for secret in [new_secret.as_str(), hook.secret.expose()] {
            assert!(
                verify_signature(
                    secret,
                    &request.webhook_id,
                    &request.timestamp,
                    &request.body,
                    &request.signature
                ),
                "signed with both secrets during the rotation"
            );
        }
    }

    // Delete: the confirmation dialog first; dismissing it keeps the
    // webhook, accepting it deletes.
    console
        .find(&format!("main a[href$='/webhooks/{}']", hook.id))
        .await
        .click()
        .await;
    console.wait_for("#delete-link", WAIT).await;
    console.assert_no_console_errors().await;
    console.find("#delete-link").await.click().await;
    let confirm = console.wait_for("#confirm-delete", WAIT).await;
    console.assert_no_console_errors().await;
    assert!(text(&console, "main").await.contains("permanent"));
    confirm.click().await;
    assert_eq!(
        console.dismiss_alert().await.as_deref(),
        Some("Delete this webhook permanently?")
    );
    assert!(console.current_url().await.ends_with("/delete"));
    console.find("#confirm-delete").await;
    assert!(status_of(&env, &ws, &hook).await.is_some(), "kept");
    console.find("#confirm-delete").await.click().await;
    assert_eq!(
        console.accept_alert().await.as_deref(),
        Some("Delete this webhook permanently?")
    );
    console.wait_for("#no-webhooks", WAIT).await;
    console.assert_no_console_errors().await;
    assert!(text(&console, "p.notice").await.contains("deleted"));
    assert!(console.try_find("#webhooks").await.is_none());
    assert_eq!(status_of(&env, &ws, &hook).await, None);
    let after = publish(&publisher, &ws, EventType::OrderCreated).await;
    let event = api.wait_recorded("acme", &key, &after).await;
    assert_eq!(event["matched"], 0, "{event}");
    assert_eq!(event["deliveries"], json!([]));
    assert_eq!(receiver.count(), before + 2, "nothing more arrived");

    // A delivery of the deleted webhook stays readable, without Redeliver.
    let delivered = api.wait_recorded("acme", &key, &while_on).await;
    let delivery = delivered["deliveries"][0]["id"].as_str().unwrap();
    console
        .open(&format!("/console/w/acme/deliveries/{delivery}"))
        .await;
    assert_eq!(text(&console, "#delivery-status").await, "succeeded");
    assert!(text(&console, "#delivery-facts").await.contains("deleted"));
    assert!(console.try_find("#redeliver").await.is_none());
    assert!(console.try_find("#payload").await.is_none());

    drop(console);
    worker.stop().await.unwrap();
}
