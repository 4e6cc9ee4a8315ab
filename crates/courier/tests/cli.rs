//! The `courier` binary as an operator runs it: what it says about its
//! configuration, how its log reads outside a terminal, and what its admin
//! commands print.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `courier` on a SQLite ledger of its own, with no COURIER variables but
/// the ones a test sets; output piped. The ledger goes with it.
struct Courier {
    dir: PathBuf,
}

impl Courier {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("courier-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn run(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
        command.args(args).current_dir(&self.dir);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("COURIER")) {
            command.env_remove(key);
        }
        command
            .env(
                "COURIER__DATABASE__URL",
                format!("sqlite://{}", self.dir.join("c.db").display()),
            )
            .env_remove("RUST_LOG")
            .envs(vars.iter().copied());
        command.output().expect("run courier")
    }

    /// Runs a command that must succeed and prints JSON.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.run(args, &[]);
        assert!(output.status.success(), "{args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[test]
fn a_variable_with_one_underscore_is_named_and_piped_logs_have_no_colour() {
    let output = Courier::new().run(&["migrate"], &[("COURIER_DELIVERY__TIMEOUT_MS", "5")]);
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8(output.stderr).unwrap();
    assert!(
        log.contains("COURIER_DELIVERY__TIMEOUT_MS configures nothing")
            && log.contains("COURIER__DELIVERY__TIMEOUT_MS"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

#[test]
fn an_unknown_log_level_stops_courier_naming_the_key() {
    let output = Courier::new().run(&["migrate"], &[("COURIER__LOG__LEVEL", "verbose")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("log.level") && error.contains("\"verbose\" is not a log level"),
        "{error}"
    );
}

/// The CLI prints a webhook as the REST API does: camelCase, `events` and
/// `active`, the secret on create and get but not in lists.
#[test]
fn webhook_commands_print_the_rest_representation() {
    let courier = Courier::new();
    courier.json(&["migrate"]);
    courier.json(&["workspace", "create", "--id", "acme", "--name", "Acme"]);
    let created = courier.json(&[
        "webhook",
        "create",
        "--workspace",
        "acme",
        "--name",
        "erp",
        "--url",
        "https://erp.example.com/hooks",
        "--events",
        "order.created,order.canceled",
    ]);
    assert_eq!(
        created["events"],
        serde_json::json!(["order.created", "order.canceled"])
    );
    assert_eq!(created["active"], true);
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(created["createdAt"].is_string());
    assert!(created.get("event_types").is_none(), "{created}");

    let id = created["id"].as_str().unwrap();
    let got = courier.json(&["webhook", "get", "--workspace", "acme", id]);
    assert_eq!(got["secret"], created["secret"]);
    let listed = courier.json(&["webhook", "list", "--workspace", "acme"]);
    assert_eq!(listed[0]["id"], id);
    assert!(listed[0].get("secret").is_none(), "{listed}");
}

/// `courier prune --dry-run` prints per workspace what would go and
/// removes nothing; `courier prune` removes that and prints the same;
/// `--vacuum` rewrites a SQLite file with incremental vacuum.
#[test]
fn prune_prints_what_would_go_then_removes_it() {
    use courier_model::{Event, EventData, EventId, EventType, WorkspaceId};
    use courier_store::{Store, WriteOp};

    let courier = Courier::new();
    courier.json(&["migrate"]);
    let url = format!("sqlite://{}", courier.dir.join("c.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::connect(&url, &Default::default()).await.unwrap();
        let ws = WorkspaceId::parse("acme").unwrap();
        for (id, days) in [("old-1", 40), ("old-2", 31), ("new-1", 2)] {
            let event = Event {
                id: EventId::parse(id).unwrap(),
                workspace_id: ws.clone(),
                event_type: EventType::OrderCreated,
                channel: None,
                occurred_at: chrono::Utc::now(),
                data: EventData::from_value(&serde_json::json!({"order_id": id})),
            };
            // Matched nothing: kept as long as a success (30 days).
            store
                .apply(&[WriteOp::FanOut {
                    event: std::sync::Arc::new(event),
                    deliveries: Vec::new(),
                    paused: Vec::new(),
                }])
                .await
                .unwrap();
            let at = (chrono::Utc::now() - chrono::Duration::days(days))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("UPDATE events SET received_at = ?1 WHERE id = ?2")
                .bind(at)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        store.close().await;
    });

    let dry = courier.json(&["prune", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["defaults"]["succeeded_days"], 30);
    assert_eq!(dry["workspaces"][0]["workspace"], "acme", "{dry}");
    assert_eq!(dry["workspaces"][0]["events"], 2, "{dry}");
    assert_eq!(dry["total"]["events"], 2, "{dry}");
    let done = courier.json(&["prune"]);
    assert_eq!(done["dry_run"], false, "{done}");
    assert_eq!(done["workspaces"], dry["workspaces"], "{done}");
    assert_eq!(done["total"], dry["total"], "{done}");
    let again = courier.json(&["prune", "--vacuum"]);
    assert_eq!(again["total"]["events"], 0, "{again}");
    assert_eq!(again["vacuum"]["incremental"], true, "{again}");
    // A dry run rewrites nothing.
    let output = courier.run(&["prune", "--dry-run", "--vacuum"], &[]);
    assert!(!output.status.success(), "--vacuum is no dry run");
}
