//! The form's errors, each at its field, and nothing saved.

use super::*;

/// (3) Each validation error under its own field, the values typed kept,
/// nothing saved until every field is right.
pub(super) async fn the_form_shows_each_error_at_its_field_and_saves_nothing(db: Db) {
    let env = TestEnv::new(db).await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let worker = env.start_worker().await;
    let console = ConsoleBrowser::start(worker.http_addr).await;
    console.sign_in(&key, "#total-24h").await;
    // The catalogue the form's events come from.
    console.open("/console/w/acme/event-types").await;
    for event_type in ["order.created", "refund.requested"] {
        let entry = console
            .find(&format!(r#"section[id="type-{event_type}"]"#))
            .await;
        // In a closed <details>: read what it holds, not what is shown.
        let example = entry.find("pre").await.prop("textContent").await;
        let example: Value = serde_json::from_str(example.as_str().unwrap()).unwrap();
        assert_eq!(example["type"], event_type, "{example}");
    }
    console.open("/console/w/acme/webhooks/new").await;

    // Everything wrong at once.
    let secret = "whsec_Y291cmllci1yZWFkbWUtdG91ci1rZXk=";
    console
        .submit_webhook_form(&WebhookFields {
            name: "",
            url: "ftp://files.example.com/hook",
            events: &[],
            channels: Some(""),
            secret: Some(secret),
        })
        .await;
    console.wait_for("#form-errors", WAIT).await;
    // The form answers 422 Unprocessable Entity: Chromium logs it as a
    // failed load, expected here.
    console.expect_failed_load(422).await;
    assert_field_error(&console, "name", "#name", "1-200 characters").await;
    assert_field_error(&console, "url", "#url", "scheme must be http or https").await;
    assert_field_error(
        &console,
        "events",
        "fieldset.events",
        "at least one event type",
    )
    .await;
    assert_field_error(
        &console,
        "channels",
        "fieldset.channels",
        "at least one channel",
    )
    .await;
    assert_eq!(
        console.find("#url").await.prop("value").await,
        "ftp://files.example.com/hook"
    );
    assert_eq!(console.find("#secret").await.prop("value").await, secret);
    assert!(console.find("#channels-some").await.is_selected().await);
    assert!(!console.find("#channels-all").await.is_selected().await);
    assert!(console.find("#active").await.is_selected().await);
    assert_eq!(webhook_count(&env, &ws).await, 0);

    // Name and events right, the rest still wrong: only those two errors
    // go, and what was typed stays.
    console
        .submit_webhook_form(&WebhookFields {
            name: "Shop sync",
            url: "ftp://files.example.com/hook",
            events: &["order.created", "refund.requested"],
            channels: Some(" , "),
            secret: Some(secret),
        })
        .await;
    console
        .wait_for_text("#form-errors", "Nothing was saved", WAIT)
        .await;
    console.wait_for("#url-error", WAIT).await;
    console.expect_failed_load(422).await;
    assert!(console.try_find("#name-error").await.is_none());
    assert!(console.try_find("#events-error").await.is_none());
    assert_field_error(&console, "url", "#url", "scheme must be http or https").await;
    assert_field_error(
        &console,
        "channels",
        "fieldset.channels",
        "at least one channel",
    )
    .await;
    assert_eq!(console.find("#name").await.prop("value").await, "Shop sync");
    for (event_type, ticked) in [
        ("order.created", true),
        ("refund.requested", true),
        ("order.updated", false),
    ] {
        let checkbox = console
            .find(&ConsoleBrowser::event_checkbox(event_type))
            .await;
        assert_eq!(checkbox.is_selected().await, ticked, "{event_type}");
    }
    assert_eq!(webhook_count(&env, &ws).await, 0);
    console.open("/console/w/acme/webhooks").await;
    console.find("#no-webhooks").await;

    // All right: saved, once.
    let (id, shown) = console
        .create_webhook(
            "acme",
            &WebhookFields {
                name: "Shop sync",
                url: "http://127.0.0.1:9/hook",
                events: &["order.created"],
                channels: Some("amazon\nebay"),
                secret: Some(secret),
            },
        )
        .await;
    assert_eq!(shown, secret);
    console.open("/console/w/acme/webhooks").await;
    let rows = console.find_all("#webhooks tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-webhook").await.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(webhook_count(&env, &ws).await, 1);

    drop(console);
    worker.stop().await.unwrap();
}
