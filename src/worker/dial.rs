//! The dial path: one claimed attempt sent to the provider, and its answer recorded (with
//! retries while the database is out of reach, within the attempt's lease).

use std::time::Duration;

use super::Worker;
use crate::{
    db::{self, Claimed},
    domain::{DialOutcome, decide::Retry},
    provider::DialRequest,
};

/// A resend to a provider without a look-up sends the dial request again, which places the
/// call if the first never arrived; so it is held, and the attempt stays open as after a
/// lost answer, while the callee's window is closed (until it opens), once the call's
/// `notAfter` has passed, or while its number is suppressed. CALL_TIMEOUT still bounds the
/// attempt: one held that long ends `EXPIRED`, as it is not known whether it was placed.
/// A vendor's rescue only looks the call up, which is not a dial, at any hour.
async fn resend_held(worker: &Worker, claimed: &Claimed) -> Option<DialOutcome> {
    if !claimed.resend() || worker.provider.has_look_up() {
        return None;
    }
    let rules = &worker.settings.rules;
    let call = &claimed.call;
    let now = chrono::Utc::now();
    let held = |reason: String, until: chrono::DateTime<chrono::Utc>| DialOutcome::Unknown {
        reason: format!("{HELD}{reason}"),
        resend_in: (until - now).to_std().unwrap_or_default(),
    };
    let retry_later = now + chrono::Duration::minutes(1);
    if call
        .timing
        .not_after
        .is_some_and(|deadline| deadline <= now)
    {
        return Some(held(
            "its notAfter has passed".into(),
            now + chrono::Duration::hours(24),
        ));
    }
    match db::suppressed_among(&worker.pool, &[call.payload.to.as_str()]).await {
        Ok(found) if !found.is_empty() => {
            return Some(held("its number is suppressed".into(), retry_later));
        }
        Ok(_) => {}
        // Not knowing is not sending.
        Err(_) => {
            return Some(held(
                "the suppression list could not be read".into(),
                retry_later,
            ));
        }
    }
    let zones = rules.zones(&call.payload.to, call.timing.timezone);
    if rules.window.is_open(&zones, now) {
        return None;
    }
    let opening = rules
        .window
        .next_opening(&zones, now)
        .unwrap_or(now + chrono::Duration::hours(24));
    Some(held(
        format!(
            "outside the callee's calling window until {}",
            opening.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        opening,
    ))
}

/// How a held resend's reason starts.
const HELD: &str = "not sent again: ";

/// Dials a claimed attempt and records the answer (see `Worker::spawn_dial`).
#[tracing::instrument(skip_all, fields(call_id = %claimed.call.id, attempt = claimed.attempt))]
pub(crate) async fn dial_and_record(worker: &Worker, claimed: Claimed) {
    let (pool, provider, settings) = (&worker.pool, &worker.provider, &*worker.settings);
    let request = DialRequest {
        call_id: claimed.call.id,
        attempt: claimed.attempt,
        to: claimed.call.payload.to.as_str().to_owned(),
        script_id: claimed.call.payload.script_id.as_str().to_owned(),
        metadata: claimed.call.payload.metadata.clone(),
        webhook_url: worker.webhook_url(&claimed),
        resend: claimed.resend(),
        claimed_at: claimed.claimed_at,
        known_provider_ids: claimed.known_provider_ids.clone(),
    };
    let started = std::time::Instant::now();
    let held = resend_held(worker, &claimed).await;
    let was_held = held.is_some();
    let mut outcome = match held {
        // Not sent: a resend may place the call, and the schedule forbids it now.
        Some(held) => held,
        None => {
            let outcome = provider.dial(&request, claimed.rescues).await;
            crate::metrics::provider_request(outcome.label(), started.elapsed());
            outcome
        }
    };
    match &outcome {
        DialOutcome::Unknown { reason, resend_in } if was_held => {
            tracing::info!(?reason, ?resend_in, "resend held: the attempt stays open")
        }
        DialOutcome::Accepted { provider_call_id } => {
            tracing::info!(
                provider_call_id = provider_call_id.as_deref().unwrap_or(""),
                "dialed"
            )
        }
        DialOutcome::RateLimited { retry_after } => {
            tracing::warn!(?retry_after, "provider rate limit; the call waits")
        }
        // The provider's words, escaped (`?`): they may hold anything, newlines included.
        DialOutcome::Transient { reason, .. } => tracing::warn!(?reason, "dial failed"),
        DialOutcome::Permanent { reason } => tracing::warn!(?reason, "dial refused for good"),
        DialOutcome::Unknown { reason, resend_in } => tracing::warn!(
            ?reason,
            ?resend_in,
            "dial outcome unknown; the attempt stays open and is sent again"
        ),
    }
    // The database may be restarting: keep trying within the lease. Should it stay out of
    // reach, the attempt remains DIALING, and once the lease runs out the sweeper of some
    // replica sends it again with the same Idempotency-Key and records that answer.
    let deadline = tokio::time::Instant::now() + settings.lease() / 2;
    let mut pause = Duration::from_millis(100);
    loop {
        let result = match &outcome {
            // The hot path: answers that arrive together are recorded in one statement.
            DialOutcome::Accepted { provider_call_id } => {
                let accepted = db::Accepted {
                    call_id: claimed.call.id,
                    attempt_id: claimed.attempt_id,
                    provider_call_id: provider_call_id.clone(),
                };
                let key = claimed.call.id.as_u64_pair().1;
                match worker.accepts.submit(key, accepted).await {
                    Ok(result) => result.map(|()| None).map_err(anyhow::Error::from),
                    Err(lost) => Err(lost.into()),
                }
            }
            _ => {
                let retry = Retry {
                    policy: settings.policy,
                    jitter: fastrand::f64(),
                    rules: settings.rules,
                };
                db::record_dial_outcome(pool, claimed.call.id, claimed.attempt_id, &outcome, retry)
                    .await
                    .map_err(anyhow::Error::from)
            }
        };
        match result {
            Ok(decided) => {
                if let Some(decision) = decided {
                    crate::metrics::retry_decided(decision);
                }
                return;
            }
            Err(err)
                if err
                    .downcast_ref::<db::DbError>()
                    .is_some_and(db::DbError::is_duplicate_provider_call_id) =>
            {
                // The provider gave this attempt an id it had given another: its webhooks
                // could not tell the two apart. A provider error, settled as a failed
                // attempt, rather than an answer recorded for ever in vain.
                let DialOutcome::Accepted { provider_call_id } = &outcome else {
                    unreachable!("only a 2xx records a provider id")
                };
                let reason = format!(
                    "the provider answered with callId {:?}, which it had given another attempt",
                    provider_call_id.as_deref().unwrap_or_default()
                );
                tracing::error!(?reason, "provider error");
                outcome = if request.resend {
                    // The attempt may have been placed all the same (a look-up that matched
                    // the wrong call, a resend answered with another key's id): left open,
                    // never failed into a new dial.
                    DialOutcome::Unknown {
                        reason,
                        resend_in: crate::provider::unknown_resend_delay(claimed.rescues),
                    }
                } else {
                    DialOutcome::Transient {
                        reason,
                        retry_after: None,
                    }
                };
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "recording the dial outcome failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(error = %err, "could not record the dial outcome; the sweeper will resend it");
                return;
            }
        }
    }
}
