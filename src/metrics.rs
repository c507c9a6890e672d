//! Prometheus metrics: every name in one place, recorded through the `metrics` facade and
//! rendered by `GET /metrics`.

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::domain::{CallStatus, RetryDecision};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets for latencies, from a millisecond to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Only one recorder per process; a second installation (tests) is harmless.
        let _ = metrics::set_global_recorder(recorder);
        export_at_zero();
        handle
    })
}

/// Every counter, with each of its labels, from the start: a series that appears only at
/// its first event makes `rate()` and alerts blind until then.
fn export_at_zero() {
    for kind in ["create", "accepted", "webhook", "delivery"] {
        counter!("call_orchestrator_write_batches_total", "kind" => kind).increment(0);
        counter!("call_orchestrator_write_batch_items_total", "kind" => kind).increment(0);
    }
    for outcome in PROVIDER_OUTCOMES {
        counter!("call_orchestrator_provider_requests_total", "outcome" => *outcome).increment(0);
    }
    for outcome in WEBHOOK_OUTCOMES {
        counter!("call_orchestrator_webhooks_total", "outcome" => *outcome).increment(0);
    }
    for outcome in ["retry_scheduled", "attempts_exhausted"] {
        counter!("call_orchestrator_failed_attempts_total", "outcome" => outcome).increment(0);
    }
    for outcome in crate::worker::EVENT_TRY_OUTCOMES {
        counter!("call_orchestrator_event_delivery_tries_total", "outcome" => *outcome)
            .increment(0);
    }
    for outcome in ["delivered", "failed"] {
        counter!("call_orchestrator_event_deliveries_total", "outcome" => outcome).increment(0);
    }
    for what in ["calls", "events"] {
        counter!("call_orchestrator_retention_deleted_total", "what" => what).increment(0);
    }
    counter!("call_orchestrator_claimed_total").increment(0);
    counter!("call_orchestrator_calls_expired_total").increment(0);
    counter!("call_orchestrator_attempts_rescued_total").increment(0);
    for outcome in RECONCILE_OUTCOMES {
        counter!("call_orchestrator_reconciliations_total", "outcome" => *outcome).increment(0);
    }
    for why in HELD_REASONS {
        counter!("call_orchestrator_calls_held_total", "why" => *why).increment(0);
    }
}

/// The `why` labels of `call_orchestrator_calls_held_total`: a due call the claim did not
/// dial at its turn, because of its schedule (`calls.waiting_for`), its deadline
/// (`EXPIRED`) or its number's suppression (`CANCELLED`).
pub const HELD_REASONS: &[&str] = &[
    "NOT_BEFORE",
    "CALLING_WINDOW",
    "DAILY_LIMIT",
    "DEADLINE",
    "EXPIRED",
    "SUPPRESSED",
];

/// Calls the claim held back at their turn.
pub fn claim_held<'a>(waiting: impl Iterator<Item = &'a str>, expired: usize, cancelled: usize) {
    for why in waiting {
        if let Some(why) = HELD_REASONS.iter().find(|r| **r == why) {
            counter!("call_orchestrator_calls_held_total", "why" => *why).increment(1);
        }
    }
    counter!("call_orchestrator_calls_held_total", "why" => "EXPIRED").increment(expired as u64);
    counter!("call_orchestrator_calls_held_total", "why" => "SUPPRESSED")
        .increment(cancelled as u64);
}

/// The outcome labels of `call_orchestrator_reconciliations_total`: the look-up found the
/// call ended (and applied the end), still under way, unknown to the provider, or failed.
pub const RECONCILE_OUTCOMES: &[&str] = &["ended", "running", "not_found", "failed"];

/// One look-up of a call whose end had not arrived.
pub fn reconciled(outcome: &'static str) {
    counter!("call_orchestrator_reconciliations_total", "outcome" => outcome).increment(1);
}

/// The outcome labels of `call_orchestrator_provider_requests_total` (`DialOutcome::label`).
pub const PROVIDER_OUTCOMES: &[&str] = &[
    "accepted",
    "rate_limited",
    "transient",
    "permanent",
    "unknown",
];

/// The outcome labels of `call_orchestrator_webhooks_total`.
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "applied",
    "duplicate",
    "unknown_call",
    "invalid",
    "bad_signature",
    "bad_token",
    "unauthenticated",
    "mismatch",
    "error",
];

