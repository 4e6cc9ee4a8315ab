//! The deployment files in deploy/ checked against courier itself: the
//! Kubernetes manifests and the compose file parse and hang together
//! (selectors, probes, configuration keys courier really reads), and every
//! metric the alert rules and the Grafana dashboard use is one a running
//! courier exports on /metrics.
//!
//! deploy/check.sh covers what promtool can: Prometheus config syntax, rule
//! syntax and the alerts' unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use courier_model::{Event, EventType};
use courier_tests::{Behavior, Db, Receiver, TestEnv, wait_for};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use serde_norway::Value;

/// The metrics courier exports: the operators' contract (docs/operations.md,
/// "Metrics").
/// Histograms by their base name.
const EXPORTED_METRICS: &[&str] = &[
    "courier_events_consumed_total",
    "courier_events_unmatched_total",
    "courier_deliveries_created_total",
    "courier_attempts_total",
    "courier_attempt_duration_seconds",
    "courier_delivery_latency_seconds",
    "courier_dead_lettered_total",
    "courier_poison_messages_total",
    "courier_deliveries_in_flight",
    "courier_deliveries_deferred_total",
    "courier_deliveries_held",
    "courier_endpoint_circuit_opened_total",
    "courier_webhook_circuits_open",
    "courier_webhook_circuit_longest_open_seconds",
    "courier_webhooks_disabled",
    "courier_webhooks_disabled_total",
    "courier_deliveries_paused",
    "courier_webhook_notices_total",
    "courier_queue_messages",
    "courier_queue_consumers",
    "courier_ledger_batch_size",
    "courier_publish_confirms_total",
    "courier_publish_confirm_seconds",
    "courier_subscriptions_cached",
    "courier_retention_pruned_total",
    "courier_retention_runs_total",
    "courier_retention_last_run_timestamp_seconds",
    "courier_retention_reclaimed_bytes_total",
    "courier_build_info",
];

/// The configuration keys courier documents (docs/configuration.md).
const CONFIG_KEYS: &[&str] = &[
    "database.url",
    "database.max_connections",
    "database.sqlite_synchronous",
    "database.sqlite_commit_interval_ms",
    "amqp.url",
    "amqp.prefix",
    "amqp.prefetch",
    "http.listen",
    "api.admin_token",
    "delivery.timeout_ms",
    "delivery.max_in_flight",
    "delivery.per_endpoint_in_flight",
    "delivery.inline_first_attempt",
    "delivery.quick_ms",
    "delivery.require_https",
    "delivery.allow_private_networks",
    "delivery.retry_client_errors",
    "delivery.subscription_refresh_ms",
    "delivery.shutdown_grace_ms",
    "endpoints.disable_after_seconds",
    "endpoints.failing_after_attempts",
    "retry.initial_delay_ms",
    "retry.multiplier",
    "retry.max_delay_ms",
    "retry.max_attempts",
    "retry.jitter",
    "retention.enabled",
    "retention.succeeded_days",
    "retention.failed_days",
    "retention.max_days",
    "retention.interval_secs",
    "retention.batch_rows",
    "retention.duty_percent",
    "log.format",
    "log.level",
];

/// Keys that carry credentials: Secret only, never a ConfigMap.
const SECRET_KEYS: &[&str] = &["database.url", "amqp.url", "api.admin_token"];

/// The only paths courier serves health on.
const HEALTH_PATHS: &[&str] = &["/healthz", "/readyz"];
const HTTP_PORT: u64 = 8080;
/// delivery.shutdown_grace_ms when not configured.
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 15_000;

// --- reading files -----------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of a file (`---` separated), merge keys applied as
/// docker compose applies them; empty documents skipped.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let mut value: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("{relative}: invalid YAML: {e}"));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{relative}: merge keys: {e}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn yaml_document(relative: &str) -> Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(documents.len(), 1, "{relative}: expected one YAML document");
    documents.remove(0)
}

// --- navigating YAML ---------------------------------------------------------

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn text<'a>(value: &'a Value, path: &[&str], context: &str) -> &'a str {
    at(value, path)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| panic!("{context}: {} is missing or not a string", path.join(".")))
}

fn items(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings(value: Option<&Value>) -> Vec<String> {
    items(value)
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("expected a string, got {other:?}"),
        })
        .collect()
}

