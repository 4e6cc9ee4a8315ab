//! A workspace's retention in the console: what applies and why, the form
//! that sets the workspace's own values (refused out of range, each error
//! at its field, nothing saved), another tenant's page not found, and a
//! read-only session that may look but not change.

use courier_model::RetentionOverride;

use super::*;

pub(super) async fn retention_is_read_and_set_in_the_console(db: Db) {
    let env = TestEnv::with(db, &[("COURIER__RETENTION__MAX_DAYS", "400")]).await;
    let acme = env.workspace("acme").await;
    let globex = env.workspace("globex").await;
    let (key, _) = courier_api::keys::create_api_key(&env.store, &acme, Some("e2e"))
        .await
        .unwrap();
    let worker = env.start_worker().await;
    let api = Api::new(worker.http_addr);
    let console = ConsoleBrowser::start(worker.http_addr).await;
    console.sign_in(&key, "#total-24h").await;
    let own = |ws: WorkspaceId| {
        let store = env.store.clone();
        async move { store.retention_override(&ws).await.unwrap() }
    };

    // The navigation leads there; the deployment's values apply.
    console
        .click_to_next_page(r#"nav a[href="/console/w/acme/retention"]"#)
        .await;
    console.wait_for("#retention", WAIT).await;
    console.assert_no_console_errors().await;
    assert_row(
        &console,
        "succeeded",
        "30 days",
        "the deployment's",
        "30 days",
    )
    .await;
    assert_row(&console, "failed", "90 days", "the deployment's", "90 days").await;
    assert_eq!(
        console
            .find("#succeeded_days")
            .await
            .attr("max")
            .await
            .as_deref(),
        Some("400")
    );

    // Out of range: refused at its field, the value typed kept, nothing
    // saved.
    set_field(&console, "#succeeded_days", "401").await;
    set_field(&console, "#failed_days", "0").await;
    console.submit_form("/console/w/acme/retention").await;
    console.wait_for("#form-errors", WAIT).await;
    console.expect_failed_load(422).await;
    let error = console.find("#succeeded_days-error").await.text().await;
    assert!(error.contains("between 1 and 400 days"), "{error}");
    assert_eq!(
        console.find("#succeeded_days").await.prop("value").await,
        "401"
    );
    assert_eq!(own(acme.clone()).await, None);

    // Right: saved, and shown as what applies.
    set_field(&console, "#succeeded_days", "7").await;
    set_field(&console, "#failed_days", "").await;
    console.submit_form("/console/w/acme/retention").await;
    console.wait_for("#notice", WAIT).await;
    console.assert_no_console_errors().await;
    assert!(
        console
            .current_url()
            .await
            .ends_with("/console/w/acme/retention?notice=saved")
    );
    assert_row(&console, "succeeded", "7 days", "7 days", "30 days").await;
    assert_row(&console, "failed", "90 days", "the deployment's", "90 days").await;
    assert_eq!(
        own(acme.clone()).await,
        Some(RetentionOverride {
            succeeded: Some(7),
            failed: None
        })
    );

    // Another tenant's page does not exist for this session, and its
    // values stay untouched by a post made to it.
    console
        .open_refused("/console/w/globex/retention", 404, "Not found")
        .await;
    console.open("/console/w/acme/retention").await;
    console
        .forge_post("/console/w/globex/retention", &[("succeeded_days", "3")])
        .await;
    console.expect_refused(404, "Not found").await;
    assert_eq!(own(globex.clone()).await, None);

    // A read-only session sees the values and no form; a form posted
    // anyway changes nothing.
    let read_only = api
        .portal_link("acme", &key, json!({"readOnly": true}))
        .await;
    console.delete_cookies().await;
    console.goto(&read_only).await;
    console.wait_for("#total-24h", WAIT).await;
    console.open("/console/w/acme/retention").await;
    assert_row(&console, "succeeded", "7 days", "7 days", "30 days").await;
    assert!(console.try_find("#retention-form").await.is_none());
    console
        .forge_post("/console/w/acme/retention", &[("succeeded_days", "3")])
        .await;
    console.expect_refused(403, "Not allowed").await;
    assert_eq!(own(acme.clone()).await.and_then(|o| o.succeeded), Some(7));
}

async fn set_field(console: &ConsoleBrowser, css: &str, value: &str) {
    let field = console.find(css).await;
    field.clear().await;
    if !value.is_empty() {
        field.send_keys(value).await;
    }
}

/// The table's row `row`: what applies, the workspace's own value and the
/// deployment's.
async fn assert_row(
    console: &ConsoleBrowser,
    row: &str,
    effective: &str,
    own: &str,
    default: &str,
) {
    let row = console.find(&format!("#row-{row}")).await;
    assert_eq!(row.find(".effective").await.text().await, effective);
    assert_eq!(row.find(".own").await.text().await, own);
    assert_eq!(row.find(".default").await.text().await, default);
}
