//! Claiming due calls for an attempt each, under the cap: one short transaction, committed
//! before any provider request is sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use uuid::Uuid;

use super::{DbError, calls::CallRow};
use crate::domain::{
    Call, CallTiming, PhoneNumber,
    schedule::{Candidate, Rules, Verdict},
};

/// Key of the transaction-scoped advisory lock that serialises claims across replicas.
pub(super) const CLAIM_LOCK: i64 = 0x6361_6c6c_5f6f_7263; // "call_orc"

/// A call claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub call: Call,
    /// The attempt number to dial, from 1.
    pub attempt: i32,
    /// The attempt's row: its answer is recorded on this row and no other (a number can be
    /// claimed again as another row after the vendor's concurrency limit refused it).
    pub attempt_id: i64,
    /// When the call fell due, for a fresh claim (not for a rescue).
    pub due_at: Option<DateTime<Utc>>,
    /// When the attempt was claimed: a call placed for it was created after this.
    pub claimed_at: DateTime<Utc>,
    /// For a rescue: the provider's ids of other attempts to the same number (claimed in the
    /// ten minutes before this one), which a look-up must not take for this attempt's.
    pub known_provider_ids: Vec<String>,
    /// How often the attempt was taken over since it was claimed: from 1, the attempt may
    /// have reached the provider already (its dialer died, or its answer was lost), so every
    /// send of it is a resend, and only a clear answer settles it.
    pub rescues: u32,
}

impl Claimed {
    /// Whether the attempt may have reached the provider already.
    pub fn resend(&self) -> bool {
        self.rescues > 0
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    call: CallRow,
    attempt_id: i64,
}

/// A due call the first half of a claim locked (`sql/queries/claim_calls.sql`).
#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: Uuid,
    to_number: String,
    due_at: DateTime<Utc>,
    timezone: Option<String>,
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    free: i64,
    now: DateTime<Utc>,
    suppressed: Option<String>,
    recent_dials: Vec<DateTime<Utc>>,
}

/// What the schedule made of one round of candidates: the calls to claim
/// (`sql/queries/claim_apply.sql`) and those held back (`sql/queries/hold_calls.sql`).
#[derive(Default)]
struct Sorted {
    dial: Vec<Uuid>,
    later: (Vec<Uuid>, Vec<DateTime<Utc>>, Vec<&'static str>),
    expire: (Vec<Uuid>, Vec<String>),
    cancel: (Vec<Uuid>, Vec<String>),
}

impl Sorted {
    /// Whether the round moved calls out of the way, so that another may find more.
    fn moved_any(&self) -> bool {
        !(self.later.0.is_empty() && self.expire.0.is_empty() && self.cancel.0.is_empty())
    }
}

/// Asks the schedule about each candidate, in order, and keeps up to `free` of those it
/// admits, one per number.
fn sort(candidates: &[CandidateRow], free: usize, rules: &Rules) -> Sorted {
    let mut sorted = Sorted::default();
    let mut numbers = std::collections::HashSet::new();
    for row in candidates {
        let number = PhoneNumber::from_trusted(row.to_number.clone());
        let timing = CallTiming::stored(row.not_before, row.not_after, row.timezone.as_deref());
        let candidate = Candidate {
            timing: timing.of(&number),
            suppressed: row.suppressed.as_deref(),
            recent_dials: &row.recent_dials,
        };
        match rules.admit(&candidate, row.now) {
            Verdict::Dial => {
                if sorted.dial.len() < free && numbers.insert(row.to_number.as_str()) {
                    sorted.dial.push(row.id);
                }
            }
            Verdict::Wait { until, why } => {
                sorted.later.0.push(row.id);
                sorted.later.1.push(until);
                sorted.later.2.push(why.as_str());
            }
            Verdict::Expire(error) => {
                sorted.expire.0.push(row.id);
                sorted.expire.1.push(error);
            }
            Verdict::Cancel(error) => {
                sorted.cancel.0.push(row.id);
                sorted.cancel.1.push(error);
            }
        }
    }
    sorted
}

/// The claim transaction's opening: READ COMMITTED, the idle timeout, the claim lock.
fn begin_claim() -> String {
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; \
         SELECT set_config('idle_in_transaction_session_timeout', '5s', true), \
                pg_advisory_xact_lock({CLAIM_LOCK})"
    )
}

/// Rounds of one claim: a round that moves calls out of the way (their window, their
/// deadline) is followed by another, so that they do not cost the calls behind them a turn.
const ROUNDS: usize = 4;