/// A string-to-string mapping (labels, selectors, ConfigMap data).
fn string_map(value: Option<&Value>, context: &str) -> BTreeMap<String, String> {
    let Some(value) = value else {
        return BTreeMap::new();
    };
    let mapping = value
        .as_mapping()
        .unwrap_or_else(|| panic!("{context}: expected a mapping, got {value:?}"));
    mapping
        .iter()
        .map(|(k, v)| {
            let key = k.as_str().unwrap_or_else(|| panic!("{context}: key {k:?}"));
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{context}: {key}: expected a scalar, got {other:?}"),
            };
            (key.to_owned(), value)
        })
        .collect()
}

/// `subset`'s pairs all appear in `labels` (how a label selector matches).
fn selects(subset: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !subset.is_empty() && subset.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// --- configuration -----------------------------------------------------------

/// `COURIER__DELIVERY__TIMEOUT_MS` -> `delivery.timeout_ms`, or why not.
fn config_key(variable: &str) -> Result<String, String> {
    let rest = variable
        .strip_prefix("COURIER__")
        .ok_or_else(|| format!("{variable} does not start with COURIER__"))?;
    let parts: Vec<&str> = rest.split("__").collect();
    let key = parts.join(".").to_ascii_lowercase();
    if parts.len() != 2 || !CONFIG_KEYS.contains(&key.as_str()) {
        return Err(format!(
            "{variable} is not a documented configuration key (COURIER__SECTION__KEY of {CONFIG_KEYS:?})"
        ));
    }
    Ok(key)
}

/// courier's own loader accepts these variables: names it knows, values it
/// can parse and that pass its validation.
fn assert_courier_loads(vars: &BTreeMap<String, String>, context: &str) -> courier::Settings {
    for name in vars.keys() {
        if let Err(e) = config_key(name) {
            panic!("{context}: {e}");
        }
    }
    courier::Settings::load_from(None, vars.clone())
        .unwrap_or_else(|e| panic!("{context}: courier refuses this configuration: {e}"))
}

// --- metric names ------------------------------------------------------------

fn is_name_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// A histogram's series name (`_bucket`, `_sum`, `_count`) as its base name,
/// when that base is an exported metric.
fn base_name(name: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && EXPORTED_METRICS.contains(&base)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

/// Every `courier_[a-z0-9_]+` token of `text` that starts a word.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("courier_") {
        let start = from + offset;
        let mut end = start + "courier_".len();
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        let starts_word =
            start == 0 || !(is_name_char(bytes[start - 1]) || bytes[start - 1] == b':');
        if starts_word && end > start + "courier_".len() {
            names.insert(base_name(&text[start..end]));
        }
        from = end;
    }
    names
}

/// Metric names in the alert rules' expressions.
fn alert_metrics() -> BTreeSet<String> {
    let rules = yaml_document("deploy/prometheus/alerts.yml");
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    for group in items(rules.get("groups")) {
        for rule in items(group.get("rules")) {
            names.extend(metric_names(text(rule, &["expr"], "alerts.yml rule")));
            exprs += 1;
        }
    }
    assert!(exprs > 0, "alerts.yml has no rules");
    names
}

/// Metric names anywhere in the dashboard's strings (targets, variables,
/// descriptions).
fn dashboard_metrics() -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, names: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::String(s) => names.extend(metric_names(s)),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, names)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/courier.json"))
        .expect("deploy/grafana/courier.json is JSON");
    let mut names = BTreeSet::new();
    walk(&dashboard, &mut names);
    names
}

/// Metric names of a Prometheus text exposition (`# TYPE` lines and samples).
fn exposed_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| name.starts_with("courier_"))
        .map(base_name)
        .collect()
}

#[test]
fn metric_extractor_finds_names_and_strips_histogram_suffixes() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(courier_delivery_latency_seconds_bucket[5m])))
           / sum(courier_queue_messages{job="courier-worker"}) and my_courier_thing and record:courier_x
           courier_unknown_count"#,
    );
    let expected: BTreeSet<String> = [
        "courier_delivery_latency_seconds",
        "courier_queue_messages",
        "courier_unknown_count",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let exported: BTreeSet<String> = EXPORTED_METRICS.iter().map(|s| s.to_string()).collect();
    for (file, used) in [
        ("deploy/prometheus/alerts.yml", alert_metrics()),
        ("deploy/grafana/courier.json", dashboard_metrics()),
    ] {
        assert!(!used.is_empty(), "{file} uses no courier metric");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics courier does not export: {unknown:?}"
        );
    }
}

