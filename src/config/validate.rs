//! The configuration's checks, run once at start: each problem is one line naming the
//! setting ([`ConfigError`]).

use std::{net::IpAddr, time::Duration};

use super::{Config, ConfigError, Needs};

impl Config {
    pub(super) fn validate(&self, needs: Needs) -> Result<(), ConfigError> {
        self.host
            .parse::<IpAddr>()
            .map_err(|_| ConfigError::at("host", "must be an IP address such as 0.0.0.0"))?;
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::at(
                    "database_url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        if self.db_max_connections == 0 || self.db_max_connections > 1000 {
            return Err(ConfigError::at(
                "db_max_connections",
                "must be between 1 and 1000",
            ));
        }
        if self.max_concurrent_calls == 0 || self.max_concurrent_calls > 100_000 {
            return Err(ConfigError::at(
                "max_concurrent_calls",
                "must be between 1 and 100000",
            ));
        }
        if self.max_retry_attempts == 0 || self.max_retry_attempts > 100 {
            return Err(ConfigError::at(
                "max_retry_attempts",
                "must be between 1 and 100 (the first attempt counts)",
            ));
        }
        for (key, value, max) in [
            ("http_max_connections", self.http_max_connections, 1_000_000),
            ("http_max_in_flight", self.http_max_in_flight, 1_000_000),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::at(key, format!("must be between 1 and {max}")));
            }
        }
        if self.http_read_timeout < Duration::from_millis(100)
            || self.http_read_timeout > Duration::from_secs(600)
        {
            return Err(ConfigError::at(
                "http_read_timeout",
                "must be between 100ms and 10m",
            ));
        }
        if let Some(keys) = &self.event_secret_key {
            crate::domain::EventKeys::parse(keys.expose())
                .map_err(|e| ConfigError::at("event_secret_key", e))?;
        }
        crate::domain::DeliverySchedule::parse(&self.event_retry_delays)
            .map_err(|e| ConfigError::at("event_retry_delays", e))?;
        if self.event_timeout < Duration::from_millis(100)
            || self.event_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::at(
                "event_timeout",
                "must be between 100ms and 60s",
            ));
        }
        for (key, value) in [
            (
                "event_max_in_flight_per_endpoint",
                self.event_max_in_flight_per_endpoint,
            ),
            ("event_max_in_flight", self.event_max_in_flight),
        ] {
            if value == 0 || value > 10_000 {
                return Err(ConfigError::at(key, "must be between 1 and 10000"));
            }
        }
        if self.event_delivery_retention < Duration::from_secs(60) {
            return Err(ConfigError::at(
                "event_delivery_retention",
                "must be at least 1m",
            ));
        }
        if let Some(period) = self.retention_period {
            // A final call younger than a day may still answer an Idempotency-Key (held 24 h),
            // and its attempts still count towards MAX_ATTEMPTS_PER_NUMBER_PER_DAY.
            if period < Duration::from_secs(24 * 3600) {
                return Err(ConfigError::at(
                    "retention_period",
                    "must be at least 1d: Idempotency-Keys and the daily attempts of a number \
                     look back 24 hours",
                ));
            }
            if period > Duration::from_secs(100 * 366 * 24 * 3600) {
                return Err(ConfigError::at(
                    "retention_period",
                    "must be at most 100 years (leave it unset to keep every call)",
                ));
            }
        }
        if self.metrics_port == Some(0) {
            return Err(ConfigError::at(
                "metrics_port",
                "must be a port from 1 to 65535",
            ));
        }
        if self.metrics_port.is_some() && self.metrics_port == Some(self.port) {
            return Err(ConfigError::at("metrics_port", "must differ from PORT"));
        }
        if self.metrics_require_api_key && self.api_keys.is_none() {
            return Err(ConfigError::at(
                "metrics_require_api_key",
                "asks for an API key, but API_KEYS is not set",
            ));
        }
        for (key, value) in [
            ("retry_base_delay", self.retry_base_delay),
            ("retry_max_delay", self.retry_max_delay),
            ("call_timeout", self.call_timeout),
            ("provider_timeout", self.provider_timeout),
            ("reconcile_after", self.reconcile_after),
        ] {
            if value.is_zero() {
                return Err(ConfigError::at(key, "must be longer than zero"));
            }
            if value > Duration::from_secs(366 * 24 * 3600) {
                return Err(ConfigError::at(key, "must be at most a year"));
            }
        }
        for (key, value) in [
            ("retry_delay_busy", self.retry_delay_busy),
            ("retry_delay_no_answer", self.retry_delay_no_answer),
            ("retry_delay_voicemail", self.retry_delay_voicemail),
            ("retry_delay_failed", self.retry_delay_failed),
        ] {
            match value {
                Some(value) if value.is_zero() => {
                    return Err(ConfigError::at(key, "must be longer than zero"));
                }
                Some(value) if value > self.retry_max_delay => {
                    return Err(ConfigError::at(
                        key,
                        "must not be longer than RETRY_MAX_DELAY",
                    ));
                }
                _ => {}
            }
        }
        for name in self
            .retry_outcomes
            .split(',')
            .filter(|n| !n.trim().is_empty())
        {
            if crate::domain::FailedOutcome::parse(name).is_none() {
                return Err(ConfigError::at(
                    "retry_outcomes",
                    format!(
                        "`{}` is not an outcome (FAILED, BUSY, NO_ANSWER, VOICEMAIL)",
                        name.trim()
                    ),
                ));
            }
        }
        if self.max_attempts_per_number_per_day > 1000 {
            return Err(ConfigError::at(
                "max_attempts_per_number_per_day",
                "must be between 0 (no limit) and 1000",
            ));
        }
        self.parse_schedule_rules()?;
        if self.retry_max_delay < self.retry_base_delay {
            return Err(ConfigError::at(
                "retry_max_delay",
                "must not be shorter than RETRY_BASE_DELAY",
            ));
        }
        if let Some(url) = &self.ai_call_api_url {
            check_http_url("ai_call_api_url", url)?;
        }
        if let Some(url) = &self.webhook_base_url {
            check_http_url("webhook_base_url", url)?;
        }
        if self.webhook_secret.is_some() && self.webhook_secret_list().is_empty() {
            return Err(ConfigError::at(
                "webhook_secret",
                "is set but holds no secret",
            ));
        }
        // The generic provider's secret is a Standard Webhooks one; Vapi's and Bland's are
        // the vendor's as it shows them, used as they stand.
        if self.ai_call_provider == "generic" {
            for secret in self.webhook_secret_list() {
                crate::domain::webhook_secret_bytes(secret.expose())
                    .map_err(|problem| ConfigError::at("webhook_secret", problem))?;
            }
        }
        self.validate_vendor(needs)?;
        if self.api_keys.is_some() && self.api_key_list().is_empty() {
            return Err(ConfigError::at(
                "api_keys",
                "is set but holds no key; unset it to turn authentication off",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.rust_log)
            .map_err(|err| ConfigError::at("rust_log", err))?;
        if !crate::provider::PROVIDERS.contains(&self.ai_call_provider.as_str()) {
            return Err(ConfigError::at(
                "ai_call_provider",
                format!("must be one of {}", crate::provider::PROVIDERS.join(", ")),
            ));
        }
        if needs == Needs::Provider {
            let url_needed = crate::provider::default_api_url(&self.ai_call_provider).is_none();
            for (key, present) in [
                (
                    "ai_call_api_url",
                    self.ai_call_api_url.is_some() || !url_needed,
                ),
                ("ai_call_api_key", self.ai_call_api_key.is_some()),
                ("webhook_base_url", self.webhook_base_url.is_some()),
            ] {
                if !present {
                    return Err(ConfigError::at(key, "is required to place calls"));
                }
            }
        }
        if self
            .ai_call_api_key
            .as_ref()
            .is_some_and(|key| key.expose().trim().is_empty())
        {
            return Err(ConfigError::at(
                "ai_call_api_key",
                "is set but empty; the provider would refuse every call",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The settings each vendor's dialect needs to place calls (`needs` a provider), and
    /// the shape of those given.
    fn validate_vendor(&self, needs: Needs) -> Result<(), ConfigError> {
        if let Some(number) = &self.ai_call_from_number {
            crate::domain::PhoneNumber::parse(number)
                .map_err(|problem| ConfigError::at("ai_call_from_number", format!("{problem}")))?;
        }
        for (key, value) in [
            ("ai_call_phone_number_id", &self.ai_call_phone_number_id),
            ("twilio_account_sid", &self.twilio_account_sid),
        ] {
            if value.as_ref().is_some_and(|v| {
                v.is_empty()
                    || v.len() > 128
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }) {
                return Err(ConfigError::at(
                    key,
                    "must be 1 to 128 letters, digits, `-` and `_`",
                ));
            }
        }
        if let Some(url) = &self.twilio_twiml_url {
            check_http_url("twilio_twiml_url", url)?;
        }
        if self.ai_call_provider == "twilio"
            && self.twilio_account_sid.as_ref().is_some_and(|sid| {
                !(sid.len() == 34
                    && sid.starts_with("AC")
                    && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
            })
        {
            return Err(ConfigError::at(
                "twilio_account_sid",
                "must be a Twilio account SID (AC followed by 32 hex digits)",
            ));
        }
        // Twilio and Retell sign their webhooks with the key (Twilio over the public URL):
        // an `api` replica without them could not tell a forged webhook from a real one.
        if needs == Needs::Api {
            let required: &[(&str, bool)] = match self.ai_call_provider.as_str() {
                "twilio" => &[
                    ("ai_call_api_key", self.ai_call_api_key.is_some()),
                    ("webhook_base_url", self.webhook_base_url.is_some()),
                ],
                "retell" => &[("ai_call_api_key", self.ai_call_api_key.is_some())],
                _ => &[],
            };
            return self.require(required, "to verify the webhooks of");
        }
        if needs != Needs::Provider {
            return Ok(());
        }
        let required: &[(&str, bool)] = match self.ai_call_provider.as_str() {
            "twilio" => &[
                ("twilio_account_sid", self.twilio_account_sid.is_some()),
                ("twilio_twiml_url", self.twilio_twiml_url.is_some()),
                ("ai_call_from_number", self.ai_call_from_number.is_some()),
            ],
            "retell" => &[("ai_call_from_number", self.ai_call_from_number.is_some())],
            "vapi" => &[(
                "ai_call_phone_number_id",
                self.ai_call_phone_number_id.is_some(),
            )],
            _ => &[],
        };
        self.require(required, "to place calls with")
    }

    /// The first of `settings` missing, as "KEY: is required {why} AI_CALL_PROVIDER=…".
    fn require(&self, settings: &[(&str, bool)], why: &str) -> Result<(), ConfigError> {
        match settings.iter().find(|(_, present)| !present) {
            Some((key, _)) => Err(ConfigError::at(
                key,
                format!(
                    "is required {why} AI_CALL_PROVIDER={}",
                    self.ai_call_provider
                ),
            )),
            None => Ok(()),
        }
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(ConfigError::at(key, "must be an http:// or https:// URL")),
        Err(err) => Err(ConfigError::at(key, format!("is not a URL ({err})"))),
    }
}
