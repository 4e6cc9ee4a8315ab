//! `courier`: the server (`serve`), migrations, and the admin CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use courier::settings::{LogFormat, Settings};
use courier::{App, Roles, open_store};
use courier_api::WebhookView;
use courier_api::webhooks::{self, NewWebhook, WebhookPatch, WebhookPolicy};
use courier_model::{SubscriptionId, WorkspaceId};
use courier_store::{Store, Workspace};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Durable webhook delivery for order and shipment events"
)]
struct Cli {
    /// Configuration file (TOML); environment variables COURIER__SECTION__KEY override it.
    #[arg(long, short, global = true, env = "COURIER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the delivery pipeline until SIGTERM or Ctrl-C.
    Serve {
        /// Do not serve the management API (/metrics and health stay).
        #[arg(long)]
        no_api: bool,
        /// Do not run the worker pipeline.
        #[arg(long)]
        no_worker: bool,
        /// Do not serve the web console at /console (also
        /// `console.enabled = false`).
        #[arg(long)]
        no_console: bool,
    },
    /// Apply the ledger migrations for the configured database.
    Migrate,
    /// Remove from the ledger what has outlived its retention, now, and
    /// print per workspace what went (`courier serve` does this every
    /// retention.interval_secs).
    Prune {
        /// Count what would go, per workspace; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// SQLite only: then rewrite the file once (VACUUM) so it uses
        /// incremental vacuum and shrinks after pruning; needed once for a
        /// file created before courier set that. Takes as long as copying
        /// the file and as much free disk: run it with courier stopped.
        #[arg(long, conflicts_with = "dry_run")]
        vacuum: bool,
    },
    /// Manage workspaces (tenants).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Manage webhooks (subscriptions) of a workspace.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Manage API keys (each scoped to one workspace).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Run a local webhook receiver that prints what it gets (for demos).
    Receive {
        #[arg(long, default_value = "127.0.0.1:9999")]
        listen: std::net::SocketAddr,
        /// Verify signatures with this secret.
        #[arg(long)]
        secret: Option<String>,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace; prints it as JSON.
    Create {
        /// The id upstreams publish with; generated (ws_...) when absent.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: String,
    },
    /// List workspaces as JSON.
    List,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key; prints it once (only its hash is stored).
    Create {
        #[command(flatten)]
        ws: WorkspaceArg,
        #[arg(long)]
        name: Option<String>,
    },
    /// List a workspace's keys (ids, names and prefixes; never the keys).
    List {
        #[command(flatten)]
        ws: WorkspaceArg,
    },
    /// Revoke a key by its id (`key_...`): the ledger forgets it and every
    /// running courier is told to stop accepting it.
    Revoke {
        #[command(flatten)]
        ws: WorkspaceArg,
        /// The key's id, as `api-key list` shows it.
        id: String,
    },
}

#[derive(Args)]
struct WorkspaceArg {
    /// The workspace the webhook belongs to.
    #[arg(long, short)]
    workspace: String,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Create a webhook; prints it (with its secret) as JSON.
    Create {
        #[command(flatten)]
        ws: WorkspaceArg,
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (order.created,shipment.created).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Order channels, comma-separated; none means every channel.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Signing secret (whsec_... or base64); generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List a workspace's webhooks as JSON, oldest first.
    List {
        #[command(flatten)]
        ws: WorkspaceArg,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this webhook id.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one webhook as JSON.
    Get {
        #[command(flatten)]
        ws: WorkspaceArg,
        id: String,
    },
    /// Change a webhook; absent flags keep their value.
    Update {
        #[command(flatten)]
        ws: WorkspaceArg,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<String>>,
        /// true to enable, false to disable.
        #[arg(long)]
        active: Option<bool>,
    },
    /// Delete a webhook; its delivery history stays readable.
    Delete {
        #[command(flatten)]
        ws: WorkspaceArg,
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    for name in Settings::unused_variables(std::env::vars()) {
        tracing::warn!(
            variable = %name,
            "{name} configures nothing: courier reads COURIER__SECTION__KEY, with two \
             underscores after COURIER (COURIER__{})",
            name.trim_start_matches("COURIER_")
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Run on the worker threads, not on this one: the consume loops spawn a
    // task per message, and a task spawned from a worker thread usually
    // runs on that thread, with no cross-thread wake-up.
    let outcome = runtime.block_on(async { tokio::spawn(run(cli.command, settings)).await });
    match outcome.unwrap_or_else(|panic| Err(anyhow::anyhow!("courier panicked: {panic}"))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    // lapin logs at error level what courier reports itself with its
    // context (a lost or refused connection) and what is no error at all (a
    // channel closing on a clean stop), so it is quiet unless the level names
    // it.
    let level = &settings.log.level;
    let directives = if level.contains("lapin") {
        level.clone()
    } else {
        format!("{level},lapin=off")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    // Colour only for a person at a terminal: a file or a pipe gets text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            no_api,
            no_worker,
            no_console,
        } => {
            let roles = Roles {
                api: !no_api,
                worker: !no_worker,
                console: !no_console,
            };
            let app = App::build(settings, roles).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await
        }
        Command::ApiKey(ApiKeyCommand::Create { ws, name }) => {
            let store = open_store(&settings).await?;
            let (key, record) =
                courier_api::keys::create_api_key(&store, &workspace_id(&ws)?, name.as_deref())
                    .await?;
            print_json(&serde_json::json!({"key": key, "api_key": record}))
        }
        Command::ApiKey(ApiKeyCommand::List { ws }) => {
            let store = open_store(&settings).await?;
            print_json(&store.list_api_keys(&workspace_id(&ws)?).await?)
        }
        Command::ApiKey(ApiKeyCommand::Revoke { ws, id }) => {
            let store = open_store(&settings).await?;
            let workspace = workspace_id(&ws)?;
            let notices = courier::CommandNotices::new(&settings);
            match courier_api::keys::revoke_api_key(&store, &notices, &workspace, &id).await? {
                Some(announced) => {
                    print_json(&serde_json::json!({"revoked": id, "announced": announced}))
                }
                None => anyhow::bail!(
                    "workspace {workspace} has no API key {id}; `courier api-key list -w {workspace}` shows its keys"
                ),
            }
        }
        Command::Receive { listen, secret } => {
            let secret = secret
                .map(|s| courier_model::WebhookSecret::parse(&s))
                .transpose()
                .context("--secret")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            courier::receiver::run(listen, secret, shutdown).await
        }
        Command::Prune { dry_run, vacuum } => prune(&settings, dry_run, vacuum).await,
        Command::Migrate => {
            open_store(&settings).await?;
            println!("{}", serde_json::json!({"migrated": true}));
            Ok(())
        }
        Command::Workspace(cmd) => workspace(cmd, &open_store(&settings).await?).await,
        Command::Webhook(cmd) => {
            let policy = WebhookPolicy {
                require_https: settings.delivery.require_https,
                max_timeout_ms: u32::try_from(settings.delivery.timeout_ms).unwrap_or(u32::MAX),
            };
            webhook(cmd, &open_store(&settings).await?, policy).await
        }
    }
}

async fn prune(settings: &Settings, dry_run: bool, vacuum: bool) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    if vacuum && store.backend() == courier_store::Backend::Postgres {
        anyhow::bail!(
            "--vacuum is for SQLite ledgers: PostgreSQL's autovacuum reuses the space pruning \
             frees by itself"
        );
    }
    let r = &settings.retention;
    let pruner = courier_worker::Pruner::new(
        store.clone(),
        courier_worker::RetentionConfig {
            policy: r.policy(),
            interval: std::time::Duration::from_secs(r.interval_secs),
            batch_rows: r.batch_rows,
            duty_percent: r.duty_percent,
        },
        std::sync::Arc::new(courier_worker::Metrics::new()),
    );
    // Ctrl-C stops after the batch under way; what went is reported.
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let round = pruner.run_once(dry_run, &stop).await;
    let (report, reclaimed, took) = match round {
        Ok(courier_worker::PruneRound::Done {
            report,
            reclaimed,
            took,
        }) => (report, reclaimed, took),
        Ok(courier_worker::PruneRound::Busy) => {
            store.close().await;
            anyhow::bail!(
                "another courier process is pruning this ledger now (it holds the pruning \
                 lock: PostgreSQL advisory lock {:#x}, or the `prune` lease in the SQLite \
                 ledger's ledger_leases table); it finishes by itself, or run this again later",
                courier_store::PRUNE_LOCK_KEY
            )
        }
        Err(error) => {
            store.close().await;
            return Err(anyhow::Error::new(error).context("pruning the ledger failed"));
        }
    };
    let vacuumed = if vacuum {
        Some(
            store
                .vacuum()
                .await
                .context("VACUUM of the SQLite ledger failed")?,
        )
    } else {
        None
    };
    store.close().await;
    print_json(&serde_json::json!({
        "dry_run": report.dry_run,
        "defaults": {"succeeded_days": r.succeeded_days, "failed_days": r.failed_days},
        "workspaces": report.workspaces,
        "total": report.total,
        "batches": report.batches,
        "stopped": report.stopped,
        "reclaimed": reclaimed,
        "vacuum": vacuumed.flatten(),
        "took_ms": took.as_millis(),
    }))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(error = %error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("stopping: finishing in-flight deliveries");
    shutdown.cancel();
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn workspace(cmd: WorkspaceCommand, store: &Store) -> anyhow::Result<()> {
    match cmd {
        WorkspaceCommand::Create { id, name } => {
            let id = match id {
                Some(id) => WorkspaceId::parse(id).context("--id")?,
                None => WorkspaceId::generate(),
            };
            courier_model::validate_name("--name", &name, courier_api::MAX_WORKSPACE_NAME_LEN)?;
            let ws = Workspace {
                id,
                name: name.trim().to_owned(),
                created_at: chrono::Utc::now(),
            };
            store.create_workspace(&ws).await?;
            print_json(&ws)
        }
        WorkspaceCommand::List => print_json(&store.list_workspaces().await?),
    }
}

fn workspace_id(arg: &WorkspaceArg) -> anyhow::Result<WorkspaceId> {
    WorkspaceId::parse(arg.workspace.as_str()).context("--workspace")
}

fn webhook_id(id: &str) -> anyhow::Result<SubscriptionId> {
    SubscriptionId::parse(id).context("webhook id")
}

async fn webhook(cmd: WebhookCommand, store: &Store, policy: WebhookPolicy) -> anyhow::Result<()> {
    match cmd {
        WebhookCommand::Create {
            ws,
            name,
            url,
            events,
            channels,
            secret,
            disabled,
        } => {
            let input = NewWebhook {
                name,
                url,
                events,
                channels,
                secret,
                active: !disabled,
                ..NewWebhook::default()
            };
            let sub = webhooks::create(store, &workspace_id(&ws)?, input, policy).await?;
            print_json(&WebhookView::new(&sub, true))
        }
        WebhookCommand::List { ws, limit, after } => {
            let after = after.as_deref().map(webhook_id).transpose()?;
            let page = store
                .list_subscriptions(&workspace_id(&ws)?, limit, after)
                .await?;
            // As the REST list: no secrets.
            let views: Vec<WebhookView> = page.iter().map(|s| WebhookView::new(s, false)).collect();
            print_json(&views)
        }
        WebhookCommand::Get { ws, id } => {
            let sub = store
                .get_subscription(&workspace_id(&ws)?, webhook_id(&id)?)
                .await?
                .context("webhook not found")?;
            print_json(&WebhookView::new(&sub, true))
        }
        WebhookCommand::Update {
            ws,
            id,
            name,
            url,
            events,
            channels,
            active,
        } => {
            let patch = WebhookPatch {
                name,
                url,
                events,
                channels,
                active,
                ..WebhookPatch::default()
            };
            let sub = webhooks::update(store, &workspace_id(&ws)?, webhook_id(&id)?, patch, policy)
                .await?;
            print_json(&WebhookView::new(&sub, true))
        }
        WebhookCommand::Delete { ws, id } => {
            webhooks::delete(store, &workspace_id(&ws)?, webhook_id(&id)?).await?;
            print_json(&serde_json::json!({"deleted": id}))
        }
    }
}