// --- Kubernetes ----------------------------------------------------------------

struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        text(&self.doc, &["kind"], &self.file)
    }

    fn name(&self) -> &str {
        text(&self.doc, &["metadata", "name"], &self.file)
    }

    fn context(&self) -> String {
        format!("{} ({} {})", self.file, self.kind(), self.name())
    }
}

/// The manifests listed by deploy/k8s/kustomization.yaml, after checking that
/// it lists exactly the YAML files of the folder.
fn k8s_manifests() -> Vec<Manifest> {
    let dir = repo_root().join("deploy/k8s");
    let mut on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    assert!(
        on_disk.remove("kustomization.yaml"),
        "deploy/k8s/kustomization.yaml is missing"
    );
    let kustomization = yaml_document("deploy/k8s/kustomization.yaml");
    assert_eq!(
        text(&kustomization, &["kind"], "kustomization.yaml"),
        "Kustomization"
    );
    let listed: BTreeSet<String> = strings(kustomization.get("resources"))
        .into_iter()
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources must list every manifest in deploy/k8s"
    );

    let mut manifests = Vec::new();
    for file in listed {
        for doc in yaml_documents(&format!("deploy/k8s/{file}")) {
            let manifest = Manifest {
                file: file.clone(),
                doc,
            };
            text(&manifest.doc, &["apiVersion"], &file);
            let context = manifest.context();
            assert!(
                at(&manifest.doc, &["metadata", "namespace"]).is_none(),
                "{context}: manifests are namespace-less (set it with kustomize or -n)"
            );
            manifests.push(manifest);
        }
    }
    manifests
}

fn one<'a>(
    manifests: &'a [Manifest],
    kind: &str,
    pick: impl Fn(&Manifest) -> bool,
) -> &'a Manifest {
    let found: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == kind && pick(m))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one such {kind}, found {:?}",
        found.iter().map(|m| m.name()).collect::<Vec<_>>()
    );
    found[0]
}

fn pod_spec(workload: &Manifest) -> &Value {
    at(&workload.doc, &["spec", "template", "spec"])
        .unwrap_or_else(|| panic!("{}: no spec.template.spec", workload.context()))
}

fn template_labels(workload: &Manifest) -> BTreeMap<String, String> {
    string_map(
        at(&workload.doc, &["spec", "template", "metadata", "labels"]),
        &workload.context(),
    )
}

fn containers(workload: &Manifest) -> &[Value] {
    let containers = items(pod_spec(workload).get("containers"));
    assert!(
        !containers.is_empty(),
        "{}: no containers",
        workload.context()
    );
    containers
}

fn args(container: &Value) -> Vec<String> {
    strings(container.get("args"))
}

/// Whether `port` (a number or a port name) is the container's port 8080.
fn is_http_port(port: Option<&Value>, container: &Value) -> bool {
    match port {
        Some(Value::Number(n)) => n.as_u64() == Some(HTTP_PORT),
        Some(Value::String(name)) => items(container.get("ports")).iter().any(|p| {
            p.get("name").and_then(Value::as_str) == Some(name)
                && p.get("containerPort").and_then(Value::as_u64) == Some(HTTP_PORT)
        }),
        _ => false,
    }
}

fn configured_shutdown_grace_ms(manifests: &[Manifest]) -> u64 {
    manifests
        .iter()
        .filter(|m| m.kind() == "ConfigMap")
        .find_map(|m| {
            at(&m.doc, &["data", "COURIER__DELIVERY__SHUTDOWN_GRACE_MS"])
                .and_then(Value::as_str)
                .map(|v| v.parse().expect("shutdown_grace_ms is a number"))
        })
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS)
}