/// Claims up to `max` due calls within the cap, each admitted by `rules` (its window, its
/// deadline, its number's suppression and daily limit) at claim time, whatever was decided
/// when it was queued; moves the others on. See `sql/queries/claim_calls.sql` for why the
/// count is exact. A claim the one-number-in-progress index refuses is tried again.
pub async fn claim(
    pool: &PgPool,
    cap: u32,
    max: u32,
    lease: Duration,
    rules: &Rules,
) -> Result<Vec<Claimed>, DbError> {
    for _ in 0..3 {
        // READ COMMITTED, whatever the server's default: the claim's exactness argument
        // (sql/queries/claim_calls.sql) rests on each statement's snapshot being taken after
        // the lock was granted, which REPEATABLE READ or SERIALIZABLE would break.
        //
        // A replica that stalls while it holds the claim lock (stopped, swapped out, its
        // network gone) would hold every other replica's claims until its connection dies:
        // the server ends its session after a few idle seconds instead, which rolls the
        // claim back and frees the lock.
        //
        // BEGIN, the timeout and the lock go in one round trip (a simple query of several
        // statements), as the claim now takes two statements of its own. The lock is a
        // statement of its own all the same: the claim's statements take their snapshots
        // after it was granted.
        let mut tx = pool.begin_with(begin_claim()).await?;
        match claim_rounds(&mut tx, cap, max, lease, rules).await {
            Ok(claimed) => {
                tx.commit().await?;
                return Ok(claimed);
            }
            Err(err) if is_unique_violation(&err) => {
                tracing::warn!(error = %err, "claim refused by the one-call-per-number index; claiming again");
                tx.rollback().await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Vec::new())
}

async fn claim_rounds(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    cap: u32,
    max: u32,
    lease: Duration,
    rules: &Rules,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut claimed = Vec::new();
    for _ in 0..ROUNDS {
        let wanted = max.saturating_sub(claimed.len() as u32);
        let candidates: Vec<CandidateRow> =
            sqlx::query_as(include_str!("../../sql/queries/claim_calls.sql"))
                .bind(i64::from(cap))
                .bind(i64::from(wanted))
                .bind(rules.max_attempts_per_number_per_day > 0)
                .fetch_all(&mut **tx)
                .await?;
        let Some(first) = candidates.first() else {
            break;
        };
        let free = usize::try_from(first.free).unwrap_or(0);
        let sorted = sort(&candidates, free, rules);
        let due: std::collections::HashMap<Uuid, DateTime<Utc>> =
            candidates.iter().map(|c| (c.id, c.due_at)).collect();
        if sorted.moved_any() {
            sqlx::query(include_str!("../../sql/queries/hold_calls.sql"))
                .bind(&sorted.later.0)
                .bind(&sorted.later.1)
                .bind(&sorted.later.2)
                .bind(&sorted.expire.0)
                .bind(&sorted.expire.1)
                .bind(&sorted.cancel.0)
                .bind(&sorted.cancel.1)
                .execute(&mut **tx)
                .await?;
        }
        let rows: Vec<ClaimedRow> = if sorted.dial.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(include_str!("../../sql/queries/claim_apply.sql"))
                .bind(&sorted.dial)
                .bind(lease.as_secs_f64())
                .fetch_all(&mut **tx)
                .await?
        };
        let held = sorted.later.0.len() + sorted.expire.0.len() + sorted.cancel.0.len();
        if held > 0 {
            tracing::debug!(
                waiting = sorted.later.0.len(),
                expired = sorted.expire.0.len(),
                cancelled = sorted.cancel.0.len(),
                "the schedule held calls back at their turn"
            );
            crate::metrics::claim_held(
                sorted.later.2.iter().copied(),
                sorted.expire.0.len(),
                sorted.cancel.0.len(),
            );
        }
        claimed.extend(rows.into_iter().map(|row| {
            let call = Call::from(row.call);
            Claimed {
                attempt: call.attempts,
                attempt_id: row.attempt_id,
                due_at: due.get(&call.id).copied(),
                call,
                claimed_at: Utc::now(),
                known_provider_ids: Vec::new(),
                rescues: 0,
            }
        }));
        if !sorted.moved_any() || claimed.len() as u32 >= max || sorted.dial.len() >= free {
            break;
        }
    }
    Ok(claimed)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// When the earliest `PENDING` call falls due, if any is pending.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT min(due_at) FROM call_queue WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}
