//! The decisions as tables: each row a state, an answer, and what it must come to.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::domain::{
    AttemptState, DialOutcome, PerOutcome, ProviderStatus, ReportSource, WebhookUpdate,
};

const RETRY: Retry = Retry {
    policy: RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(1800),
        outcomes: PerOutcome::EVERY,
    },
    jitter: 0.5,
    rules: crate::domain::schedule::Rules::OFF,
};

/// Attempt `attempt` of a call whose current attempt is `current`.
fn state(call: CallStatus, current: i32, attempt: i32, status: AttemptStatus) -> AttemptState {
    AttemptState {
        call_status: call,
        call_attempts: current,
        attempt,
        status,
        provider_call_id: None,
        final_webhook: false,
    }
}

fn live(status: AttemptStatus) -> AttemptState {
    state(CallStatus::InProgress, 1, 1, status)
}

fn webhook(status: ProviderStatus) -> WebhookUpdate {
    WebhookUpdate {
        provider_call_id: "p-1".into(),
        status,
        duration_sec: Some(42),
        reason: None,
        reference: None,
        authenticated: true,
        webhook_id: None,
        body: json!({}),
        source: ReportSource::Webhook,
    }
}

fn settlement(decision: &Decision) -> &Settlement {
    match &decision.effect {
        Effect::Settle(settlement) => settlement,
        other => panic!("expected a settlement, got {other:?}"),
    }
}

fn transient() -> DialOutcome {
    DialOutcome::Transient {
        reason: "provider answered 502".into(),
        retry_after: None,
    }
}

#[test]
fn a_dial_answer_after_the_attempt_was_settled_changes_nothing() {
    for status in [
        AttemptStatus::Accepted,
        AttemptStatus::Completed,
        AttemptStatus::Failed,
    ] {
        let decision = decide_dial(&live(status), &transient(), 0, RETRY);
        assert_eq!(decision.effect, Effect::Unchanged(Unchanged::Settled));
    }
}

#[test]
fn an_unknown_outcome_keeps_the_attempt_open() {
    let outcome = DialOutcome::Unknown {
        reason: "timeout".into(),
        resend_in: Duration::from_secs(5),
    };
    let decision = decide_dial(&live(AttemptStatus::Dialing), &outcome, 0, RETRY);
    let Effect::KeepOpen { resend_in, entry } = decision.effect else {
        panic!("{decision:?}")
    };
    assert_eq!(resend_in, Duration::from_secs(5));
    assert_eq!(entry.kind, EventKind::DialUnknown);
    assert_eq!(entry.detail["resendInMs"], 5000);
    assert_eq!(decision.retry, None);
}

#[test]
fn a_transient_failure_is_retried_while_attempts_remain() {
    let decision = decide_dial(&live(AttemptStatus::Dialing), &transient(), 0, RETRY);
    let settled = settlement(&decision);
    assert_eq!(settled.outcome, AttemptStatus::Failed);
    assert_eq!(settled.entry.kind, EventKind::DialFailed);
    assert!(matches!(settled.call, CallMove::Retry { counts: true, .. }));
    assert!(matches!(decision.retry, Some(RetryDecision::RetryAfter(_))));

    let last = state(CallStatus::InProgress, 3, 3, AttemptStatus::Dialing);
    let decision = decide_dial(&last, &transient(), 0, RETRY);
    assert!(matches!(settlement(&decision).call, CallMove::Fail { .. }));
    assert_eq!(decision.retry, Some(RetryDecision::GiveUp));
}

#[test]
fn an_attempt_that_no_longer_holds_the_call_moves_nothing() {
    // An earlier attempt, and the current attempt of a call that expired meanwhile.
    for stale in [
        state(CallStatus::InProgress, 2, 1, AttemptStatus::Dialing),
        state(CallStatus::Expired, 1, 1, AttemptStatus::Dialing),
    ] {
        for outcome in [
            transient(),
            DialOutcome::Permanent {
                reason: "422".into(),
            },
            DialOutcome::RateLimited { retry_after: None },
        ] {
            let decision = decide_dial(&stale, &outcome, 0, RETRY);
            assert_eq!(settlement(&decision).call, CallMove::Stay, "{outcome:?}");
            assert_eq!(decision.retry, None);
        }
    }
}

#[test]
fn a_refusal_fails_the_call_at_once() {
    let outcome = DialOutcome::Permanent {
        reason: "provider answered 422: bad number".into(),
    };
    let decision = decide_dial(&live(AttemptStatus::Dialing), &outcome, 0, RETRY);
    let settled = settlement(&decision);
    assert_eq!(
        settled.call,
        CallMove::Fail {
            reason: "provider answered 422: bad number".into()
        }
    );
    assert_eq!(decision.retry, None, "no retry decision: nothing to retry");
}