fn check_deployment(deployment: &Manifest, manifests: &[Manifest]) {
    let context = deployment.context();
    let selector = string_map(
        at(&deployment.doc, &["spec", "selector", "matchLabels"]),
        &context,
    );
    assert!(
        selects(&selector, &template_labels(deployment)),
        "{context}: spec.selector.matchLabels {selector:?} must match the template labels"
    );

    let pod = pod_spec(deployment);
    let grace_s = pod
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    let shutdown_ms = configured_shutdown_grace_ms(manifests);
    assert!(
        grace_s * 1000 > shutdown_ms,
        "{context}: terminationGracePeriodSeconds ({grace_s} s) must exceed delivery.shutdown_grace_ms ({shutdown_ms} ms)"
    );
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
        Some(true),
        "{context}: pod securityContext.runAsNonRoot must be true"
    );

    for container in containers(deployment) {
        text(container, &["image"], &context);
        assert_eq!(
            args(container).first().map(String::as_str),
            Some("serve"),
            "{context}: a Deployment runs `courier serve`"
        );
        assert!(
            items(container.get("ports"))
                .iter()
                .any(|p| p.get("containerPort").and_then(Value::as_u64) == Some(HTTP_PORT)),
            "{context}: the container must declare containerPort {HTTP_PORT}"
        );
        for (probe, expected_path) in [
            ("readinessProbe", Some("/readyz")),
            ("livenessProbe", Some("/healthz")),
            ("startupProbe", None),
        ] {
            let Some(spec) = container.get(probe) else {
                assert!(expected_path.is_none(), "{context}: {probe} is missing");
                continue;
            };
            let path = text(spec, &["httpGet", "path"], &format!("{context} {probe}"));
            assert!(
                HEALTH_PATHS.contains(&path),
                "{context}: {probe} probes {path}, which courier does not serve (only {HEALTH_PATHS:?})"
            );
            if let Some(expected) = expected_path {
                assert_eq!(path, expected, "{context}: {probe} path");
            }
            assert!(
                is_http_port(at(spec, &["httpGet", "port"]), container),
                "{context}: {probe} must probe port {HTTP_PORT}"
            );
        }
        assert!(
            at(container, &["resources", "requests"]).is_some(),
            "{context}: resources.requests must be set (scheduling, HPA)"
        );
        check_env_from(container, manifests, &context);
    }
}

/// envFrom points at a ConfigMap and a Secret defined here.
fn check_env_from(container: &Value, manifests: &[Manifest], context: &str) {
    let sources = items(container.get("envFrom"));
    for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
        let names: Vec<&str> = sources
            .iter()
            .filter_map(|s| at(s, &[field, "name"]).and_then(Value::as_str))
            .collect();
        assert!(!names.is_empty(), "{context}: envFrom has no {field}");
        for name in names {
            assert!(
                manifests
                    .iter()
                    .any(|m| m.kind() == kind && m.name() == name),
                "{context}: envFrom {field} {name} is not a {kind} in deploy/k8s"
            );
        }
    }
}

#[test]
fn kubernetes_manifests_are_complete_and_consistent() {
    let manifests = k8s_manifests();
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Job",
    ] {
        assert!(
            manifests.iter().any(|m| m.kind() == kind),
            "deploy/k8s has no {kind}"
        );
    }

    let role = |flag: &'static str| {
        move |m: &Manifest| {
            containers(m)
                .iter()
                .any(|c| args(c).iter().any(|a| a == flag))
        }
    };
    let worker = one(&manifests, "Deployment", role("--no-api"));
    let api = one(&manifests, "Deployment", role("--no-worker"));
    for deployment in manifests.iter().filter(|m| m.kind() == "Deployment") {
        check_deployment(deployment, &manifests);
    }
    let worker_labels = template_labels(worker);
    let api_labels = template_labels(api);

    // Workers are scraped by annotation; there is no Service in front of them.
    let annotations = string_map(
        at(
            &worker.doc,
            &["spec", "template", "metadata", "annotations"],
        ),
        &worker.context(),
    );
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("8080")
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );

    let hpa = one(&manifests, "HorizontalPodAutoscaler", |_| true);
    assert_eq!(text(&hpa.doc, &["apiVersion"], "hpa"), "autoscaling/v2");
    assert_eq!(
        text(&hpa.doc, &["spec", "scaleTargetRef", "kind"], "hpa"),
        "Deployment"
    );
    assert_eq!(
        text(&hpa.doc, &["spec", "scaleTargetRef", "name"], "hpa"),
        worker.name(),
        "the HPA must scale the worker Deployment"
    );
    let min = at(&hpa.doc, &["spec", "minReplicas"]).and_then(Value::as_u64);
    let max = at(&hpa.doc, &["spec", "maxReplicas"]).and_then(Value::as_u64);
    assert!(
        matches!((min, max), (Some(min), Some(max)) if min >= 1 && min <= max),
        "HPA replicas: min {min:?}, max {max:?}"
    );
    let scales_on_cpu = items(at(&hpa.doc, &["spec", "metrics"]))
        .iter()
        .any(|m| at(m, &["resource", "name"]).and_then(Value::as_str) == Some("cpu"));
    if scales_on_cpu {
        assert!(
            containers(worker)
                .iter()
                .all(|c| at(c, &["resources", "requests", "cpu"]).is_some()),
            "a CPU-based HPA needs a CPU request on every worker container"
        );
    }

    let pdb = one(&manifests, "PodDisruptionBudget", |_| true);
    assert_eq!(text(&pdb.doc, &["apiVersion"], "pdb"), "policy/v1");
    let pdb_selector = string_map(
        at(&pdb.doc, &["spec", "selector", "matchLabels"]),
        &pdb.context(),
    );
    assert!(
        selects(&pdb_selector, &worker_labels),
        "the PodDisruptionBudget selector {pdb_selector:?} must match the worker pods {worker_labels:?}"
    );
    assert!(
        !selects(&pdb_selector, &api_labels),
        "the worker PodDisruptionBudget must not also count API pods"
    );

    let service = one(&manifests, "Service", |_| true);
    let service_selector = string_map(at(&service.doc, &["spec", "selector"]), &service.context());
    assert!(
        selects(&service_selector, &api_labels),
        "the Service selector {service_selector:?} must match the API pods {api_labels:?}"
    );
    assert!(
        !selects(&service_selector, &worker_labels),
        "the API Service must not route to worker pods"
    );
    let api_container = &containers(api)[0];
    for port in items(at(&service.doc, &["spec", "ports"])) {
        assert!(
            is_http_port(port.get("targetPort"), api_container),
            "the Service's targetPort must be the API container's port {HTTP_PORT}"
        );
    }

    let job = one(&manifests, "Job", |_| true);
    for container in containers(job) {
        text(container, &["image"], &job.context());
        assert_eq!(args(container), ["migrate"], "{}", job.context());
        check_env_from(container, &manifests, &job.context());
    }
    let restart = text(pod_spec(job), &["restartPolicy"], &job.context());
    assert!(
        restart == "Never" || restart == "OnFailure",
        "{}: restartPolicy {restart}",
        job.context()
    );
}

