//! What a session may see and do: its own workspace, CSRF, portal links,
//! read-only sessions, the admin's picker, signing out.

use super::*;

/// (4) A session sees its own workspace only; forms need their CSRF token;
/// portal links open once, before they expire, into a session that cannot
/// leave its workspace or make links, and a read-only one changes nothing;
/// the admin token opens the workspace picker.
pub(super) async fn sessions_see_their_own_workspace_and_portal_links_open_once(db: Db) {
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