#[test]
fn a_429_is_not_an_attempt_until_too_many_in_a_row() {
    let outcome = DialOutcome::RateLimited {
        retry_after: Some(Duration::from_secs(3)),
    };
    let decision = decide_dial(&live(AttemptStatus::Dialing), &outcome, 0, RETRY);
    let settled = settlement(&decision);
    assert_eq!(settled.outcome, AttemptStatus::RateLimited);
    assert_eq!(
        settled.call,
        CallMove::Retry {
            delay: Duration::from_secs(3),
            counts: false
        }
    );
    assert_eq!(settled.call.entry(1), None, "no RETRY_SCHEDULED for a 429");
    // The wait doubles with each 429 in a row.
    let decision = decide_dial(&live(AttemptStatus::Dialing), &outcome, 2, RETRY);
    assert!(matches!(
        settlement(&decision).call,
        CallMove::Retry { delay, .. } if delay == Duration::from_secs(12)
    ));

    let decision = decide_dial(
        &live(AttemptStatus::Dialing),
        &outcome,
        MAX_RATE_LIMITED - 1,
        RETRY,
    );
    let settled = settlement(&decision);
    assert_eq!(settled.outcome, AttemptStatus::Failed);
    assert!(matches!(settled.call, CallMove::Retry { counts: true, .. }));
}

#[test]
fn a_webhook_is_routed_by_its_verified_reference_or_its_call_id() {
    let (a, b) = ((Uuid::from_u128(1), 1), (Uuid::from_u128(2), 1));
    let mut update = webhook(ProviderStatus::Completed);
    assert_eq!(route_webhook(&update, Some(a)), Ok(a));
    assert_eq!(route_webhook(&update, None), Err(None));
    update.reference = Some(a);
    assert_eq!(route_webhook(&update, None), Ok(a), "beat the 202");
    assert_eq!(route_webhook(&update, Some(a)), Ok(a));
    assert_eq!(
        route_webhook(&update, Some(b)),
        Err(Some(Unchanged::Mismatch))
    );
    update.reference = None;
    update.authenticated = false;
    assert_eq!(
        route_webhook(&update, Some(a)),
        Err(Some(Unchanged::Unauthenticated))
    );
}

#[test]
fn a_webhook_never_rebinds_an_attempt() {
    let mut known = live(AttemptStatus::Accepted);
    known.provider_call_id = Some("p-other".into());
    let decision = decide_webhook(&known, &webhook(ProviderStatus::Completed), 0, 0, RETRY);
    assert_eq!(decision.effect, Effect::Unchanged(Unchanged::Mismatch));
}

#[test]
fn progress_is_recorded_and_accepts_a_dialing_attempt_within_its_share() {
    let decision = decide_webhook(
        &live(AttemptStatus::Dialing),
        &webhook(ProviderStatus::Ringing),
        0,
        0,
        RETRY,
    );
    assert!(matches!(
        decision.effect,
        Effect::Progress { accept: true, .. }
    ));
    assert_eq!(decision.bind_provider_call_id.as_deref(), Some("p-1"));
    let decision = decide_webhook(
        &live(AttemptStatus::Accepted),
        &webhook(ProviderStatus::Ringing),
        MAX_PROGRESS_PER_ATTEMPT - 1,
        0,
        RETRY,
    );
    assert!(matches!(
        decision.effect,
        Effect::Progress { accept: false, .. }
    ));
    let decision = decide_webhook(
        &live(AttemptStatus::Accepted),
        &webhook(ProviderStatus::Ringing),
        MAX_PROGRESS_PER_ATTEMPT,
        0,
        RETRY,
    );
    assert_eq!(decision.effect, Effect::Unchanged(Unchanged::Duplicate));
}

