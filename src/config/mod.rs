//! Configuration: defaults, then an optional TOML file, then environment variables.
//!
//! Every setting keeps the seed's environment variable name (`PORT`, `DB_HOST`,
//! `MAX_CONCURRENT_CALLS`…); in a TOML file the same names are written in lower case
//! (`max_concurrent_calls = 30`). The whole configuration is validated once, at start, and
//! a problem is reported as one line naming the variable ([`ConfigError`]).

use std::{fmt, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

mod text;
mod validate;

pub use text::{REDACTED, Secret};
use text::{lenient_opt_string, lenient_string};

/// Every environment variable the service reads; also the only keys a TOML file may hold.
pub const KEYS: &[&str] = &[
    "HOST",
    "PORT",
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_USERNAME",
    "DB_PASSWORD",
    "DB_DATABASE",
    "DB_MAX_CONNECTIONS",
    "AI_CALL_PROVIDER",
    "AI_CALL_API_URL",
    "AI_CALL_API_KEY",
    "WEBHOOK_BASE_URL",
    "WEBHOOK_SECRET",
    "AI_CALL_FROM_NUMBER",
    "AI_CALL_PHONE_NUMBER_ID",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_TWIML_URL",
    "RECONCILE_AFTER",
    "MAX_CONCURRENT_CALLS",
    "MAX_RETRY_ATTEMPTS",
    "RETRY_BASE_DELAY",
    "RETRY_MAX_DELAY",
    "CALL_TIMEOUT",
    "PROVIDER_TIMEOUT",
    "CALLING_WINDOW",
    "CALLING_DAYS",
    "DEFAULT_TIMEZONE",
    "MAX_ATTEMPTS_PER_NUMBER_PER_DAY",
    "RETRY_OUTCOMES",
    "RETRY_DELAY_BUSY",
    "RETRY_DELAY_NO_ANSWER",
    "RETRY_DELAY_VOICEMAIL",
    "RETRY_DELAY_FAILED",
    "RETENTION_PERIOD",
    "API_KEYS",
    "EVENT_SECRET_KEY",
    "EVENT_ALLOW_PRIVATE_URLS",
    "EVENT_TIMEOUT",
    "EVENT_RETRY_DELAYS",
    "EVENT_MAX_IN_FLIGHT_PER_ENDPOINT",
    "EVENT_MAX_IN_FLIGHT",
    "EVENT_DELIVERY_RETENTION",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_IN_FLIGHT",
    "HTTP_READ_TIMEOUT",
    "METRICS_PORT",
    "METRICS_REQUIRE_API_KEY",
    "LOG_FORMAT",
    "LOG_DIR",
    "RUST_LOG",
];

/// The settings that are text whatever they look like (see [`Config::load`]).
const VERBATIM: &[&str] = &[
    "DATABASE_URL",
    "DB_HOST",
    "DB_USERNAME",
    "DB_PASSWORD",
    "DB_DATABASE",
    "AI_CALL_API_KEY",
    "WEBHOOK_SECRET",
    "API_KEYS",
    "EVENT_SECRET_KEY",
    "EVENT_RETRY_DELAYS",
    "AI_CALL_FROM_NUMBER",
    "AI_CALL_PHONE_NUMBER_ID",
    "TWILIO_ACCOUNT_SID",
    "CALLING_WINDOW",
    "CALLING_DAYS",
    "DEFAULT_TIMEZONE",
    "RETRY_OUTCOMES",
];

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The validated configuration of one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    pub port: u16,
    pub database_url: Option<Secret>,
    #[serde(deserialize_with = "lenient_string")]
    pub db_host: String,
    pub db_port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub db_username: String,
    pub db_password: Secret,
    #[serde(deserialize_with = "lenient_string")]
    pub db_database: String,
    /// Connections in this process's pool.
    pub db_max_connections: u32,
    /// The provider's dialect (`AI_CALL_PROVIDER`): one of `provider::PROVIDERS`.
    #[serde(deserialize_with = "lenient_string")]
    pub ai_call_provider: String,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub ai_call_api_url: Option<String>,
    pub ai_call_api_key: Option<Secret>,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub webhook_base_url: Option<String>,
    pub webhook_secret: Option<Secret>,
    /// The caller ID (E.164): required for `twilio` and `retell`, optional for `bland`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub ai_call_from_number: Option<String>,
    /// `vapi`: the id of the Vapi phone number that places the calls.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub ai_call_phone_number_id: Option<String>,
    /// `twilio`: the account; `AI_CALL_API_KEY` is then its auth token.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub twilio_account_sid: Option<String>,
    /// `twilio`: where Twilio fetches each call's instructions (TwiML).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub twilio_twiml_url: Option<String>,
    /// A call in progress with no final webhook for this long is looked up at the
    /// provider (where it has a look-up), and again each time this much has passed.
    #[serde(with = "humantime_serde")]
    pub reconcile_after: Duration,
    pub max_concurrent_calls: u32,
    pub max_retry_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub provider_timeout: Duration,
    /// Hours of the callee's local day in which calls are dialed (`08:00-21:00`), or `off`.
    #[serde(deserialize_with = "lenient_string")]
    pub calling_window: String,
    /// Days of the callee's week on which calls are dialed (`mon-sun`, `mon-fri`).
    #[serde(deserialize_with = "lenient_string")]
    pub calling_days: String,
    /// The callee's zone when neither the call nor its number tells one (IANA name).
    #[serde(deserialize_with = "lenient_string")]
    pub default_timezone: String,
    /// Dial attempts to one number within any 24 hours; 0 is no limit.
    pub max_attempts_per_number_per_day: u32,
    /// The provider outcomes that are retried (`FAILED,BUSY,NO_ANSWER,VOICEMAIL`).
    #[serde(deserialize_with = "lenient_string")]
    pub retry_outcomes: String,
    #[serde(default, with = "humantime_serde")]
    pub retry_delay_busy: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_delay_no_answer: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_delay_voicemail: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry_delay_failed: Option<Duration>,
    /// Final calls whose `completedAt` is older than this are deleted, with their attempts,
    /// timeline and events; unset keeps them all.
    #[serde(default, with = "humantime_serde")]
    pub retention_period: Option<Duration>,
    /// Comma-separated bearer keys; empty means no authentication.
    pub api_keys: Option<Secret>,
    /// The keys event endpoints' signing secrets are derived from (comma-separated, newest
    /// first); the database never holds them. Unset: no endpoint can be registered.
    pub event_secret_key: Option<Secret>,
    /// Event endpoints may use `http` and loopback and private addresses.
    pub event_allow_private_urls: bool,
    /// Time limit of one try of a delivery.
    #[serde(with = "humantime_serde")]
    pub event_timeout: Duration,
    /// Waits before each retry of a failed delivery (`5s,5m,…`, jittered; `none`).
    #[serde(deserialize_with = "lenient_string")]
    pub event_retry_delays: String,
    /// Deliveries in flight to one endpoint at once, across every replica.
    pub event_max_in_flight_per_endpoint: u32,
    /// Deliveries in flight from one replica at once.
    pub event_max_in_flight: u32,
    /// How long delivered deliveries (and events no delivery waits for) are kept.
    #[serde(with = "humantime_serde")]
    pub event_delivery_retention: Duration,
    /// Connections the HTTP server holds open at once; more wait in the kernel's backlog.
    pub http_max_connections: u32,
    /// Requests handled at once; beyond, 503 `OVERLOADED` with `Retry-After`.
    pub http_max_in_flight: u32,
    /// Time a client has to send a request's head, and then its body.
    #[serde(with = "humantime_serde")]
    pub http_read_timeout: Duration,
    /// When set, `/metrics` is served on this port alone (and not on `PORT`).
    pub metrics_port: Option<u16>,
    /// `/metrics` asks for one of `API_KEYS` too.
    pub metrics_require_api_key: bool,
    pub log_format: LogFormat,
    pub log_dir: Option<PathBuf>,
    #[serde(deserialize_with = "lenient_string")]
    pub rust_log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 3000,
            database_url: None,
            db_host: "localhost".into(),
            db_port: 5432,
            db_username: "postgres".into(),
            db_password: Secret::new("password"),
            db_database: "ai_call_orchestrator".into(),
            db_max_connections: 10,
            ai_call_provider: "generic".into(),
            ai_call_api_url: None,
            ai_call_api_key: None,
            webhook_base_url: None,
            webhook_secret: None,
            ai_call_from_number: None,
            ai_call_phone_number_id: None,
            twilio_account_sid: None,
            twilio_twiml_url: None,
            reconcile_after: Duration::from_secs(5 * 60),
            max_concurrent_calls: 30,
            max_retry_attempts: 3,
            retry_base_delay: Duration::from_secs(30),
            retry_max_delay: Duration::from_secs(30 * 60),
            call_timeout: Duration::from_secs(30 * 60),
            provider_timeout: Duration::from_secs(10),
            calling_window: "08:00-21:00".into(),
            calling_days: "mon-sun".into(),
            default_timezone: "UTC".into(),
            max_attempts_per_number_per_day: 0,
            retry_outcomes: "FAILED,BUSY,NO_ANSWER,VOICEMAIL".into(),
            retry_delay_busy: None,
            retry_delay_no_answer: None,
            retry_delay_voicemail: None,
            retry_delay_failed: None,
            retention_period: None,
            api_keys: None,
            event_secret_key: None,
            event_allow_private_urls: false,
            event_timeout: Duration::from_secs(15),
            event_retry_delays: "5s,5m,30m,2h,5h,10h,10h".into(),
            event_max_in_flight_per_endpoint: 16,
            event_max_in_flight: 256,
            event_delivery_retention: Duration::from_secs(30 * 24 * 3600),
            http_max_connections: 1024,
            http_max_in_flight: 512,
            http_read_timeout: Duration::from_secs(10),
            metrics_port: None,
            metrics_require_api_key: false,
            log_format: LogFormat::Pretty,
            log_dir: None,
            rust_log: "info".into(),
        }
    }
}

