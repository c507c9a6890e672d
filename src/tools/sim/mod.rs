//! The provider simulator: a real HTTP server playing an AI call provider, for the demo,
//! for development against a real deployment, and for the chaos test and the benchmarks.
//!
//! It checks the bearer key, honours `Idempotency-Key` (same key, same callId, no second
//! call), answers with an error mix (5xx, 429 with `Retry-After`, slow answers), plays each
//! call out over a simulated duration with progress webhooks and a final one drawn from an
//! outcome mix, signs webhooks per Standard Webhooks when given a secret, and keeps count:
//! calls received, active now, the peak at once and per number, idempotent repeats.

mod dialect;
mod server;

use std::time::Duration;

use clap::Args;

pub use dialect::{Dialect, SimCall, Stage, TWILIO_ACCOUNT_SID};
pub use server::{Latency, RecordedDial, Simulator, Status};

/// The share of calls ending in each final status, as `completed=70,busy=10,…`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeMix {
    pub completed: f64,
    pub busy: f64,
    pub no_answer: f64,
    pub voicemail: f64,
    pub failed: f64,
}

impl Default for OutcomeMix {
    fn default() -> Self {
        Self {
            completed: 70.0,
            busy: 10.0,
            no_answer: 10.0,
            voicemail: 5.0,
            failed: 5.0,
        }
    }
}

impl OutcomeMix {
    /// Everything completes.
    pub fn all_completed() -> Self {
        Self {
            completed: 1.0,
            busy: 0.0,
            no_answer: 0.0,
            voicemail: 0.0,
            failed: 0.0,
        }
    }

    /// The final status for a uniform draw `unit` in `[0, 1)`.
    pub fn pick(&self, unit: f64) -> &'static str {
        let total = self.completed + self.busy + self.no_answer + self.voicemail + self.failed;
        let mut at = unit * total;
        for (weight, status) in [
            (self.completed, "COMPLETED"),
            (self.busy, "BUSY"),
            (self.no_answer, "NO_ANSWER"),
            (self.voicemail, "VOICEMAIL"),
            (self.failed, "FAILED"),
        ] {
            if at < weight {
                return status;
            }
            at -= weight;
        }
        "COMPLETED"
    }
}

impl std::str::FromStr for OutcomeMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut mix = Self {
            completed: 0.0,
            busy: 0.0,
            no_answer: 0.0,
            voicemail: 0.0,
            failed: 0.0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not name=weight"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("`{weight}` is not a weight (a number from 0)"))?;
            let slot = match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "completed" => &mut mix.completed,
                "busy" => &mut mix.busy,
                "no-answer" => &mut mix.no_answer,
                "voicemail" => &mut mix.voicemail,
                "failed" => &mut mix.failed,
                other => {
                    return Err(format!(
                        "`{other}` is not an outcome (completed, busy, no-answer, voicemail, failed)"
                    ));
                }
            };
            *slot = weight;
        }
        if mix.completed + mix.busy + mix.no_answer + mix.voicemail + mix.failed <= 0.0 {
            return Err("the weights add up to nothing".into());
        }
        Ok(mix)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 250ms, 3s)"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("`{text}` is not a rate between 0 and 1"))
}