#[test]
fn final_webhooks_follow_the_table() {
    use AttemptStatus as A;
    use CallMove as M;
    use CallStatus as C;
    use ProviderStatus as P;
    let complete = M::Complete {
        duration_sec: Some(42),
    };
    let retry =
        |decision: &Decision| matches!(settlement(decision).call, M::Retry { counts: true, .. });
    type Expected = fn(&M) -> bool;
    let cases: [(AttemptState, P, Expected); 9] = [
        (live(A::Accepted), P::Completed, |m| {
            matches!(m, M::Complete { .. })
        }),
        (live(A::Dialing), P::Completed, |m| {
            matches!(m, M::Complete { .. })
        }),
        (live(A::Accepted), P::Busy, |m| {
            matches!(m, M::Retry { counts: true, .. })
        }),
        // The real outcome of an attempt that expired or that the dial path settled.
        (state(C::Expired, 1, 1, A::Expired), P::Completed, |m| {
            matches!(m, M::Complete { .. })
        }),
        (state(C::Failed, 1, 1, A::Failed), P::Completed, |m| {
            matches!(m, M::Complete { .. })
        }),
        (state(C::Pending, 1, 1, A::Failed), P::Completed, |m| {
            matches!(m, M::Complete { .. })
        }),
        (state(C::Expired, 1, 1, A::Expired), P::NoAnswer, |m| {
            matches!(m, M::Fail { .. })
        }),
        (state(C::Failed, 1, 1, A::Failed), P::Failed, |m| {
            *m == M::Stay
        }),
        // A late word on an earlier attempt never moves the call.
        (state(C::InProgress, 2, 1, A::Accepted), P::Completed, |m| {
            *m == M::Stay
        }),
    ];
    for (state, status, expected) in cases {
        let decision = decide_webhook(&state, &webhook(status), 0, 0, RETRY);
        let settled = settlement(&decision);
        if let Some(to) = settled.call.status() {
            assert!(
                state.call_status.can_become(to),
                "{:?} -> {to:?} is not a transition of CallStatus",
                state.call_status
            );
        }
        assert!(
            expected(&settled.call),
            "{state:?} {status:?}: {:?}",
            settled.call
        );
        assert!(settled.final_webhook);
        assert_eq!(settled.entry.kind, EventKind::WebhookReceived);
        assert_eq!(settled.outcome == A::Completed, status == P::Completed);
    }
    let decision = decide_webhook(&live(A::Accepted), &webhook(P::Busy), 0, 0, RETRY);
    assert!(retry(&decision));
    assert_eq!(settlement(&decision).error.as_deref(), Some("BUSY"));
    assert!(matches!(decision.retry, Some(RetryDecision::RetryAfter(_))));
    assert_eq!(
        settlement(&decide_webhook(
            &live(A::Accepted),
            &webhook(P::Completed),
            0,
            0,
            RETRY
        ))
        .call,
        complete
    );
}

#[test]
fn a_final_webhook_after_one_was_applied_is_a_duplicate_or_a_late_word() {
    let mut settled = state(CallStatus::Completed, 1, 1, AttemptStatus::Completed);
    settled.final_webhook = true;
    settled.provider_call_id = Some("p-1".into());
    let decision = decide_webhook(&settled, &webhook(ProviderStatus::Completed), 0, 0, RETRY);
    assert_eq!(decision.effect, Effect::Unchanged(Unchanged::Duplicate));
    settled.call_attempts = 2;
    let decision = decide_webhook(&settled, &webhook(ProviderStatus::Failed), 0, 0, RETRY);
    assert!(matches!(decision.effect, Effect::Timeline(_)));
}

#[test]
fn a_call_move_says_what_it_did_on_the_timeline() {
    let retry = CallMove::Retry {
        delay: Duration::from_millis(1500),
        counts: true,
    };
    let entry = retry.entry(2).unwrap();
    assert_eq!(entry.kind, EventKind::RetryScheduled);
    assert_eq!(entry.detail, json!({"nextAttempt": 3, "delayMs": 1500}));
    assert_eq!(retry.status(), Some(CallStatus::Pending));
    assert_eq!(CallMove::Stay.entry(1), None);
    assert_eq!(CallMove::Stay.status(), None);
}

#[test]
fn a_vendor_concurrency_limit_is_not_an_attempt() {
    let decision = decide_webhook(
        &live(AttemptStatus::Accepted),
        &webhook(ProviderStatus::Throttled),
        0,
        0,
        RETRY,
    );
    let settled = settlement(&decision);
    assert_eq!(settled.outcome, AttemptStatus::RateLimited);
    assert!(matches!(
        settled.call,
        CallMove::Retry { counts: false, .. }
    ));
    assert!(settled.final_webhook);
    assert_eq!(decision.retry, None);
    // Past MAX_RATE_LIMITED in a row, a failed attempt.
    let decision = decide_webhook(
        &live(AttemptStatus::Accepted),
        &webhook(ProviderStatus::Throttled),
        0,
        MAX_RATE_LIMITED,
        RETRY,
    );
    assert_eq!(settlement(&decision).outcome, AttemptStatus::Failed);
    assert!(matches!(
        settlement(&decision).call,
        CallMove::Retry { counts: true, .. }
    ));
    // A late word on an attempt that is no longer live: the timeline only.
    let decision = decide_webhook(
        &state(CallStatus::InProgress, 2, 1, AttemptStatus::Failed),
        &webhook(ProviderStatus::Throttled),
        0,
        0,
        RETRY,
    );
    assert!(matches!(decision.effect, Effect::Timeline(_)));
}

#[test]
fn a_look_up_is_applied_like_its_webhook_and_recorded_as_reconciled() {
    let mut found = webhook(ProviderStatus::Completed);
    found.source = ReportSource::LookUp;
    let decision = decide_webhook(&live(AttemptStatus::Accepted), &found, 0, 0, RETRY);
    let settled = settlement(&decision);
    assert_eq!(settled.entry.kind, EventKind::Reconciled);
    assert!(matches!(settled.call, CallMove::Complete { .. }));
    found.status = ProviderStatus::InProgress;
    let decision = decide_webhook(&live(AttemptStatus::Accepted), &found, 0, 0, RETRY);
    assert!(matches!(
        decision.effect,
        Effect::Progress { ref entry, .. } if entry.kind == EventKind::Reconciled
    ));
}