/// A configuration problem, already phrased for a person: `VARIABLE: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn at(key: &str, problem: impl fmt::Display) -> Self {
        Self(format!("{}: {problem}", key.to_uppercase()))
    }
}

/// What the command about to run needs from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Only the database (`migrate`).
    Database,
    /// The database, and what verifies the provider's webhooks (`api`).
    Api,
    /// The database and the provider (`serve`, `worker`).
    Provider,
}

impl Config {
    /// Loads defaults, then `file` (TOML) if given, then the process environment.
    pub fn load(file: Option<&std::path::Path>, needs: Needs) -> Result<Self, ConfigError> {
        let mut figment = Self::figment(file, Env::raw().only(KEYS));
        // figment reads `+15550100` or `007` in the environment as numbers, which would
        // lose the `+` of a phone number and the zeros of a password: the settings that
        // are text are taken as the environment holds them.
        for key in VERBATIM {
            if let Some(value) = std::env::var_os(key).and_then(|v| v.into_string().ok()) {
                figment = figment.merge(Serialized::default(&key.to_lowercase(), value));
            }
        }
        Self::from_figment(figment, needs)
    }

    /// The layered sources, for [`Config::load`] and for tests that bring their own environment.
    pub fn figment(file: Option<&std::path::Path>, env: Env) -> Figment {
        let mut figment = defaults();
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(env)
    }

