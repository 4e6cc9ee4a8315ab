//! A webhook made in the console delivers, fails, and is redelivered.

use super::*;

/// (1) Sign in with a key, create webhooks through the form, watch their
/// deliveries on the events page (succeeded; a failing one retrying, then
/// dead), redeliver the dead one once its receiver is back, sign out.
pub(super) async fn a_webhook_made_in_the_console_delivers_and_is_redelivered(db: Db) {
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
