//! Configuration: built-in defaults, then an optional file, then
//! `COURIER__SECTION__KEY` environment variables. Every key is validated at
//! start, and every error names the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use courier_model::RetryPolicy;
use courier_producer::BrokerNodes;
use serde::Deserialize;

/// The defaults of every key, in the same shape an operator's file has.
pub const DEFAULTS: &str = r#"
[database]
url = "sqlite://courier.db"
max_connections = 16
sqlite_synchronous = "full"
sqlite_commit_interval_ms = 5

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
prefix = "courier"
prefetch = 512

[http]
listen = "127.0.0.1:8080"

[api]
graphql_explorer = false

[console]
enabled = true
session_ttl_minutes = 480
portal_link_ttl_seconds = 600
portal_link_max_ttl_seconds = 86400
frame_ancestors = ""

[delivery]
timeout_ms = 10000
max_in_flight = 256
per_endpoint_in_flight = 32
inline_first_attempt = true
quick_ms = 250
require_https = true
allow_private_networks = false
retry_client_errors = true
subscription_refresh_ms = 5000
shutdown_grace_ms = 15000

[endpoints]
disable_after_seconds = 432000
failing_after_attempts = 5

[retry]
initial_delay_ms = 5000
multiplier = 5.0
max_delay_ms = 21600000
max_attempts = 10
jitter = 0.2
retry_after_min_ms = 1000
retry_after_max_ms = 3600000

[retention]
enabled = true
succeeded_days = 30
failed_days = 90
max_days = 365
interval_secs = 3600
batch_rows = 1000
duty_percent = 5

[log]
format = "pretty"
level = "info"
"#;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub console: ConsoleSettings,
    pub delivery: DeliverySettings,
    pub endpoints: EndpointSettings,
    pub retry: RetryPolicy,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// SQLite only: `full` (the default; a commit survives a power loss) or
    /// `normal` (it survives the process crashing only).
    pub sqlite_synchronous: String,
    /// SQLite only: the least time from one ledger commit's start to the
    /// next's, so that events arriving close together share a commit.
    pub sqlite_commit_interval_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: String,
    pub prefix: String,
    pub prefetch: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Opens the admin routes; none means they stay closed.
    pub admin_token: Option<String>,
    /// Serve a GraphiQL page at `GET /graphql` (its files are part of the
    /// binary; nothing is fetched from elsewhere).
    pub graphql_explorer: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the web console at /console (with the API role).
    pub enabled: bool,
    /// The console's origin as browsers reach it (`https://hooks.example.com`):
    /// portal links point there, and cookies are `Secure` when it is https.
    /// Default: `http://` + the address `http.listen` is bound to.
    pub public_url: Option<String>,
    pub session_ttl_minutes: u32,
    /// How long a portal link waits to be opened, unless its request says.
    pub portal_link_ttl_seconds: u32,
    /// The longest a portal link request may ask for.
    pub portal_link_max_ttl_seconds: u32,
    /// Origins allowed to show the console in an iframe, separated by
    /// spaces (as in a Content-Security-Policy); empty: nowhere.
    pub frame_ancestors: String,
}

impl ConsoleSettings {
    pub fn frame_ancestors(&self) -> Vec<String> {
        self.frame_ancestors
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub timeout_ms: u64,
    pub max_in_flight: usize,
    pub per_endpoint_in_flight: usize,
    pub inline_first_attempt: bool,
    /// A quick endpoint answers within this long on average.
    pub quick_ms: u64,
    pub require_https: bool,
    pub allow_private_networks: bool,
    pub retry_client_errors: bool,
    pub subscription_refresh_ms: u64,
    pub shutdown_grace_ms: u64,
}

/// What courier does about an endpoint that keeps failing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// A webhook with no success for this long, while its attempts kept
    /// failing, is disabled (reason `failing`); 5 days by default.
    pub disable_after_seconds: u64,
    /// Failed attempts in a row after which `webhook.failing` is published
    /// (once per failing episode).
    pub failing_after_attempts: u32,
}

/// How long the ledger keeps finished deliveries, and when it is pruned.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Prune on a schedule in every process that runs the worker (one at
    /// a time per ledger). Off, only `courier prune` removes anything.
    pub enabled: bool,
    /// Days a succeeded delivery is kept after it finished (and an event
    /// that matched no webhook after it was received).
    pub succeeded_days: u32,
    /// Days a dead or canceled delivery is kept after it finished.
    pub failed_days: u32,
    /// The most a workspace's own override may ask for.
    pub max_days: u32,
    /// Seconds between scheduled runs (the first runs at start).
    pub interval_secs: u64,
    /// Most deliveries removed per transaction.
    pub batch_rows: u32,
    /// The share of the time pruning may keep the database busy: after a
    /// batch it pauses for long enough (100: no pauses).
    pub duty_percent: u8,
}

