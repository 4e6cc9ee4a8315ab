//! The OpenAPI document lists every route the router serves.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{App, run, served_routes};
use crate::on_both_backends;

on_both_backends!(
    openapi_lists_every_served_route => DEFAULT,
);

async fn openapi_lists_every_served_route(app: Arc<App>) {
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "patch", "put", "delete"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = served_routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And every one of them is really served: none falls through to the
    // router's "route not found".
    for (method, path) in served_routes() {
        let concrete = path
            .replace("{ws}", "w")
            .replace("{id}", &uuid::Uuid::new_v4().to_string());
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = app.call(method, &concrete, None, Some(json!({}))).await;
        assert_ne!(body["error"]["message"], "route not found", "{path}");
        assert!(
            status == StatusCode::UNAUTHORIZED || status.is_success(),
            "{path}: {status}"
        );
    }
    let (_, body) = app.call(Method::GET, "/v1/nothing-here", None, None).await;
    assert_eq!(body["error"]["message"], "route not found");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
