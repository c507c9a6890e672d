//! Claiming due calls for an attempt each, under the cap: one short transaction, committed
//! before any provider request is sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use uuid::Uuid;

use super::{DbError, calls::CallRow};
use crate::domain::{
    Call, CallTiming, CampaignRules, PhoneNumber,
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
    /// Its campaign, or the nil UUID for the calls of no campaign.
    lane: Uuid,
    priority: i16,
    /// When its lane was last served (higher is later).
    turn: i64,
    /// How many calls its lane may have claimed now (its campaign's cap, the global one).
    lane_free: i64,
    /// How many calls its lane was dealt this round, and every lane dealt some.
    quota: i64,
    quota_lanes: Vec<Uuid>,
    window_hours: Option<String>,
    window_days: Option<String>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    free: i64,
    ready_lanes: i64,
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
    /// The lanes served, in the order of their last call admitted (or held back).
    served: Vec<Uuid>,
    /// How many calls each lane had admitted.
    admitted: std::collections::HashMap<Uuid, usize>,
}

impl Sorted {
    /// Whether the round moved calls out of the way, so that another may find more.
    fn moved_any(&self) -> bool {
        !(self.later.0.is_empty() && self.expire.0.is_empty() && self.cancel.0.is_empty())
    }
}

/// One lane's candidates in a round, in due order.
struct Lane<'a> {
    id: Uuid,
    priority: i16,
    turn: i64,
    room: usize,
    dialable: Vec<&'a CandidateRow>,
    next: usize,
    admitted: usize,
    held: usize,
}

/// Asks the schedule about each candidate, then admits up to `free` of those it lets go, one
/// per number and at most each lane's room: the lanes of the highest priority first, one
/// call per lane in turn from the lane served longest ago (round-robin), so a campaign of a
/// million calls never starves one of ten.
fn sort(candidates: &[CandidateRow], free: usize, rules: &Rules) -> Sorted {
    let mut sorted = Sorted::default();
    let mut lanes: Vec<Lane<'_>> = Vec::new();
    let mut campaigns: std::collections::HashMap<Uuid, Option<CampaignRules>> =
        std::collections::HashMap::new();
    for row in candidates {
        let campaign = campaigns.entry(row.lane).or_insert_with(|| {
            (!row.lane.is_nil()).then(|| {
                CampaignRules::stored(
                    row.window_hours.as_deref(),
                    row.window_days.as_deref(),
                    row.start_at,
                    row.end_at,
                    None,
                )
            })
        });
        let number = PhoneNumber::from_trusted(row.to_number.clone());
        let timing = CallTiming::stored(row.not_before, row.not_after, row.timezone.as_deref());
        let candidate = Candidate {
            timing: timing.within(&number, campaign.as_ref()),
            suppressed: row.suppressed.as_deref(),
            recent_dials: &row.recent_dials,
        };
        if lanes.last().is_none_or(|l| l.id != row.lane) {
            lanes.push(Lane {
                id: row.lane,
                priority: row.priority,
                turn: row.turn,
                room: usize::try_from(row.lane_free).unwrap_or(0),
                dialable: Vec::new(),
                next: 0,
                admitted: 0,
                held: 0,
            });
        }
        let lane = lanes.last_mut().expect("pushed above");
        match rules.admit(&candidate, row.now) {
            Verdict::Dial => lane.dialable.push(row),
            Verdict::Wait { until, why } => {
                lane.held += 1;
                sorted.later.0.push(row.id);
                sorted.later.1.push(until);
                sorted.later.2.push(why.as_str());
            }
            Verdict::Expire(error) => {
                lane.held += 1;
                sorted.expire.0.push(row.id);
                sorted.expire.1.push(error);
            }
            Verdict::Cancel(error) => {
                lane.held += 1;
                sorted.cancel.0.push(row.id);
                sorted.cancel.1.push(error);
            }
        }
    }
    // The rows come lane by lane, in the order the lanes are served.
    lanes.sort_by_key(|l| (std::cmp::Reverse(l.priority), l.turn, l.id));
    for lane in &lanes {
        if lane.dialable.is_empty() && lane.held > 0 {
            sorted.served.push(lane.id);
        }
    }
    let mut numbers = std::collections::HashSet::new();
    // The lanes that had calls admitted, in the order of their last one.
    let mut last_served: Vec<Uuid> = Vec::new();
    let mut start = 0;
    while start < lanes.len() && sorted.dial.len() < free {
        let priority = lanes[start].priority;
        let end = start
            + lanes[start..]
                .iter()
                .take_while(|l| l.priority == priority)
                .count();
        // Rounds over the lanes of this priority, one call each, until none has more.
        loop {
            let mut progressed = false;
            for lane in &mut lanes[start..end] {
                if sorted.dial.len() >= free {
                    break;
                }
                if lane.admitted >= lane.room {
                    continue;
                }
                while let Some(row) = lane.dialable.get(lane.next) {
                    lane.next += 1;
                    if numbers.insert(row.to_number.as_str()) {
                        sorted.dial.push(row.id);
                        lane.admitted += 1;
                        last_served.retain(|l| *l != lane.id);
                        last_served.push(lane.id);
                        progressed = true;
                        break;
                    }
                }
            }
            if !progressed || sorted.dial.len() >= free {
                break;
            }
        }
        start = end;
    }
    sorted.served.extend(last_served);
    sorted.admitted = lanes.iter().map(|l| (l.id, l.admitted)).collect();
    sorted
}