#[test]
fn kubernetes_configuration_is_what_courier_reads() {
    let manifests = k8s_manifests();
    let config_map = one(&manifests, "ConfigMap", |_| true);
    let secret = one(&manifests, "Secret", |_| true);
    assert!(
        secret.doc.get("data").is_none(),
        "secret.yaml: use stringData (readable placeholders), not base64 data"
    );
    let config = string_map(config_map.doc.get("data"), &config_map.context());
    let secrets = string_map(secret.doc.get("stringData"), &secret.context());

    for (name, value) in &config {
        let key = config_key(name).unwrap_or_else(|e| panic!("configmap.yaml: {e}"));
        assert!(
            !SECRET_KEYS.contains(&key.as_str()),
            "configmap.yaml: {name} is a credential; it belongs in secret.yaml"
        );
        assert!(!value.is_empty(), "configmap.yaml: {name} is empty");
    }
    let secret_keys: BTreeSet<String> = secrets
        .keys()
        .map(|name| config_key(name).unwrap_or_else(|e| panic!("secret.yaml: {e}")))
        .collect();
    let expected: BTreeSet<String> = SECRET_KEYS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        secret_keys, expected,
        "secret.yaml must hold exactly the credentials"
    );
    for (name, value) in &secrets {
        assert!(
            value.contains("CHANGE_ME"),
            "secret.yaml: {name} must be a CHANGE_ME placeholder, never a real credential"
        );
    }

    let mut vars = config.clone();
    vars.extend(secrets);
    let settings = assert_courier_loads(&vars, "deploy/k8s ConfigMap + Secret");
    assert_eq!(
        settings.http.listen.port() as u64,
        HTTP_PORT,
        "http.listen must be the port the probes and scrapes use"
    );
    assert!(
        settings.http.listen.ip().is_unspecified(),
        "in a pod, http.listen must be 0.0.0.0 so probes and Prometheus reach it"
    );
    assert!(
        settings.database.url.starts_with("postgres"),
        "several replicas need a shared PostgreSQL ledger, not SQLite"
    );
}

// --- docker compose --------------------------------------------------------------

/// `environment:` as a mapping or as a list of `NAME=value`.
fn compose_environment(service: &Value, context: &str) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|item| {
                let entry = item
                    .as_str()
                    .unwrap_or_else(|| panic!("{context}: {item:?}"));
                let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        other => string_map(other, context),
    }
}