    /// Extracts and validates.
    pub fn from_figment(figment: Figment, needs: Needs) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|err| {
            let key = err.path.join(".");
            let problem = describe(&err.kind);
            if key.is_empty() {
                ConfigError(problem)
            } else {
                ConfigError::at(&key, problem)
            }
        })?;
        config.validate(needs)?;
        Ok(config)
    }

    /// The database URL: `DATABASE_URL` when set, else one built from the `DB_*` settings.
    pub fn database_url(&self) -> Secret {
        if let Some(url) = &self.database_url {
            return url.clone();
        }
        Secret::new(format!(
            "postgres://{}:{}@{}:{}/{}",
            encode(&self.db_username),
            encode(self.db_password.expose()),
            self.db_host,
            self.db_port,
            encode(&self.db_database)
        ))
    }

    /// `MAX_RETRY_ATTEMPTS`, `RETRY_BASE_DELAY`, `RETRY_MAX_DELAY`, `RETRY_OUTCOMES` and
    /// `RETRY_DELAY_*` (checked by `validate`).
    pub fn retry_policy(&self) -> crate::domain::RetryPolicy {
        use crate::domain::{FailedOutcome, PerOutcome};
        let retried: Vec<FailedOutcome> = self
            .retry_outcomes
            .split(',')
            .filter(|name| !name.trim().is_empty())
            .filter_map(FailedOutcome::parse)
            .collect();
        let delays: Vec<(FailedOutcome, Duration)> = [
            (FailedOutcome::Busy, self.retry_delay_busy),
            (FailedOutcome::NoAnswer, self.retry_delay_no_answer),
            (FailedOutcome::Voicemail, self.retry_delay_voicemail),
            (FailedOutcome::Failed, self.retry_delay_failed),
        ]
        .into_iter()
        .filter_map(|(outcome, delay)| Some((outcome, delay?)))
        .collect();
        crate::domain::RetryPolicy {
            max_attempts: self.max_retry_attempts,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
            outcomes: PerOutcome::new(&retried, &delays),
        }
    }

    /// `CALLING_WINDOW`, `CALLING_DAYS`, `DEFAULT_TIMEZONE` and
    /// `MAX_ATTEMPTS_PER_NUMBER_PER_DAY` (checked by `validate`).
    pub fn schedule_rules(&self) -> crate::domain::schedule::Rules {
        self.parse_schedule_rules()
            .expect("the configuration was validated at load")
    }

    pub(crate) fn parse_schedule_rules(
        &self,
    ) -> Result<crate::domain::schedule::Rules, ConfigError> {
        use crate::domain::schedule::{CallingWindow, Days, Hours, Rules};
        let days =
            Days::parse(&self.calling_days).map_err(|e| ConfigError::at("calling_days", e))?;
        if days.is_empty() {
            return Err(ConfigError::at(
                "calling_days",
                "must name at least one day",
            ));
        }
        let window = self.calling_window.trim();
        let hours = if window.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(Hours::parse(window).map_err(|e| ConfigError::at("calling_window", e))?)
        };
        let default_zone = self.default_timezone.trim().parse().map_err(|_| {
            ConfigError::at(
                "default_timezone",
                format!(
                    "`{}` is not an IANA time zone (e.g. America/New_York, UTC)",
                    self.default_timezone
                ),
            )
        })?;
        Ok(Rules {
            window: CallingWindow::new(hours, days),
            default_zone,
            max_attempts_per_number_per_day: self.max_attempts_per_number_per_day,
        })
    }

    /// The bearer keys of `API_KEYS`, blanks dropped.
    pub fn api_key_list(&self) -> Vec<Secret> {
        split_list(self.api_keys.as_ref())
    }

    /// The secrets of `WEBHOOK_SECRET`: one, or several separated by commas while a
    /// rotation is under way (a webhook signed with any of them is accepted).
    /// `EVENT_SECRET_KEY`, read (checked by `validate`, so a bad one is empty here).
    pub fn event_keys(&self) -> crate::domain::EventKeys {
        self.event_secret_key
            .as_ref()
            .and_then(|k| crate::domain::EventKeys::parse(k.expose()).ok())
            .unwrap_or_default()
    }

    /// `EVENT_RETRY_DELAYS`, read (checked by `validate`).
    pub fn delivery_schedule(&self) -> crate::domain::DeliverySchedule {
        crate::domain::DeliverySchedule::parse(&self.event_retry_delays).unwrap_or_default()
    }

    pub fn webhook_secret_list(&self) -> Vec<Secret> {
        split_list(self.webhook_secret.as_ref())
    }
}