impl RetentionSettings {
    pub fn policy(&self) -> courier_model::RetentionPolicy {
        courier_model::RetentionPolicy {
            defaults: courier_model::RetentionDays {
                succeeded: self.succeeded_days,
                failed: self.failed_days,
            },
            max_days: self.max_days,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("COURIER__"))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("COURIER")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let db = &self.database.url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                format!("{db:?} must start with sqlite:// or postgres://"),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if courier_store::SqliteSync::parse(&self.database.sqlite_synchronous).is_none() {
            return Err(invalid(
                "database.sqlite_synchronous",
                "must be \"full\" (commits survive a power loss) or \"normal\" (they survive \
                 the process crashing only)",
            ));
        }
        if self.database.sqlite_commit_interval_ms > 1_000 {
            return Err(invalid(
                "database.sqlite_commit_interval_ms",
                "must be between 0 (commit every write at once) and 1000",
            ));
        }
        if let Err(error) = BrokerNodes::parse(&self.amqp.url) {
            return Err(invalid("amqp.url", error.to_string()));
        }
        let prefix = &self.amqp.prefix;
        if prefix.is_empty()
            || prefix.len() > 100
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "amqp.prefix",
                "must be 1-100 letters, digits, '-', '_' or '.'",
            ));
        }
        if self.amqp.prefetch == 0 {
            return Err(invalid("amqp.prefetch", "must be at least 1"));
        }
        self.validate_console()?;
        let d = &self.delivery;
        if !(100..=300_000).contains(&d.timeout_ms) {
            return Err(invalid(
                "delivery.timeout_ms",
                "must be between 100 and 300000",
            ));
        }
        if d.max_in_flight == 0 {
            return Err(invalid("delivery.max_in_flight", "must be at least 1"));
        }
        if d.per_endpoint_in_flight == 0 {
            return Err(invalid(
                "delivery.per_endpoint_in_flight",
                "must be at least 1",
            ));
        }
        if !(10..=300_000).contains(&d.quick_ms) {
            return Err(invalid(
                "delivery.quick_ms",
                "must be between 10 and 300000 (250, the default, suits receivers that answer \
                 at once and do their work later)",
            ));
        }
        if d.subscription_refresh_ms < 100 {
            return Err(invalid(
                "delivery.subscription_refresh_ms",
                "must be at least 100",
            ));
        }
        if self.endpoints.disable_after_seconds == 0 {
            return Err(invalid(
                "endpoints.disable_after_seconds",
                "must be at least 1 (432000, five days, is the default)",
            ));
        }
        if self.endpoints.failing_after_attempts == 0 {
            return Err(invalid(
                "endpoints.failing_after_attempts",
                "must be at least 1",
            ));
        }
        self.validate_retention()?;
        self.retry.validate().map_err(|e| SettingsError::Invalid {
            // The policy's own message names the key; keep one source.
            key: "retry",
            message: e.to_string(),
        })?;
        if !valid_log_filter(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a log level: use one of {} (or directives such as \
                     \"info,courier_worker=debug\")",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), SettingsError> {
        let r = &self.retention;
        let max = courier_model::MAX_RETENTION_DAYS;
        if !(1..=max).contains(&r.max_days) {
            return Err(invalid(
                "retention.max_days",
                format!("must be between 1 and {max} (ten years)"),
            ));
        }
        for (key, days) in [
            ("retention.succeeded_days", r.succeeded_days),
            ("retention.failed_days", r.failed_days),
        ] {
            if !(1..=r.max_days).contains(&days) {
                return Err(invalid(
                    key,
                    format!(
                        "must be between 1 and retention.max_days ({}), not {days}",
                        r.max_days
                    ),
                ));
            }
        }
        if !(1..=604_800).contains(&r.interval_secs) {
            return Err(invalid(
                "retention.interval_secs",
                "must be between 1 and 604800 (a week); to stop scheduled pruning set \
                 retention.enabled = false",
            ));
        }
        if !(1..=100).contains(&r.duty_percent) {
            return Err(invalid(
                "retention.duty_percent",
                "must be between 1 and 100 (the share of the time pruning may keep the \
                 database busy; 100 prunes without pausing)",
            ));
        }
        if !(1..=100_000).contains(&r.batch_rows) {
            return Err(invalid(
                "retention.batch_rows",
                "must be between 1 and 100000 (a few thousand keeps each transaction short)",
            ));
        }
        Ok(())
    }

    fn validate_console(&self) -> Result<(), SettingsError> {
        let c = &self.console;
        if let Some(url) = &c.public_url {
            courier_console::check_frame_ancestor(url).map_err(|message| {
                invalid(
                    "console.public_url",
                    message.replace(
                        "write it as",
                        "the console is served at the root; write it as",
                    ),
                )
            })?;
        }
        for origin in c.frame_ancestors() {
            courier_console::check_frame_ancestor(&origin)
                .map_err(|message| invalid("console.frame_ancestors", message))?;
        }
        if !(1..=43_200).contains(&c.session_ttl_minutes) {
            return Err(invalid(
                "console.session_ttl_minutes",
                "must be between 1 and 43200 (30 days)",
            ));
        }
        if !(1..=604_800).contains(&c.portal_link_max_ttl_seconds) {
            return Err(invalid(
                "console.portal_link_max_ttl_seconds",
                "must be between 1 and 604800 (7 days)",
            ));
        }
        if c.portal_link_ttl_seconds == 0
            || c.portal_link_ttl_seconds > c.portal_link_max_ttl_seconds
        {
            return Err(invalid(
                "console.portal_link_ttl_seconds",
                "must be at least 1 and at most console.portal_link_max_ttl_seconds",
            ));
        }
        Ok(())
    }

    /// Variables that look meant for courier but configure nothing:
    /// `COURIER_` with one underscore (settings are `COURIER__SECTION__KEY`),
    /// other than the few single-underscore variables courier and its tests
    /// read. To be warned about once logging is up.
    pub fn unused_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let mut unused: Vec<String> = env
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                k.starts_with("COURIER_")
                    && !k.starts_with("COURIER__")
                    && k != "COURIER_CONFIG"
                    && !k.starts_with("COURIER_TEST_")
                    && !k.starts_with("COURIER_BENCH_")
            })
            .collect();
        unused.sort();
        unused
    }

    /// The broker's nodes of `amqp.url` (validated by [`Settings::load`]).
    pub fn amqp_nodes(&self) -> BrokerNodes {
        BrokerNodes::parse(&self.amqp.url).expect("amqp.url was validated on loading")
    }

    pub fn worker_config(&self) -> courier_worker::WorkerConfig {
        let d = &self.delivery;
        courier_worker::WorkerConfig {
            prefix: self.amqp.prefix.clone(),
            prefetch: self.amqp.prefetch,
            max_in_flight: d.max_in_flight,
            per_endpoint_in_flight: d.per_endpoint_in_flight,
            inline_first_attempt: d.inline_first_attempt,
            quick: Duration::from_millis(d.quick_ms),
            http: courier_webhook::HttpOptions {
                timeout: Duration::from_millis(d.timeout_ms),
                allow_private_networks: d.allow_private_networks,
                max_in_flight: d.max_in_flight,
            },
            retry: self.retry.clone(),
            retry_client_errors: d.retry_client_errors,
            subscription_refresh: Duration::from_millis(d.subscription_refresh_ms),
            shutdown_grace: Duration::from_millis(d.shutdown_grace_ms),
            endpoints: courier_worker::EndpointPolicy {
                disable_after: Duration::from_secs(self.endpoints.disable_after_seconds),
                failing_after: self.endpoints.failing_after_attempts,
            },
        }
    }
}