/// One try of an event delivery, by how it went (`worker::EVENT_TRY_OUTCOMES`).
pub fn event_try(outcome: &'static str, duration: Duration) {
    counter!("call_orchestrator_event_delivery_tries_total", "outcome" => outcome).increment(1);
    histogram!("call_orchestrator_event_delivery_request_duration_seconds")
        .record(duration.as_secs_f64());
}

/// A delivery answered 2xx, `latency` after the change its event reports.
pub fn event_delivered(latency: Duration) {
    counter!("call_orchestrator_event_deliveries_total", "outcome" => "delivered").increment(1);
    histogram!("call_orchestrator_event_delivery_latency_seconds").record(latency.as_secs_f64());
}

/// A delivery whose every try failed.
pub fn event_failed() {
    counter!("call_orchestrator_event_deliveries_total", "outcome" => "failed").increment(1);
}

/// The Prometheus text exposition, with the status gauges set from `counts` and the
/// deliveries backlog from `pending_deliveries`.
pub fn render(
    counts: Option<&[(CallStatus, i64)]>,
    pending_deliveries: Option<i64>,
    limit: u32,
) -> String {
    if let Some(pending) = pending_deliveries {
        gauge!("call_orchestrator_event_deliveries_pending").set(pending as f64);
    }
    let handle = handle();
    if let Some(counts) = counts {
        for status in CallStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            gauge!("call_orchestrator_calls", "status" => status.as_str()).set(n as f64);
        }
    }
    gauge!("call_orchestrator_concurrency_limit").set(f64::from(limit));
    handle.run_upkeep();
    handle.render()
}

/// One claim transaction.
pub fn claimed(duration: Duration, calls: usize) {
    histogram!("call_orchestrator_claim_duration_seconds").record(duration.as_secs_f64());
    counter!("call_orchestrator_claimed_total").increment(calls as u64);
}

/// One group-commit batch of `items` writes of one kind (`create`, `accepted`, `webhook`):
/// items / batches is how many writes share a transaction.
pub fn write_batch(kind: &'static str, items: usize) {
    counter!("call_orchestrator_write_batches_total", "kind" => kind).increment(1);
    counter!("call_orchestrator_write_batch_items_total", "kind" => kind).increment(items as u64);
}

/// One dial request (resends included) and its outcome class.
pub fn provider_request(outcome: &'static str, duration: Duration) {
    counter!("call_orchestrator_provider_requests_total", "outcome" => outcome).increment(1);
    histogram!("call_orchestrator_provider_request_duration_seconds")
        .record(duration.as_secs_f64());
}

/// One webhook and what it came to.
pub fn webhook(outcome: &'static str) {
    counter!("call_orchestrator_webhooks_total", "outcome" => outcome).increment(1);
}

/// How long a due call waited for its claim.
pub fn dispatch_delay(delay: Duration) {
    histogram!("call_orchestrator_dispatch_delay_seconds").record(delay.as_secs_f64());
}

/// What a batch of retention deleted.
pub fn retention_deleted(batch: crate::db::Retained) {
    counter!("call_orchestrator_retention_deleted_total", "what" => "calls").increment(batch.calls);
    counter!("call_orchestrator_retention_deleted_total", "what" => "events")
        .increment(batch.events);
}

pub fn expired(calls: usize) {
    counter!("call_orchestrator_calls_expired_total").increment(calls as u64);
}

pub fn rescued(attempts: usize) {
    counter!("call_orchestrator_attempts_rescued_total").increment(attempts as u64);
}

/// A failed attempt's fate: retried later, or the call failed.
pub fn retry_decided(decision: RetryDecision) {
    let outcome = match decision {
        RetryDecision::RetryAfter(_) => "retry_scheduled",
        RetryDecision::GiveUp => "attempts_exhausted",
    };
    counter!("call_orchestrator_failed_attempts_total", "outcome" => outcome).increment(1);
}

/// From a wake-up (a slot freed, a call became due) to the claim it led to: this replica's
/// share of the slot refill latency.
pub fn refill(latency: Duration) {
    histogram!("call_orchestrator_refill_latency_seconds").record(latency.as_secs_f64());
}
