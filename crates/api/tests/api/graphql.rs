//! GraphQL: the operations as clients send them, and the explorer page
//! (GraphiQL) with the requests it makes.

use std::sync::Arc;

use courier_model::{DeliveryStatus, EventType};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::common::{App, attempt, run, seed};
use crate::on_both_backends;

on_both_backends!(
    graphql_operations_as_clients_send_them => DEFAULT,
    graphql_tools_can_introspect_the_schema => DEFAULT,
    the_explorer_is_served_from_courier_under_its_csp => Setup { graphql_explorer: true, ..DEFAULT },
    the_explorers_introspection_query_is_answered => Setup { graphql_explorer: true, ..DEFAULT },
    without_the_explorer_get_is_refused_as_before => DEFAULT,
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

/// The query GraphiQL 4.1.2 (the vendored explorer) sends when it starts and
/// when its key changes, as its bundled graphql-js 16.11.0 prints it with
/// `getIntrospectionQuery({inputValueDeprecation: false, schemaDescription:
/// false})`: fragments, and type references unwrapped nine levels deep
/// (15 in all, under the schema's limit of 16).
const EXPLORER_INTROSPECTION: &str = r#"
    query IntrospectionQuery {
      __schema {

        queryType { name kind }
        mutationType { name kind }
        subscriptionType { name kind }
        types {
          ...FullType
        }
        directives {
          name
          description

          locations
          args {
            ...InputValue
          }
        }
      }
    }

    fragment FullType on __Type {
      kind
      name
      description


      fields(includeDeprecated: true) {
        name
        description
        args {
          ...InputValue
        }
        type {
          ...TypeRef
        }
        isDeprecated
        deprecationReason
      }
      inputFields {
        ...InputValue
      }
      interfaces {
        ...TypeRef
      }
      enumValues(includeDeprecated: true) {
        name
        description
        isDeprecated
        deprecationReason
      }
      possibleTypes {
        ...TypeRef
      }
    }

    fragment InputValue on __InputValue {
      name
      description
      type { ...TypeRef }
      defaultValue


    }

    fragment TypeRef on __Type {
      kind
      name
      ofType {
        kind
        name
        ofType {
          kind
          name
          ofType {
            kind
            name
            ofType {
              kind
              name
              ofType {
                kind
                name
                ofType {
                  kind
                  name
                  ofType {
                    kind
                    name
                    ofType {
                      kind
                      name
                      ofType {
                        kind
                        name
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
"#;

/// The explorer's requests as `static/graphql/explorer.js` makes them: a
/// JSON POST to the page's own URL, with the headers typed in GraphiQL.
async fn explorer_post(app: &App, authorization: Option<&str>) -> (StatusCode, Value) {
    let mut request = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("accept", "application/json")
        .json(&json!({"query": EXPLORER_INTROSPECTION, "operationName": "IntrospectionQuery"}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn the_explorers_introspection_query_is_answered(app: Arc<App>) {
    // Before the key is typed (the page's header template has none): 401,
    // with `data` present so GraphiQL shows the error instead of trying an
    // older form of the query.
    for authorization in [None, Some("Bearer ")] {
        let (status, body) = explorer_post(&app, authorization).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.as_object().unwrap().contains_key("data"), "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }

    let (_, key) = app.tenant().await;
    let (status, body) = explorer_post(&app, Some(&format!("Bearer {key}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let schema = &body["data"]["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query");
    assert_eq!(schema["mutationType"]["name"], "Mutation");
    assert!(schema["subscriptionType"].is_null());
    // Deep enough for every type reference: `webhooks: [Webhook!]!`.
    let query = schema["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Query")
        .unwrap();
    let webhooks = query["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "webhooks")
        .unwrap();
    assert_eq!(
        webhooks["type"],
        json!({"kind": "NON_NULL", "name": null, "ofType": {"kind": "LIST", "name": null,
            "ofType": {"kind": "NON_NULL", "name": null,
            "ofType": {"kind": "OBJECT", "name": "Webhook", "ofType": null}}}})
    );
}

/// The page as a browser loads it, then every script and stylesheet it
/// names: all from courier, with their content types, under the CSP.
async fn the_explorer_is_served_from_courier_under_its_csp(app: Arc<App>) {
    let (status, headers, page) = get(&app, "/graphql").await;
    assert_eq!(status, StatusCode::OK);
    assert_served(&headers, "text/html; charset=utf-8", "no-cache");
    let page = String::from_utf8(page).unwrap();
    // Nothing inline for the policy to have to allow.
    for inline in ["<style", " style=", " onload=", " onerror=", "javascript:"] {
        assert!(!page.contains(inline), "{inline} in the page");
    }
    let scripts = attribute_values(&page, "<script ", "src");
    assert_eq!(
        scripts.len(),
        page.matches("<script").count(),
        "a script without src"
    );
    // The bootstrap runs last, once React and GraphiQL are loaded.
    assert_eq!(scripts.last().unwrap(), "graphql/explorer/explorer.js");
    let stylesheets = attribute_values(&page, "<link rel=\"stylesheet\" ", "href");
    assert_eq!(stylesheets.len(), 2);

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static/graphql");
    let files = scripts
        .iter()
        .map(|src| (src, "text/javascript; charset=utf-8"))
        .chain(
            stylesheets
                .iter()
                .map(|href| (href, "text/css; charset=utf-8")),
        )
        .map(|(path, content_type)| (path.as_str(), content_type))
        .chain([("graphql/explorer/licenses.txt", "text/plain; charset=utf-8")]);
    for (path, content_type) in files {
        // Relative to /graphql, which is what the browser does.
        let name = path.strip_prefix("graphql/explorer/").expect(path);
        let (status, headers, body) = get(&app, &format!("/{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_served(&headers, content_type, "public, max-age=3600");
        let on_disk = match name {
            "explorer.js" | "explorer.css" => format!("{dir}/{name}"),
            "licenses.txt" => format!("{dir}/vendor/LICENSES.txt"),
            _ => format!("{dir}/vendor/{name}"),
        };
        assert!(
            body == std::fs::read(&on_disk).unwrap(),
            "{path} is not {on_disk}"
        );
    }

    let (status, _, _) = get(&app, "/graphql/explorer/README.md").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn without_the_explorer_get_is_refused_as_before(app: Arc<App>) {
    let (status, headers, body) = get(&app, "/graphql").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert!(body.is_empty());
    assert!(headers.get("content-security-policy").is_none());
    for file in ["explorer.js", "graphiql.min.js", "licenses.txt"] {
        let (status, _, _) = get(&app, &format!("/graphql/explorer/{file}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{file}");
    }
}

async fn get(app: &App, path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The explorer's headers: its content type, caching, and a policy that
/// runs scripts from courier only, never inline or through eval, applies
/// no inline style but the one it names by hash, and talks to courier
/// only.
fn assert_served(headers: &HeaderMap, content_type: &str, cache: &str) {
    assert_eq!(headers["content-type"], content_type);
    assert_eq!(headers["cache-control"], cache);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str().unwrap();
    let directive = |name: &str| {
        csp.split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name).filter(|v| v.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {name} in {csp}"))
            .trim()
            .to_owned()
    };
    assert_eq!(directive("default-src"), "'none'");
    assert_eq!(directive("script-src"), "'self'");
    // Stylesheets from courier, and inline ones only by their hash.
    let style = directive("style-src");
    assert!(style.starts_with("'self'"), "{csp}");
    assert!(
        style.split(' ').skip(1).all(|s| s.starts_with("'sha256-")),
        "{csp}"
    );
    assert_eq!(directive("connect-src"), "'self'");
    assert_eq!(directive("frame-ancestors"), "'none'");
    assert!(!csp.contains("unsafe"), "{csp}");
}

/// The values of `attribute` in every tag starting with `tag`.
fn attribute_values(html: &str, tag: &str, attribute: &str) -> Vec<String> {
    html.match_indices(tag)
        .map(|(at, _)| {
            let element = &html[at..at + html[at..].find('>').unwrap()];
            let (_, rest) = element
                .split_once(&format!(" {attribute}=\""))
                .unwrap_or_else(|| panic!("no {attribute} in {element}"));
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}