/// The levels `log.level` takes, alone or per target.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// A level, or comma-separated directives each a level or `target=level`.
/// A bare word that is no level (`verbose`) would be read as a target name
/// and silence every log line, so it is refused.
fn valid_log_filter(text: &str) -> bool {
    let is_level = |level: &str| LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str());
    !text.trim().is_empty()
        && text
            .split(',')
            .all(|directive| match directive.rsplit_once('=') {
                Some((target, level)) => !target.trim().is_empty() && is_level(level),
                None => is_level(directive),
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_checked() {
        for good in [
            "info",
            "WARN",
            "info,courier_worker=debug",
            "courier=trace",
            "off",
        ] {
            let s = Settings::load_from(None, env(&[("COURIER__LOG__LEVEL", good)]));
            assert!(s.is_ok(), "{good}: {s:?}");
        }
        for bad in ["verbose", "", "info,loud", "courier=chatty", "=debug"] {
            let error = Settings::load_from(None, env(&[("COURIER__LOG__LEVEL", bad)]))
                .unwrap_err()
                .to_string();
            assert!(error.contains("log.level"), "{bad}: {error}");
        }
    }

    #[test]
    fn variables_with_one_underscore_are_named_as_unused() {
        let unused = Settings::unused_variables(env(&[
            ("COURIER_DELIVERY__TIMEOUT_MS", "5"),
            ("COURIER__DELIVERY__TIMEOUT_MS", "5"),
            ("COURIER_CONFIG", "courier.toml"),
            ("COURIER_TEST_PG_URL", "postgres://x"),
            ("COURIERS", "a b"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(unused, ["COURIER_DELIVERY__TIMEOUT_MS"]);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_run_on_one_machine() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.database.url, "sqlite://courier.db");
        assert_eq!(s.amqp.prefix, "courier");
        assert!(s.delivery.require_https);
        assert!(!s.delivery.allow_private_networks);
        assert!(!s.api.graphql_explorer);
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert_eq!(s.retry, RetryPolicy::default());
        assert!(s.retention.enabled);
        assert_eq!(
            s.retention.policy(),
            courier_model::RetentionPolicy::default()
        );
        assert_eq!(s.retention.interval_secs, 3600);
        // The ledger's own default and the file's agree.
        assert_eq!(
            Duration::from_millis(s.database.sqlite_commit_interval_ms),
            courier_store::DEFAULT_SQLITE_COMMIT_INTERVAL
        );
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = Settings::load_from(
            None,
            env(&[
                ("COURIER__DATABASE__URL", "postgres://localhost/x"),
                ("COURIER__AMQP__PREFETCH", "32"),
                ("COURIER__DELIVERY__REQUIRE_HTTPS", "false"),
                ("COURIER__RETRY__MULTIPLIER", "2.5"),
                ("COURIER__LOG__FORMAT", "json"),
                ("COURIER__API__ADMIN_TOKEN", "0123"),
                ("COURIER__API__GRAPHQL_EXPLORER", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url, "postgres://localhost/x");
        assert_eq!(s.amqp.prefetch, 32);
        assert!(!s.delivery.require_https);
        assert_eq!(s.retry.multiplier, 2.5);
        assert_eq!(s.log.format, LogFormat::Json);
        // Not parsed as a number: leading zeros survive.
        assert_eq!(s.api.admin_token.as_deref(), Some("0123"));
        assert!(s.api.graphql_explorer);
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        let path =
            std::env::temp_dir().join(format!("courier-settings-{}.toml", std::process::id()));
        std::fs::write(&path, "[amqp]\nprefix = \"fromfile\"\nprefetch = 7\n").unwrap();
        let s = Settings::load_from(Some(&path), env(&[("COURIER__AMQP__PREFETCH", "9")])).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.amqp.prefix, "fromfile");
        assert_eq!(s.amqp.prefetch, 9);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("COURIER__AMQP__PREFETCH", "lots", "amqp.prefetch"),
            ("COURIER__AMQP__PREFETCH", "0", "amqp.prefetch"),
            ("COURIER__DATABASE__URL", "mysql://x", "database.url"),
            ("COURIER__AMQP__URL", "rabbit:5672", "amqp.url"),
            (
                "COURIER__AMQP__URL",
                "amqp://a:5672,,amqp://b",
                "node 2 of 3",
            ),
            ("COURIER__DELIVERY__TIMEOUT_MS", "5", "delivery.timeout_ms"),
            ("COURIER__DELIVERY__QUICK_MS", "0", "delivery.quick_ms"),
            (
                "COURIER__DATABASE__SQLITE_COMMIT_INTERVAL_MS",
                "5000",
                "database.sqlite_commit_interval_ms",
            ),
            ("COURIER__RETRY__MAX_ATTEMPTS", "0", "retry.max_attempts"),
            ("COURIER__LOG__FORMAT", "xml", "log.format"),
            ("COURIER__DELIVERY__NOPE", "1", "nope"),
            ("COURIER__RETENTION__SUCCEDED_DAYS", "7", "succeded_days"),
            (
                "COURIER__RETENTION__SUCCEEDED_DAYS",
                "0",
                "retention.succeeded_days",
            ),
            (
                "COURIER__RETENTION__FAILED_DAYS",
                "400",
                "retention.failed_days",
            ),
            ("COURIER__RETENTION__MAX_DAYS", "4000", "retention.max_days"),
            (
                "COURIER__RETENTION__INTERVAL_SECS",
                "0",
                "retention.interval_secs",
            ),
            (
                "COURIER__RETENTION__BATCH_ROWS",
                "0",
                "retention.batch_rows",
            ),
            (
                "COURIER__RETENTION__DUTY_PERCENT",
                "0",
                "retention.duty_percent",
            ),
            (
                "COURIER__RETENTION__DUTY_PERCENT",
                "250",
                "retention.duty_percent",
            ),
            (
                "COURIER__RETENTION__ENABLED",
                "sometimes",
                "retention.enabled",
            ),
            ("COURIER__AMQP__PREFIX", "has space", "amqp.prefix"),
            (
                "COURIER__API__GRAPHQL_EXPLORER",
                "maybe",
                "api.graphql_explorer",
            ),
        ];
        for (key, value, named) in cases {
            let err = Settings::load_from(None, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }
}