/// The defaults as a figment source. A [`Secret`] serialises redacted, so the one default
/// that is a secret is given by its value.
fn defaults() -> Figment {
    let config = Config::default();
    Figment::from(Serialized::defaults(&config)).merge(Serialized::default(
        "db_password",
        config.db_password.expose(),
    ))
}

fn split_list(list: Option<&Secret>) -> Vec<Secret> {
    list.map(|items| {
        items
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Secret::new)
            .collect()
    })
    .unwrap_or_default()
}

/// Percent-encodes one URL component (user, password, database name).
fn encode(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for byte in component.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) => {
            if expected.contains("Duration") || expected.contains("duration") {
                format!("expected a duration such as 250ms, 30s or 15m, found {actual}")
            } else {
                format!("expected {expected}, found {actual}")
            }
        }
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown value `{found}`, expected one of {}",
                expected.join(", ")
            )
        }
        Kind::UnknownField(field, _) => format!("`{field}` is not a setting"),
        Kind::MissingField(field) => format!("`{field}` is missing"),
        Kind::Message(msg) => msg.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)], needs: Needs) -> Result<Config, ConfigError> {
        let figment = defaults().merge(
            figment::providers::Data::<figment::providers::Toml>::string(
                &pairs
                    .iter()
                    .map(|(k, v)| format!("{} = {v}", k.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        );
        Config::from_figment(figment, needs)
    }

    #[test]
    fn defaults_are_valid_for_the_api() {
        let config = load(&[], Needs::Database).unwrap();
        assert_eq!(config.port, 3000);
        assert_eq!(config.max_concurrent_calls, 30);
        assert_eq!(config.retry_base_delay, Duration::from_secs(30));
        assert_eq!(
            config.database_url().expose(),
            "postgres://postgres:password@localhost:5432/ai_call_orchestrator"
        );
    }

    #[test]
    fn the_provider_settings_are_required_to_place_calls() {
        let err = load(&[], Needs::Provider).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration error: AI_CALL_API_URL: is required to place calls"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let err = load(&[("MAX_CONCURRENT_CALLS", "0")], Needs::Database).unwrap_err();
        assert!(err.to_string().contains("MAX_CONCURRENT_CALLS"), "{err}");
        let err = load(&[("RETRY_BASE_DELAY", "\"soon\"")], Needs::Database).unwrap_err();
        assert!(err.to_string().contains("RETRY_BASE_DELAY"), "{err}");
        let err = load(&[("LOG_FORMAT", "\"xml\"")], Needs::Database).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = load(
            &[
                ("DB_PASSWORD", "\"hunter2\""),
                ("API_KEYS", "\"k1,k2\""),
                ("DATABASE_URL", "\"postgres://u:hunter3@h/db\""),
            ],
            Needs::Database,
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("hunter3") && !debug.contains("k1"));
        assert_eq!(config.api_key_list().len(), 2);
        let serialised = serde_json::to_string(&config).unwrap();
        assert!(
            !serialised.contains("hunter2")
                && !serialised.contains("hunter3")
                && !serialised.contains("k1"),
            "{serialised}"
        );
        assert!(serialised.contains(REDACTED), "{serialised}");
        // The redaction does not leak into the defaults: the default password still works.
        assert!(
            load(&[], Needs::Database)
                .unwrap()
                .database_url()
                .expose()
                .contains(":password@")
        );
    }

    #[test]
    fn the_calling_window_and_retry_settings_are_checked() {
        let rules = load(&[], Needs::Database).unwrap().schedule_rules();
        assert_eq!(
            rules.window.to_string(),
            "08:00-21:00 on mon,tue,wed,thu,fri,sat,sun"
        );
        assert_eq!(rules.default_zone, chrono_tz::Tz::UTC);
        let off = load(&[("CALLING_WINDOW", "\"off\"")], Needs::Database).unwrap();
        assert!(off.schedule_rules().window.is_off());
        for (key, value) in [
            ("CALLING_WINDOW", "\"8am-9pm\""),
            ("CALLING_DAYS", "\"weekdays\""),
            ("DEFAULT_TIMEZONE", "\"Mars/Olympus\""),
            ("RETRY_OUTCOMES", "\"BUSY,COMPLETED\""),
            ("RETRY_DELAY_BUSY", "\"2h\""),
            ("MAX_ATTEMPTS_PER_NUMBER_PER_DAY", "5000"),
        ] {
            let err = load(&[(key, value)], Needs::Database).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let config = load(
            &[
                ("RETRY_OUTCOMES", "\"busy, NO_ANSWER\""),
                ("RETRY_DELAY_BUSY", "\"10m\""),
            ],
            Needs::Database,
        )
        .unwrap();
        let policy = config.retry_policy();
        use crate::domain::FailedOutcome::*;
        assert!(policy.outcomes.retries(Busy) && policy.outcomes.retries(NoAnswer));
        assert!(!policy.outcomes.retries(Voicemail) && !policy.outcomes.retries(Failed));
        assert_eq!(
            policy.outcomes.base_delay(Busy),
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn database_url_components_are_percent_encoded() {
        let config = load(&[("DB_PASSWORD", "\"p@ss/word\"")], Needs::Database).unwrap();
        assert!(
            config
                .database_url()
                .expose()
                .contains("postgres:p%40ss%2Fword@")
        );
    }
}
