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

crate::on_both_databases!(
    a_webhook_made_in_the_console_delivers_and_is_redelivered,
    a_webhook_is_switched_tested_and_deleted,
    the_form_shows_each_error_at_its_field_and_saves_nothing,
    sessions_see_their_own_workspace_and_portal_links_open_once
);

const ADMIN_TOKEN: &str = "e2e-console-admin-token-0123456789abcdef";

/// (1) Sign in with a key, create webhooks through the form, watch their
/// deliveries on the events page (succeeded; a failing one retrying, then
/// dead), redeliver the dead one once its receiver is back, sign out.
async fn a_webhook_made_in_the_console_delivers_and_is_redelivered(db: Db) {
    // Four attempts, 1 s and then 2 s apart: a failing delivery is seen
    // retrying for about 5 s, then dead. Four failures in a row are too few
    // to open the endpoint's circuit (five).
    let env = TestEnv::with(
        db,
        &[
            ("COURIER__RETRY__MAX_ATTEMPTS", "4"),
            ("COURIER__RETRY__INITIAL_DELAY_MS", "1000"),
            ("COURIER__RETRY__MAX_DELAY_MS", "2000"),
        ],
    )
    .await;
    let ws = env.workspace("acme").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &ws, Some("e2e"))
        .await
        .unwrap();
    let erp = Receiver::start(Behavior::Ok).await;
    let plugin = Receiver::start(Behavior::Down { status: 500 }).await;
    let worker = env.start_worker().await;
    let console = ConsoleBrowser::start(worker.http_addr).await;

    console.sign_in(&key, "#total-24h").await;
    assert_eq!(text(&console, "#total-24h").await, "0");
    let (erp_id, erp_secret) = console
        .create_webhook(
            "acme",
            &WebhookFields {
                name: "ERP orders",
                url: &erp.url(),
                events: &["order.created"],
                ..WebhookFields::default()
            },
        )
        .await;
    let (plugin_id, _) = console
        .create_webhook(
            "acme",
            &WebhookFields {
                name: "Shop plugin",
                url: &plugin.url(),
                events: &["order.status_changed"],
                ..WebhookFields::default()
            },
        )
        .await;
    console.open("/console/w/acme/webhooks").await;
    for id in [&erp_id, &plugin_id] {
        let switch = console.find(&switch_of(id)).await;
        assert_eq!(switch.text().await, "On");
        assert_eq!(switch.attr("aria-checked").await.as_deref(), Some("true"));
    }

    // Two orders reach the ERP, signed with the secret the form showed.
    let (publisher, _connection) = env.publisher().await;
    let orders = [
        publish(&publisher, &ws, EventType::OrderCreated).await,
        publish(&publisher, &ws, EventType::OrderCreated).await,
    ];
    wait_for("both orders at the ERP", WAIT, || async {
        erp.count() == 2
    })
    .await;
    for request in erp.requests() {
        assert!(
            verify_signature(
                &erp_secret,
                &request.webhook_id,
                &request.timestamp,
                &request.body,
                &request.signature
            ),
            "signed with the secret shown once"
        );
    }
    console
        .open(&format!("/console/w/acme/webhooks/{erp_id}/events"))
        .await;
    for order in &orders {
        let row = console
            .refresh_until("the order to show succeeded", WAIT, || async {
                match console.event_row(order).await {
                    Some(row) if row.status == "succeeded" => Ok(row),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        assert_eq!((row.response.as_str(), row.attempts), ("200", 1), "{row:?}");
    }

    // More than a page of events (25 a page): the newest page, the older
    // one by its cursor, and back; the two pages hold every event once.
    let mut published: Vec<String> = orders.to_vec();
    for _ in 0..24 {
        published.push(publish(&publisher, &ws, EventType::OrderCreated).await);
    }
    wait_for("26 orders at the ERP", WAIT, || async { erp.count() == 26 }).await;
    console.refresh().await;
    console.assert_no_console_errors().await;
    let mut listed = events_listed(&console).await;
    assert_eq!(listed.len(), 25);
    assert!(console.try_find("#newest").await.is_none());
    console.find("#older").await.click().await;
    console.wait_for_url("?after=").await;
    console.wait_for("#newest", WAIT).await;
    console.assert_no_console_errors().await;
    let older = events_listed(&console).await;
    assert_eq!(older.len(), 1);
    assert!(orders.contains(&older[0]), "the oldest is a first order");
    assert!(console.try_find("#older").await.is_none());
    listed.extend(older);
    listed.sort();
    published.sort();
    assert_eq!(listed, published, "each event on one page, once");
    console.find("#newest").await.click().await;
    console.wait_for("#older", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(events_listed(&console).await.len(), 25);

    // The plugin fails: retrying with 500, the attempts rising, then dead.
    let change = publish(&publisher, &ws, EventType::OrderStatusChanged).await;
    console
        .open(&format!("/console/w/acme/webhooks/{plugin_id}/events"))
        .await;
    let first = console
        .refresh_until("the failing delivery to show retrying", WAIT, || async {
            match console.event_row(&change).await {
                Some(row) if row.status == "retrying" => Ok(row),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert_eq!(first.response, "500", "{first:?}");
    let later = console
        .refresh_until("the attempts to rise", WAIT, || async {
            match console.event_row(&change).await {
                Some(row) if row.attempts > first.attempts => Ok(row),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    let expected = if later.attempts < 4 {
        "retrying"
    } else {
        "dead"
    };
    assert_eq!(
        (later.status.as_str(), later.response.as_str()),
        (expected, "500"),
        "{later:?}"
    );

    // Its delivery page: the request as sent and every attempt.
    console
        .find(&format!(r#"tr[data-event="{change}"] a.delivery-link"#))
        .await
        .click()
        .await;
    console.wait_for("#delivery-status", WAIT).await;
    console
        .refresh_until("the delivery to be dead", WAIT, || async {
            let status = text(&console, "#delivery-status").await;
            if status == "dead" {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
    let delivery_page = console.current_url().await;
    assert!(
        delivery_page.ends_with(&format!("/deliveries/{}", first.delivery)),
        "{delivery_page}"
    );
    assert_eq!(text(&console, "#delivery-attempts").await, "4");
    assert_eq!(
        texts(&console, "#attempts tbody tr .status").await,
        ["500", "500", "500", "500"]
    );
    let headers = text(&console, "#headers").await;
    for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(headers.contains(header), "{header} in {headers}");
    }
    let payload = text(&console, "#payload").await;
    assert!(
        payload.contains(&change) && payload.contains("order.status_changed"),
        "{payload}"
    );
    assert_eq!(plugin.count(), 4);

    // The filters: by status, and by type.
    console
        .open(&format!("/console/w/acme/webhooks/{plugin_id}/events"))
        .await;
    for (status, event_type, shown) in [
        ("dead", "", true),
        ("succeeded", "", false),
        ("", "order.status_changed", true),
        ("dead", "order.created", false),
    ] {
        console
            .find(&format!(r#"#status option[value="{status}"]"#))
            .await
            .click()
            .await;
        console
            .find(&format!(r#"#type option[value="{event_type}"]"#))
            .await
            .click()
            .await;
        console.click_to_next_page("#apply-filters").await;
        let url = console
            .wait_for_url(&format!("?status={status}&type={event_type}"))
            .await;
        let listed = if shown { "#events" } else { "#no-events" };
        console.wait_for(listed, WAIT).await;
        console.assert_no_console_errors().await;
        if shown {
            assert!(console.event_row(&change).await.is_some(), "{url}");
        } else {
            assert!(
                text(&console, "#no-events")
                    .await
                    .contains("with these filters")
            );
        }
        let selected = console.find("#status").await.prop("value").await;
        assert_eq!(selected, status, "the filter stays chosen");
    }

    // The overview counts it and names the failing webhook; the list shows
    // each webhook's health.
    console.open("/console/w/acme").await;
    assert_eq!(text(&console, "#dead-count").await, "1");
    assert_eq!(text(&console, "#total-24h").await, "27");
    assert!(text(&console, "#failing").await.contains("Shop plugin"));
    // Its link leads to the failure.
    console.find("#failing a").await.click().await;
    console.wait_for("#filters", WAIT).await;
    console.assert_no_console_errors().await;
    let failure = console.event_row(&change).await;
    assert_eq!(
        failure.map(|row| row.status).as_deref(),
        Some("dead"),
        "the failing webhook's link on the overview leads to its failure"
    );
    console.open("/console/w/acme/webhooks").await;
    let health = |id: &str, column: &str| {
        let css = format!(r#"tr[data-webhook="{id}"] {column}"#);
        let console = &console;
        async move { text(console, &css).await }
    };
    assert_eq!(health(&erp_id, ".rate").await, "100 % of 26");
    assert!(
        health(&erp_id, ".last-response")
            .await
            .starts_with("200 at ")
    );
    assert_eq!(health(&plugin_id, ".rate").await, "0 % of 1");
    assert!(
        health(&plugin_id, ".last-response")
            .await
            .starts_with("500 at ")
    );
    assert_eq!(health(&plugin_id, ".waiting").await, "0");

    // The plugin is back: Redeliver, and it succeeds.
    plugin.recover();
    console.goto(&delivery_page).await;
    console.assert_no_console_errors().await;
    console.find("#redeliver").await.click().await;
    assert!(
        console
            .wait_for("#notice", WAIT)
            .await
            .text()
            .await
            .contains("Queued")
    );
    console
        .refresh_until("the redelivery to succeed", WAIT, || async {
            let status = text(&console, "#delivery-status").await;
            if status == "succeeded" {
                Ok(())
            } else {
                Err(status)
            }
        })
        .await;
    assert_eq!(text(&console, "#delivery-attempts").await, "5");
    assert_eq!(
        texts(&console, "#attempts tbody tr .status")
            .await
            .last()
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(plugin.count(), 5);

    // Recover on its events page: nothing is dead any more, and it says so.
    console
        .open(&format!("/console/w/acme/webhooks/{plugin_id}/events"))
        .await;
    console.find("#recover").await.click().await;
    console
        .wait_for_text(
            "#notice",
            "0 dead or canceled deliveries were queued again.",
            WAIT,
        )
        .await;
    console.assert_no_console_errors().await;

    // 7. Sign out: the session ends, in the browser and for its cookie.
    let cookie = console.session_cookie().await.expect("a session cookie");
    let overview = console.url("/console/w/acme");
    let replay = || {
        no_redirects()
            .get(&overview)
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .send()
    };
    assert_eq!(replay().await.unwrap().status(), 200, "the cookie works");
    console.find("#sign-out").await.click().await;
    console.wait_for_text("main h1", "Signed out", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(console.session_cookie().await, None);
    console.goto(&overview).await;
    console.wait_for("#sign-in", WAIT).await;
    assert_eq!(console.current_url().await, console.url("/console/sign-in"));
    console.assert_no_console_errors().await;
    let replayed = replay().await.unwrap();
    assert_eq!(replayed.status(), 303, "the old cookie is a stranger");
    assert_eq!(replayed.headers()["location"], "/console/sign-in");

    drop(console);
    worker.stop().await.unwrap();
}

/// (2) The Active switch stops and resumes deliveries; the test button's
/// report is what the receiver saw; deletion asks first, then the webhook
/// is gone from the list and from matching.
async fn a_webhook_is_switched_tested_and_deleted(db: Db) {
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

    // Off: an event is recorded, matched by nothing, and nothing arrives.
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
    assert_eq!(event["matched"], 0, "{event}");
    assert_eq!(event["deliveries"], json!([]));
    assert_eq!(
        receiver.count(),
        0,
        "nothing reached the switched-off webhook"
    );

    // On again: the next event arrives.
    console.find(&switch).await.click().await;
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

/// (3) Each validation error under its own field, the values typed kept,
/// nothing saved until every field is right.
async fn the_form_shows_each_error_at_its_field_and_saves_nothing(db: Db) {
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

/// (4) A session sees its own workspace only; forms need their CSRF token;
/// portal links open once, before they expire, into a session that cannot
/// leave its workspace or make links, and a read-only one changes nothing;
/// the admin token opens the workspace picker.
async fn sessions_see_their_own_workspace_and_portal_links_open_once(db: Db) {
    let env = TestEnv::with(db, &[("COURIER__API__ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let alpha = env.workspace("alpha").await;
    let beta = env.workspace("beta").await;
    let (alpha_key, _) = courier_api::keys::create_api_key(&env.store, &alpha, Some("e2e"))
        .await
        .unwrap();
    let (beta_key, _) = courier_api::keys::create_api_key(&env.store, &beta, Some("e2e"))
        .await
        .unwrap();
    let alpha_receiver = Receiver::start(Behavior::Ok).await;
    let beta_receiver = Receiver::start(Behavior::Ok).await;
    let alpha_hook = webhook(
        &env,
        &alpha,
        "Alpha ERP",
        &alpha_receiver.url(),
        &["order.created"],
    )
    .await;
    let beta_hook = webhook(
        &env,
        &beta,
        "Beta confidential ERP",
        &beta_receiver.url(),
        &["order.created"],
    )
    .await;
    let worker = env.start_worker().await;
    let api = Api::new(worker.http_addr);
    let (publisher, _connection) = env.publisher().await;
    let alpha_event = publish(&publisher, &alpha, EventType::OrderCreated).await;
    let beta_event = publish(&publisher, &beta, EventType::OrderCreated).await;
    wait_for("both deliveries", WAIT, || async {
        alpha_receiver.count() == 1 && beta_receiver.count() == 1
    })
    .await;
    let delivery_of = |view: Value| view["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let alpha_delivery = delivery_of(api.wait_recorded("alpha", &alpha_key, &alpha_event).await);
    let beta_delivery = delivery_of(api.wait_recorded("beta", &beta_key, &beta_event).await);

    let console = ConsoleBrowser::start(worker.http_addr).await;

    // A wrong key: the sign-in page again, answering 401, which Chromium
    // logs as a failed load (expected).
    console.open("/console/sign-in").await;
    console
        .find("#key")
        .await
        .send_keys("ck_not_a_key_of_anyone")
        .await;
    console.find("#sign-in").await.click().await;
    let refusal = console.wait_for("#key-error", WAIT).await.text().await;
    assert!(refusal.contains("does not know this key"), "{refusal}");
    console.expect_failed_load(401).await;

    // A key of alpha sees nothing of beta: every page of beta's, and
    // beta's ids under alpha's path, are "not found" and nothing more. Each
    // 404 is logged by Chromium as a failed load (expected).
    console.sign_in(&alpha_key, "#total-24h").await;
    let beta_secrets = [
        "Beta confidential ERP".to_owned(),
        beta_receiver.url(),
        beta_event.clone(),
    ];
    for path in [
        "/console/w/beta".to_owned(),
        "/console/w/beta/webhooks".to_owned(),
        format!("/console/w/beta/webhooks/{}", beta_hook.id),
        format!("/console/w/beta/webhooks/{}/events", beta_hook.id),
        format!("/console/w/beta/deliveries/{beta_delivery}"),
        format!("/console/w/alpha/webhooks/{}", beta_hook.id),
        format!("/console/w/alpha/webhooks/{}/events", beta_hook.id),
        format!("/console/w/alpha/deliveries/{beta_delivery}"),
        "/console/workspaces".to_owned(),
    ] {
        console.open_refused(&path, 404, "Not found").await;
        let page = console.page_source().await;
        for secret in &beta_secrets {
            assert!(!page.contains(secret.as_str()), "{path} shows {secret}");
        }
    }
    // Its own pages work, and show none of beta's either.
    for path in [
        "/console/w/alpha".to_owned(),
        format!("/console/w/alpha/webhooks/{}/events", alpha_hook.id),
        format!("/console/w/alpha/deliveries/{alpha_delivery}"),
        "/console/w/alpha/webhooks".to_owned(),
    ] {
        console.open(&path).await;
        let page = console.page_source().await;
        for secret in &beta_secrets {
            assert!(!page.contains(secret.as_str()), "{path} shows {secret}");
        }
    }

    // Exactly like a workspace that does not exist.
    console
        .open_refused("/console/w/beta", 404, "Not found")
        .await;
    let beta_page = console.page_source().await;
    console
        .open_refused("/console/w/gamma", 404, "Not found")
        .await;
    assert_eq!(console.page_source().await, beta_page);
    // Nor can it change beta's webhook, with a valid form of its own
    // session posted to beta's paths.
    for action in [
        format!("/console/w/beta/webhooks/{}/active", beta_hook.id),
        format!("/console/w/alpha/webhooks/{}/active", beta_hook.id),
        format!("/console/w/beta/webhooks/{}/delete", beta_hook.id),
    ] {
        console.open("/console/w/alpha/webhooks").await;
        console.forge_post(&action, &[("active", "false")]).await;
        console_refused(&console, 404, "Not found").await;
    }
    assert_eq!(
        status_of(&env, &beta, &beta_hook).await,
        Some(SubscriptionStatus::Enabled)
    );

    // A form without its CSRF token is refused and changes nothing.
    console.open("/console/w/alpha/webhooks").await;
    let switch = switch_of(&alpha_hook.id.to_string());
    let button = console.find(&switch).await;
    console
        .execute(
            "arguments[0].form.querySelector('input[name=csrf]').remove();",
            &[button.as_arg()],
        )
        .await;
    button.click().await;
    let message = console_refused(&console, 403, "Form expired").await;
    assert!(message.contains("current session"), "{message}");
    assert_eq!(
        status_of(&env, &alpha, &alpha_hook).await,
        Some(SubscriptionStatus::Enabled)
    );

    // A portal link (made with the key through the API) opens a session for
    // alpha only, once.
    let link = api.portal_link("alpha", &alpha_key, json!({})).await;
    assert!(
        link.starts_with(&console.url("/console/portal/cpl_")),
        "{link}"
    );
    console.delete_cookies().await;
    console.goto(&link).await;
    console.wait_for("#total-24h", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(console.current_url().await, console.url("/console/w/alpha"));
    assert!(
        text(&console, "header .who")
            .await
            .contains("customer portal")
    );
    assert!(console.try_find("#make-portal-link").await.is_none());
    console.open("/console/w/alpha/webhooks").await;
    console.find("#new-webhook").await;
    console.find(&switch).await;
    for path in ["/console/workspaces", "/console/w/beta"] {
        console.open_refused(path, 404, "Not found").await;
    }
    // It cannot make links, not even by posting the form it is not shown.
    console.open("/console/w/alpha").await;
    console
        .forge_post("/console/w/alpha/portal-links", &[("ttl_minutes", "10")])
        .await;
    console_refused(&console, 404, "Not found").await;
    assert!(console.try_find("#portal-url").await.is_none());

    // Used once: refused the second time (the portal session's cookie gone,
    // as in another browser).
    console.delete_cookies().await;
    console.goto(&link).await;
    let refused = console.expect_refused(403, "Not allowed").await;
    assert!(refused.contains("Ask for a new link"), "{refused}");

    // Expired: a link that may wait one second, opened after two.
    let expiring = api
        .portal_link("alpha", &alpha_key, json!({"ttlSeconds": 1}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    console.goto(&expiring).await;
    console.expect_refused(403, "Not allowed").await;

    // A read-only link, made on the overview by a key's session: no button
    // that changes anything, and a form posted anyway is refused.
    console.sign_in(&alpha_key, "#total-24h").await;
    console.find("#read_only").await.click().await;
    console.find("#make-portal-link").await.click().await;
    let read_only_link = console
        .wait_for("#portal-url", WAIT)
        .await
        .prop("value")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    console.assert_no_console_errors().await;
    assert!(text(&console, "main").await.contains("a read-only"));
    console.delete_cookies().await;
    console.goto(&read_only_link).await;
    console.wait_for("#total-24h", WAIT).await;
    console.assert_no_console_errors().await;
    assert!(text(&console, "header .who").await.contains("read-only"));
    console.open("/console/w/alpha/webhooks").await;
    let row = console
        .find(&format!(r#"tr[data-webhook="{}"]"#, alpha_hook.id))
        .await;
    assert_eq!(row.find(".state").await.text().await, "On");
    for absent in ["#new-webhook", "button.switch"] {
        assert!(console.try_find(absent).await.is_none(), "{absent}");
    }
    console
        .open(&format!("/console/w/alpha/webhooks/{}", alpha_hook.id))
        .await;
    for absent in ["#save", "#test", "#rotate", "#delete-link"] {
        assert!(console.try_find(absent).await.is_none(), "{absent}");
    }
    console
        .open(&format!(
            "/console/w/alpha/webhooks/{}/events",
            alpha_hook.id
        ))
        .await;
    assert!(console.try_find("#recover").await.is_none());
    console.find("#events").await;
    console
        .open(&format!("/console/w/alpha/deliveries/{alpha_delivery}"))
        .await;
    assert!(console.try_find("#redeliver").await.is_none());
    let stored = env
        .store
        .get_subscription(&alpha, alpha_hook.id)
        .await
        .unwrap()
        .unwrap();
    console
        .forge_post(
            &format!("/console/w/alpha/deliveries/{alpha_delivery}/redeliver"),
            &[],
        )
        .await;
    let message = console_refused(&console, 403, "Not allowed").await;
    assert!(message.contains("read-only"), "{message}");
    // Not even the empty form to make a webhook with.
    let message = console
        .open_refused("/console/w/alpha/webhooks/new", 403, "Not allowed")
        .await;
    assert!(message.contains("read-only"), "{message}");
    console
        .open(&format!("/console/w/alpha/webhooks/{}", alpha_hook.id))
        .await;
    console
        .submit_form(&format!("/webhooks/{}", alpha_hook.id))
        .await;
    console_refused(&console, 403, "Not allowed").await;
    let after = env
        .store
        .get_subscription(&alpha, alpha_hook.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.name.as_str(), after.updated_at),
        ("Alpha ERP", stored.updated_at),
        "unchanged"
    );
    assert_eq!(alpha_receiver.count(), 1, "nothing was redelivered");

    // The admin token: the workspace picker, listing both.
    console.delete_cookies().await;
    console.sign_in(ADMIN_TOKEN, "#workspaces").await;
    assert_eq!(
        console.current_url().await,
        console.url("/console/workspaces")
    );
    let listed = texts(&console, "#workspaces tbody tr td:first-child").await;
    assert_eq!(listed, ["alpha", "beta"]);
    console
        .find("#workspaces a[href='/console/w/beta']")
        .await
        .click()
        .await;
    console.wait_for("#total-24h", WAIT).await;
    console.assert_no_console_errors().await;
    assert_eq!(console.current_url().await, console.url("/console/w/beta"));

    drop(console);
    worker.stop().await.unwrap();
}

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
