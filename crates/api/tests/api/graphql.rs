//! GraphQL: the operations as clients send them.

use std::sync::Arc;

use courier_model::{DeliveryStatus, EventType};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{App, attempt, run, seed};
use crate::on_both_backends;

on_both_backends!(
    graphql_operations_as_clients_send_them => DEFAULT,
    graphql_tools_can_introspect_the_schema => DEFAULT,
);

/// The introspection query GraphQL tools send to learn a schema (the shape
/// of graphql-js's `getIntrospectionQuery`: type references unwrapped eight
/// levels deep), and a query deeper than any use of courier's schema.
async fn graphql_tools_can_introspect_the_schema(app: Arc<App>) {
    let (_, key) = app.tenant().await;
    let type_ref = "kind name ofType { kind name ofType { kind name ofType { kind name \
        ofType { kind name ofType { kind name ofType { kind name ofType { kind name \
        ofType { kind name } } } } } } } }";
    let query = format!(
        "query IntrospectionQuery {{ __schema {{ queryType {{ name }} mutationType {{ name }} \
         subscriptionType {{ name }} types {{ kind name description \
         fields(includeDeprecated: true) {{ name description args {{ name description \
         type {{ {type_ref} }} defaultValue }} type {{ {type_ref} }} isDeprecated \
         deprecationReason }} inputFields {{ name description type {{ {type_ref} }} \
         defaultValue }} interfaces {{ {type_ref} }} enumValues(includeDeprecated: true) \
         {{ name description isDeprecated deprecationReason }} possibleTypes {{ {type_ref} }} }} \
         directives {{ name description locations args {{ name description \
         type {{ {type_ref} }} defaultValue }} }} }} }}"
    );
    let (status, body) = app.gql(Some(&key), &query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let types = body["data"]["__schema"]["types"].as_array().unwrap();
    assert!(types.iter().any(|t| t["name"] == "Webhook"), "{body}");

    // Depth stays bounded for everything else.
    let nested = (0..30).fold("name".to_owned(), |inner, _| {
        format!("ofType {{ {inner} }}")
    });
    let (_, body) = app
        .gql(
            Some(&key),
            &format!("{{ __type(name: \"Webhook\") {{ {nested} }} }}"),
        )
        .await;
    assert!(
        !body["errors"].is_null(),
        "a query 30 levels deep was answered: {body}"
    );
}

async fn graphql_operations_as_clients_send_them(app: Arc<App>) {
    let (ws, key) = app.tenant().await;
    let (_, other_key) = app.tenant().await;
    let (status, body) = app
        .gql(Some(&key), r#"mutation { webhookCreate(input: {url: "http://127.0.0.1:9/hook", type: ORDER_CREATED, status: ENABLED}) { id url type status } }"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let created = &body["data"]["webhookCreate"];
    assert_eq!(created["url"], "http://127.0.0.1:9/hook");
    assert_eq!(created["type"], "ORDER_CREATED");
    assert_eq!(created["status"], "ENABLED");
    let id = created["id"].as_str().unwrap().to_owned();
    // Same webhook over REST.
    let (_, rest) = app
        .get(&format!("/v1/workspaces/{ws}/webhooks/{id}"), &key)
        .await;
    assert_eq!(rest["data"]["events"], json!(["order.created"]));

    let update = format!(
        r#"mutation {{ webhookUpdate(input: {{id: "{id}", url: "http://127.0.0.1:9/new", type: ORDER_STATUS_CHANGED, status: DISABLED}}) {{ id url type status }} }}"#
    );
    let (_, body) = app.gql(Some(&key), &update).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["webhookUpdate"]["type"],
        "ORDER_STATUS_CHANGED"
    );
    assert_eq!(body["data"]["webhookUpdate"]["status"], "DISABLED");
    assert_eq!(
        body["data"]["webhookUpdate"]["url"],
        "http://127.0.0.1:9/new"
    );

    let (_, body) = app
        .gql(Some(&key), "query { webhooks { id url type status } }")
        .await;
    assert_eq!(body["data"]["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"]["webhooks"][0]["id"], id.as_str());

    // Another workspace sees nothing and can change nothing.
    let (_, body) = app.gql(Some(&other_key), "query { webhooks { id } }").await;
    assert_eq!(body["data"]["webhooks"], json!([]));
    let (_, body) = app.gql(Some(&other_key), &update).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );
    // No key, wrong key: 401.
    let (status, body) = app.gql(None, "query { webhooks { id } }").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (status, _) = app.gql(Some("ck_nope"), "query { webhooks { id } }").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Validation errors name the field.
    let (_, body) = app
        .gql(Some(&key), r#"mutation { webhookCreate(input: {url: "not a url", type: ORDER_CREATED, status: ENABLED}) { id } }"#)
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "url", "{body}");

    // webhookLogs, paged with the cursor, filtered by type.
    let hook = app.webhook(&ws, &key, json!({"name": "l", "url": "http://127.0.0.1:9/logs", "events": ["order.created", "order.canceled"]})).await;
    let hook_id = hook["id"].as_str().unwrap();
    let created_ids = seed(&app.store, &ws, hook_id, EventType::OrderCreated, 3).await;
    seed(&app.store, &ws, hook_id, EventType::OrderCanceled, 2).await;
    attempt(
        &app.store,
        created_ids[2],
        1,
        200,
        DeliveryStatus::Succeeded,
    )
    .await;
    let (_, body) = app
        .gql(Some(&key), "query { webhookLogs(first: 2, filter: {type: ORDER_CREATED}) { edges { node { id type url createdAt responseStatus } } pageInfo { hasNextPage endCursor } } }")
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let logs = &body["data"]["webhookLogs"];
    let edges = logs["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert_eq!(edges[0]["node"]["id"], created_ids[2].to_string());
    assert_eq!(edges[0]["node"]["type"], "ORDER_CREATED");
    assert_eq!(edges[0]["node"]["responseStatus"], 200);
    assert_eq!(edges[1]["node"]["url"], "http://127.0.0.1:9/logs");
    assert_eq!(logs["pageInfo"]["hasNextPage"], true);
    let after = logs["pageInfo"]["endCursor"].as_str().unwrap();
    let (_, body) = app
        .gql(Some(&key), &format!(r#"query {{ webhookLogs(first: 20, after: "{after}", filter: {{type: ORDER_CREATED}}) {{ edges {{ node {{ id type url createdAt responseStatus }} }} pageInfo {{ hasNextPage endCursor }} }} }}"#))
        .await;
    let edges = body["data"]["webhookLogs"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["id"], created_ids[0].to_string());
    assert_eq!(
        body["data"]["webhookLogs"]["pageInfo"]["hasNextPage"],
        false
    );
    let (_, body) = app
        .gql(
            Some(&other_key),
            "query { webhookLogs(first: 20) { edges { node { id } } } }",
        )
        .await;
    assert_eq!(body["data"]["webhookLogs"]["edges"], json!([]));

    let (_, body) = app
        .gql(
            Some(&key),
            &format!(r#"mutation {{ webhookDelete(id: "{id}") {{ id }} }}"#),
        )
        .await;
    assert_eq!(body["data"]["webhookDelete"]["id"], id.as_str(), "{body}");
    let (_, body) = app
        .gql(
            Some(&key),
            &format!(r#"mutation {{ webhookDelete(input: {{id: "{hook_id}"}}) {{ id }} }}"#),
        )
        .await;
    assert_eq!(body["data"]["webhookDelete"]["id"], hook_id, "{body}");
    let (_, body) = app.gql(Some(&key), "query { webhooks { id } }").await;
    assert_eq!(body["data"]["webhooks"], json!([]));
}