#[test]
fn compose_file_runs_the_documented_topology() {
    let compose = yaml_document("deploy/docker-compose.yml");
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml: services");
    let service = |name: &str| {
        services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml: no service {name}"))
    };
    let command = |name: &str| strings(service(name).get("command"));
    let ports = |name: &str| strings(service(name).get("ports"));

    assert!(text(service("rabbitmq"), &["image"], "rabbitmq").contains("management"));
    let rabbit_ports = ports("rabbitmq");
    for port in ["5672", "15672"] {
        assert!(
            rabbit_ports
                .iter()
                .any(|p| p.ends_with(&format!(":{port}"))),
            "rabbitmq must publish {port}: {rabbit_ports:?}"
        );
    }
    assert!(text(service("postgres"), &["image"], "postgres").starts_with("postgres:16"));
    assert!(
        service("postgres").get("healthcheck").is_some(),
        "postgres needs a healthcheck for depends_on: service_healthy"
    );

    assert_eq!(command("migrate"), ["migrate"]);
    assert_eq!(command("worker"), ["serve", "--no-api"]);
    assert_eq!(command("api"), ["serve", "--no-worker"]);
    assert_eq!(
        at(service("worker"), &["deploy", "replicas"]).and_then(Value::as_u64),
        Some(2),
        "two worker replicas"
    );
    assert!(
        ports("worker").is_empty(),
        "replicated workers cannot publish a host port"
    );
    assert!(
        ports("api").iter().any(|p| p.ends_with(":8080")),
        "the API's port 8080 is published"
    );

    // Every dependency waits for a state, not just for a container to exist.
    for (name, definition) in services {
        let name = name.as_str().unwrap();
        let Some(depends_on) = definition.get("depends_on") else {
            continue;
        };
        let depends_on = depends_on
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: depends_on must be a mapping with conditions"));
        for (dependency, spec) in depends_on {
            let dependency = dependency.as_str().unwrap();
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
            let condition = text(spec, &["condition"], &format!("{name} -> {dependency}"));
            assert!(
                [
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully"
                ]
                .contains(&condition),
                "{name} -> {dependency}: condition {condition}"
            );
            if condition == "service_healthy" {
                assert!(
                    services
                        .get(dependency)
                        .and_then(|d| d.get("healthcheck"))
                        .is_some(),
                    "{name} waits for {dependency} to be healthy, which has no healthcheck"
                );
            }
        }
    }
    for name in ["worker", "api"] {
        assert_eq!(
            at(service(name), &["depends_on", "migrate", "condition"]).and_then(Value::as_str),
            Some("service_completed_successfully"),
            "{name} starts after the migrations"
        );
    }

    // courier's configuration loads, and the image is built from here.
    for name in ["migrate", "worker", "api"] {
        let vars = compose_environment(service(name), name);
        let settings = assert_courier_loads(&vars, &format!("docker-compose.yml {name}"));
        assert!(settings.http.listen.ip().is_unspecified());
        assert_eq!(settings.http.listen.port() as u64, HTTP_PORT);
        let dockerfile = text(service(name), &["build", "dockerfile"], name);
        let context = text(service(name), &["build", "context"], name);
        let path = repo_root().join("deploy").join(context).join(dockerfile);
        assert!(path.exists(), "{name}: {} does not exist", path.display());
    }

    // Bind mounts point at files in deploy/.
    for name in ["prometheus", "grafana"] {
        for volume in strings(service(name).get("volumes")) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                let path = repo_root().join("deploy").join(source);
                assert!(
                    path.exists(),
                    "{name} mounts {volume}: {} is missing",
                    path.display()
                );
            }
        }
    }
    let mounts = |name: &str| strings(service(name).get("volumes")).join(" ");
    assert!(mounts("prometheus").contains("./prometheus:"));
    assert!(mounts("grafana").contains("./grafana/provisioning:"));
    assert!(mounts("grafana").contains("./grafana/courier.json:"));

    // Prometheus scrapes courier services, on the port courier listens on.
    let prometheus = yaml_document("deploy/prometheus/prometheus.yml");
    let mut scraped = BTreeSet::new();
    for job in items(prometheus.get("scrape_configs")) {
        for config in items(job.get("static_configs")) {
            for target in strings(config.get("targets")) {
                let (host, port) = target.split_once(':').expect("target host:port");
                assert_eq!(port, "8080", "{target}");
                scraped.insert(host.to_owned());
            }
        }
        for config in items(job.get("dns_sd_configs")) {
            assert_eq!(config.get("port").and_then(Value::as_u64), Some(HTTP_PORT));
            scraped.extend(strings(config.get("names")));
        }
    }
    let expected: BTreeSet<String> = ["worker", "api"].map(String::from).into();
    assert_eq!(
        scraped, expected,
        "prometheus.yml scrapes the courier services"
    );
    assert_eq!(strings(prometheus.get("rule_files")), ["alerts.yml"]);
}