/// The claim transaction's opening: READ COMMITTED, the idle timeout, no JIT, the claim
/// lock. The claim's plan is small but its estimates are not (a walk per lane, with a LIMIT
/// the planner cannot see through), and above `jit_above_cost` PostgreSQL would compile it
/// to machine code first: half a second, under the lock, for a query of a millisecond.
fn begin_claim() -> String {
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; \
         SELECT set_config('idle_in_transaction_session_timeout', '5s', true), \
                set_config('jit', 'off', true), \
                set_config('plan_cache_mode', 'force_generic_plan', true), \
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
    let mut passed_over: Vec<Uuid> = Vec::new();
    let mut served: Vec<Uuid> = Vec::new();
    let mut several_lanes = false;
    for _ in 0..ROUNDS {
        let wanted = max.saturating_sub(claimed.len() as u32);
        let candidates: Vec<CandidateRow> =
            sqlx::query_as(include_str!("../../sql/queries/claim_calls.sql"))
                .bind(i64::from(cap))
                .bind(i64::from(wanted))
                .bind(rules.max_attempts_per_number_per_day > 0)
                .bind(&passed_over)
                .fetch_all(&mut **tx)
                .await?;
        let Some(first) = candidates.first() else {
            break;
        };
        let free = usize::try_from(first.free).unwrap_or(0);
        several_lanes |= first.ready_lanes > 1 || !passed_over.is_empty();
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
        served.retain(|lane| !sorted.served.contains(lane));
        served.extend(sorted.served.iter().copied());
        // Between lanes, a lane that gave fewer calls than it was dealt (its calls held back,
        // locked, or to numbers in progress) is passed over by the next round, which deals
        // its slots to the others. A queue of one lane goes on as long as calls are moved
        // out of its way.
        let mut came_short = false;
        if first.ready_lanes > 1 || !passed_over.is_empty() {
            let quotas: std::collections::HashMap<Uuid, i64> =
                candidates.iter().map(|c| (c.lane, c.quota)).collect();
            for lane in &first.quota_lanes {
                let dealt = quotas.get(lane).copied().unwrap_or(1).max(1) as usize;
                if sorted.admitted.get(lane).copied().unwrap_or(0) < dealt
                    && !passed_over.contains(lane)
                {
                    passed_over.push(*lane);
                    came_short = true;
                }
            }
        }
        if !(sorted.moved_any() || came_short)
            || claimed.len() as u32 >= max
            || sorted.dial.len() >= free
        {
            break;
        }
    }
    // Turns matter only between lanes: a queue of loose calls alone keeps none.
    if several_lanes && !served.is_empty() {
        sqlx::query(include_str!("../../sql/queries/take_turns.sql"))
            .bind(&served)
            .execute(&mut **tx)
            .await?;
    }
    Ok(claimed)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// When the earliest `PENDING` call the claim serves falls due (or a campaign starts), if
/// any: see `sql/queries/next_due.sql`.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(
        sqlx::query_scalar(include_str!("../../sql/queries/next_due.sql"))
            .fetch_one(pool)
            .await?,
    )
}