/// Everything the simulator can be told, as flags or environment variables.
#[derive(Args, Clone, Debug)]
pub struct SimConfig {
    /// Which provider's API to play: the generic protocol, or a vendor's.
    #[arg(long, env = "SIM_DIALECT", value_enum, default_value_t = Dialect::Generic)]
    pub dialect: Dialect,
    /// Where webhooks go when the dial does not say (Retell takes its webhook URL from the
    /// agent: the service's `{WEBHOOK_BASE_URL}/api/v1/callbacks/retell`).
    #[arg(long, env = "SIM_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The vendor's own limit on calls at once (0: none): Twilio and Bland answer a dial
    /// past it 429; Retell and Vapi take it and end it unplaced with their concurrency reason.
    #[arg(long, env = "SIM_VENDOR_CONCURRENCY", default_value_t = 0)]
    pub vendor_concurrency: usize,
    /// Address to listen on.
    #[arg(long, env = "SIM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, env = "SIM_PORT", default_value_t = 4000)]
    pub port: u16,
    /// The key callers must send (the service's AI_CALL_API_KEY): the bearer key, Twilio's
    /// auth token (with the account `AC000…0`), Bland's `authorization`. Twilio and Retell
    /// sign their webhooks with it.
    #[arg(
        long,
        env = "SIM_API_KEY",
        default_value = "sim-key",
        hide_env_values = true
    )]
    pub api_key: String,
    /// When set, webhooks are signed with it: per Standard Webhooks (`whsec_…`) for the
    /// generic dialect, as Vapi and Bland sign for theirs.
    #[arg(long, env = "SIM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Seed of the random draws, for repeatable runs.
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Shortest simulated call.
    #[arg(long, env = "SIM_MIN_DURATION", default_value = "2s", value_parser = parse_duration)]
    pub min_duration: Duration,
    /// Longest simulated call.
    #[arg(long, env = "SIM_MAX_DURATION", default_value = "8s", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// How calls end, as weights: completed=70,busy=10,no-answer=10,voicemail=5,failed=5.
    #[arg(
        long,
        env = "SIM_OUTCOMES",
        default_value = "completed=70,busy=10,no-answer=10,voicemail=5,failed=5"
    )]
    pub outcomes: OutcomeMix,
    /// Share of new dial requests answered 503.
    #[arg(long, env = "SIM_ERROR_RATE", default_value = "0", value_parser = parse_rate)]
    pub error_rate: f64,
    /// Share of new dial requests answered 429.
    #[arg(long, env = "SIM_RATE_LIMIT_RATE", default_value = "0", value_parser = parse_rate)]
    pub rate_limit_rate: f64,
    /// `Retry-After` of the 429s, in seconds.
    #[arg(long, env = "SIM_RETRY_AFTER", default_value_t = 1)]
    pub retry_after: u64,
    /// Share of dial requests answered slowly (after `--slow-delay`).
    #[arg(long, env = "SIM_SLOW_RATE", default_value = "0", value_parser = parse_rate)]
    pub slow_rate: f64,
    /// Share of new dial requests swallowed: never placed and never answered (the caller
    /// times out not knowing whether the call was placed).
    #[arg(long, env = "SIM_LOSE_DIAL_RATE", default_value = "0", value_parser = parse_rate)]
    pub lose_dial_rate: f64,
    /// How slow a slow answer is.
    #[arg(long, env = "SIM_SLOW_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub slow_delay: Duration,
    /// Send QUEUED/RINGING/IN_PROGRESS webhooks before the final one.
    #[arg(long, env = "SIM_PROGRESS_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub progress_webhooks: bool,
    /// Share of final webhooks never sent (the service must expire those calls).
    #[arg(long, env = "SIM_DROP_WEBHOOK_RATE", default_value = "0", value_parser = parse_rate)]
    pub drop_webhook_rate: f64,
    /// Share of final webhooks sent twice.
    #[arg(long, env = "SIM_DUPLICATE_WEBHOOK_RATE", default_value = "0", value_parser = parse_rate)]
    pub duplicate_webhook_rate: f64,
    /// Share of final webhooks held back for `--late-webhook-delay` after the call ended.
    #[arg(long, env = "SIM_LATE_WEBHOOK_RATE", default_value = "0", value_parser = parse_rate)]
    pub late_webhook_rate: f64,
    /// How late a late webhook is.
    #[arg(long, env = "SIM_LATE_WEBHOOK_DELAY", default_value = "60s", value_parser = parse_duration)]
    pub late_webhook_delay: Duration,
    /// Share of calls whose final webhook is sent before their progress webhooks.
    #[arg(long, env = "SIM_OUT_OF_ORDER_RATE", default_value = "0", value_parser = parse_rate)]
    pub out_of_order_rate: f64,
}

/// The faults of the provider's API that can be switched while the simulator runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    pub error_rate: f64,
    /// Dials swallowed: never placed, never answered.
    pub lose_dial_rate: f64,
    pub rate_limit_rate: f64,
    pub slow_rate: f64,
    pub slow_delay: Duration,
}

impl SimConfig {
    pub fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            lose_dial_rate: self.lose_dial_rate,
            rate_limit_rate: self.rate_limit_rate,
            slow_rate: self.slow_rate,
            slow_delay: self.slow_delay,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            dialect: Dialect::Generic,
            webhook_url: None,
            vendor_concurrency: 0,
            host: "127.0.0.1".into(),
            port: 0,
            api_key: "sim-key".into(),
            webhook_secret: None,
            seed: 42,
            min_duration: Duration::from_secs(2),
            max_duration: Duration::from_secs(8),
            outcomes: OutcomeMix::default(),
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after: 1,
            slow_rate: 0.0,
            slow_delay: Duration::from_secs(2),
            lose_dial_rate: 0.0,
            progress_webhooks: true,
            drop_webhook_rate: 0.0,
            duplicate_webhook_rate: 0.0,
            late_webhook_rate: 0.0,
            late_webhook_delay: Duration::from_secs(60),
            out_of_order_rate: 0.0,
        }
    }
}

impl SimConfig {
    /// Problems a person should hear about before the server starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_duration < self.min_duration {
            return Err("--max-duration must not be shorter than --min-duration".into());
        }
        if let Some(secret) = &self.webhook_secret
            && self.dialect == Dialect::Generic
        {
            crate::domain::webhook_secret_bytes(secret)
                .map_err(|problem| format!("--webhook-secret {problem}"))?;
        }
        if self.webhook_secret.as_deref() == Some("") {
            return Err("--webhook-secret must not be empty".into());
        }
        if let Some(url) = &self.webhook_url {
            reqwest::Url::parse(url).map_err(|err| format!("--webhook-url: {err}"))?;
        }
        if self.api_key.is_empty() {
            return Err("--api-key must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick() {
        let mix: OutcomeMix = "completed=1, busy=1".parse().unwrap();
        assert_eq!(mix.pick(0.25), "COMPLETED");
        assert_eq!(mix.pick(0.75), "BUSY");
        assert!("completed=x".parse::<OutcomeMix>().is_err());
        assert!("hungup=1".parse::<OutcomeMix>().is_err());
        assert!("completed=0".parse::<OutcomeMix>().is_err());
        assert_eq!(
            "no_answer=1".parse::<OutcomeMix>().unwrap().pick(0.5),
            "NO_ANSWER"
        );
    }
}