// --- Dockerfile ------------------------------------------------------------------

#[test]
fn dockerfile_builds_a_small_non_root_image() {
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (word, rest) = line.split_once(char::is_whitespace)?;
            Some((word.to_ascii_uppercase(), rest.trim().to_owned()))
        })
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (word, _))| word == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let runtime = &instructions[*stages.last().unwrap()..];
    assert!(
        runtime[0].1.starts_with("debian:bookworm-slim"),
        "runtime stage on debian:bookworm-slim, got {}",
        runtime[0].1
    );
    let find = |word: &str| {
        runtime
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, rest)| rest.as_str())
            .next_back()
    };
    let user = find("USER").expect("the runtime stage sets USER");
    let user_name = user.split(':').next().unwrap();
    assert!(
        !["root", "0"].contains(&user_name),
        "the image must not run as root (USER {user})"
    );
    assert!(
        user_name.chars().all(|c| c.is_ascii_digit()),
        "USER must be numeric for Kubernetes' runAsNonRoot to verify it"
    );
    assert_eq!(find("EXPOSE"), Some("8080"));
    assert_eq!(find("ENTRYPOINT"), Some(r#"["courier"]"#));
    assert_eq!(find("CMD"), Some(r#"["serve"]"#));
    assert!(
        dockerfile.contains("ca-certificates"),
        "HTTPS webhooks need CA roots"
    );

    let dockerignore = read(".dockerignore");
    for entry in ["target", "*.db"] {
        assert!(
            dockerignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == entry),
            ".dockerignore must exclude {entry}"
        );
    }
}

// --- the live part -----------------------------------------------------------------

async fn get_metrics(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// Runs a courier, makes it deliver, dead-letter and set aside a poison
/// message (labelled counters only appear once used), and checks that
/// /metrics exposes every metric the rules and the dashboard query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_used_by_alerts_and_dashboard_are_exported_live() {
    let mut used = alert_metrics();
    used.extend(dashboard_metrics());

    let env = TestEnv::new(Db::Sqlite).await;
    let ws = env.workspace("acme").await;
    let ok = Receiver::start(Behavior::Ok).await;
    let failing = Receiver::start(Behavior::Status(500)).await;
    env.webhook(&ws, &ok.url(), &["order.created"], &[]).await;
    env.webhook(&ws, &failing.url(), &["shipment.created"], &[])
        .await;

    let worker = env.start_worker().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", worker.http_addr);
    wait_for("/metrics to answer", Duration::from_secs(30), || async {
        get_metrics(&client, &url).await.is_some()
    })
    .await;

    let (publisher, connection) = env.publisher().await;
    for ty in [EventType::OrderCreated, EventType::ShipmentCreated] {
        let event = Event::new(ws.clone(), ty, None, json!({"order_id": "o-1"})).unwrap();
        publisher.publish(&event).await.unwrap();
    }
    let topology = env.topology();
    let channel = connection.create_channel().await.unwrap();
    topology.declare_all(&channel).await.unwrap();
    channel
        .basic_publish(
            topology.events_exchange().as_str().into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            b"not an event",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The dead letter takes the test schedule's four attempts (~1.5 s) and
    // the broker-read gauges a poll; give both time, then name what is
    // missing rather than just timing out.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (missing, exposition) = loop {
        let exposition = get_metrics(&client, &url).await.unwrap_or_default();
        let live = exposed_metrics(&exposition);
        let missing: Vec<String> = used.difference(&live).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, exposition);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    worker.stop().await.unwrap();
    assert!(
        ok.count() >= 1,
        "the healthy receiver got nothing: the traffic did not flow"
    );
    assert!(
        missing.is_empty(),
        "deploy/ (alerts.yml, courier.json) queries metrics that a running courier does not export: \
         {missing:?}\n--- /metrics ---\n{exposition}"
    );
}
