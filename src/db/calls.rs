//! Creating, reading, patching, cancelling and listing calls.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::DbError;
use crate::domain::{
    Call, CallPayload, CallStatus, CallTiming, CampaignRules, PhoneNumber, ScriptId,
    schedule::{Rules, Wait},
};

/// A row of `calls`, exactly as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct CallRow {
    id: Uuid,
    seq: i64,
    to_number: String,
    script_id: String,
    metadata: Value,
    status: CallStatus,
    attempts: i32,
    #[sqlx(rename = "external_call_id")]
    provider_call_id: Option<String>,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
    duration_sec: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    timezone: Option<String>,
    waiting_for: Option<String>,
    campaign_id: Option<Uuid>,
}

impl From<CallRow> for Call {
    fn from(row: CallRow) -> Self {
        let metadata = match row.metadata {
            Value::Object(map) => map,
            // The table's CHECK constraint keeps metadata an object.
            _ => Default::default(),
        };
        Call {
            id: row.id,
            payload: CallPayload {
                to: PhoneNumber::from_trusted(row.to_number),
                script_id: ScriptId::from_trusted(row.script_id),
                metadata,
            },
            status: row.status,
            attempts: row.attempts,
            provider_call_id: row.provider_call_id,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            duration_sec: row.duration_sec,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
            timing: CallTiming::stored(row.not_before, row.not_after, row.timezone.as_deref()),
            campaign_id: row.campaign_id,
        }
    }
}

/// A validated call about to be stored.
#[derive(Clone, Debug)]
pub struct NewCall {
    pub id: Uuid,
    pub payload: CallPayload,
    pub timing: CallTiming,
    /// When the schedule says it falls due, if later than at once, and why.
    pub due: Option<(DateTime<Utc>, Wait)>,
    /// The campaign it is added to.
    pub campaign_id: Option<Uuid>,
}

impl NewCall {
    /// A call due at once.
    pub fn new(payload: CallPayload) -> Self {
        Self::scheduled(payload, CallTiming::default(), &Rules::OFF)
    }

    /// A call due when `rules` say, from now.
    pub fn scheduled(payload: CallPayload, timing: CallTiming, rules: &Rules) -> Self {
        Self::scheduled_in(payload, timing, rules, None)
    }

    /// A call of `campaign` (if any), due when `rules` narrowed by the campaign's say.
    pub fn scheduled_in(
        payload: CallPayload,
        timing: CallTiming,
        rules: &Rules,
        campaign: Option<(Uuid, &CampaignRules)>,
    ) -> Self {
        let now = Utc::now();
        let (at, why) = rules.schedule(&timing.within(&payload.to, campaign.map(|(_, c)| c)), now);
        Self {
            id: Uuid::now_v7(),
            due: why.filter(|_| at > now).map(|why| (at, why)),
            payload,
            timing,
            campaign_id: campaign.map(|(id, _)| id),
        }
    }
}

/// What a create with an `Idempotency-Key` came to.
#[derive(Debug)]
pub enum CreateOutcome {
    /// The calls, created now.
    Created(Vec<Call>),
    /// The key was used within 24 hours with the same body: the calls of that request.
    Replayed(Vec<Call>),
}

/// An `Idempotency-Key` as one client sent it with one request.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyKey<'a> {
    /// Whose key it is: the SHA-256 of the client's API key, or empty without `API_KEYS`.
    pub scope: &'a [u8],
    pub key: &'a str,
    /// Hash of the request it came with (the route and the normalised body).
    pub request_hash: &'a [u8],
}

/// Inserts calls, leaving out those whose number is suppressed; returns the rows inserted,
/// oldest first.
async fn insert_calls<'e, E>(executor: E, calls: &[NewCall]) -> Result<Vec<Call>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let ids: Vec<Uuid> = calls.iter().map(|c| c.id).collect();
    let numbers: Vec<&str> = calls.iter().map(|c| c.payload.to.as_str()).collect();
    let scripts: Vec<&str> = calls.iter().map(|c| c.payload.script_id.as_str()).collect();
    let metadata: Vec<Value> = calls
        .iter()
        .map(|c| Value::Object(c.payload.metadata.clone()))
        .collect();
    let not_before: Vec<Option<DateTime<Utc>>> =
        calls.iter().map(|c| c.timing.not_before).collect();
    let not_after: Vec<Option<DateTime<Utc>>> = calls.iter().map(|c| c.timing.not_after).collect();
    let zones: Vec<Option<&str>> = calls
        .iter()
        .map(|c| c.timing.timezone.as_ref().map(|tz| tz.name()))
        .collect();
    let due: Vec<Option<DateTime<Utc>>> = calls.iter().map(|c| c.due.map(|(at, _)| at)).collect();
    let why: Vec<Option<&str>> = calls
        .iter()
        .map(|c| c.due.map(|(_, why)| why.as_str()))
        .collect();
    let campaigns: Vec<Option<Uuid>> = calls.iter().map(|c| c.campaign_id).collect();
    let rows: Vec<CallRow> = sqlx::query_as(include_str!("../../sql/queries/insert_calls.sql"))
        .bind(ids)
        .bind(numbers)
        .bind(scripts)
        .bind(metadata)
        .bind(not_before)
        .bind(not_after)
        .bind(zones)
        .bind(due)
        .bind(why)
        .bind(campaigns)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(Call::from).collect())
}

/// The calls of `calls` that `created` lacks: their numbers are suppressed.
fn suppressed(calls: &[NewCall], created: &[Call]) -> Vec<Suppressed> {
    let stored: std::collections::HashSet<Uuid> = created.iter().map(|c| c.id).collect();
    calls
        .iter()
        .enumerate()
        .filter(|(_, call)| !stored.contains(&call.id))
        .map(|(index, call)| Suppressed {
            index,
            number: call.payload.to.as_str().to_owned(),
        })
        .collect()
}

/// A call left out because its number is suppressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    /// Its index in the request.
    pub index: usize,
    pub number: String,
}

/// Stores calls in one transaction, in the order given; with `skip_suppressed`, leaves out
/// those whose number is suppressed and names them, else stores nothing when one is
/// (`DbError::Suppressed`).
pub async fn create_calls_skipping(
    pool: &PgPool,
    calls: &[NewCall],
    skip_suppressed: bool,
) -> Result<(Vec<Call>, Vec<Suppressed>), DbError> {
    let mut tx = pool.begin().await?;
    super::campaigns::hold_open(&mut tx, calls).await?;
    let created = insert_calls(&mut *tx, calls).await?;
    let left_out = suppressed(calls, &created);
    if !left_out.is_empty() && !skip_suppressed {
        tx.rollback().await?;
        return Err(DbError::Suppressed(left_out));
    }
    tx.commit().await?;
    Ok((created, left_out))
}

/// Stores calls in one transaction, in the order given; all or nothing (none when one's
/// number is suppressed).
pub async fn create_calls(pool: &PgPool, calls: &[NewCall]) -> Result<Vec<Call>, DbError> {
    create_calls_skipping(pool, calls, false)
        .await
        .map(|(created, _)| created)
}

/// Stores calls that arrived together in one statement (group commit), in the order
/// given; one result each. Should the shared statement fail, each call is stored on its
/// own, so one call's trouble is never another's.
pub async fn create_each(pool: &PgPool, calls: &[NewCall]) -> Vec<Result<Call, DbError>> {
    super::batch::together_or_each(
        "create",
        calls,
        |calls| async move {
            let mut by_id: std::collections::HashMap<Uuid, Call> = insert_calls(pool, calls)
                .await
                .map_err(DbError::from)?
                .into_iter()
                .map(|call| (call.id, call))
                .collect();
            Ok(calls
                .iter()
                .map(|call| by_id.remove(&call.id).ok_or_else(|| suppressed_one(call)))
                .collect())
        },
        |call| create_one(pool, call),
    )
    .await
}

async fn create_one(pool: &PgPool, call: &NewCall) -> Result<Call, DbError> {
    let mut created = insert_calls(pool, std::slice::from_ref(call)).await?;
    created.pop().ok_or_else(|| suppressed_one(call))
}

/// A single create the insert left out: its number is suppressed.
fn suppressed_one(call: &NewCall) -> DbError {
    DbError::Suppressed(vec![Suppressed {
        index: 0,
        number: call.payload.to.as_str().to_owned(),
    }])
}

/// Stores calls (one, or a batch, all or nothing) under an `Idempotency-Key`, in the same
/// transaction: a repeat within 24 hours with the same request answers the calls the
/// first one stored, another request under the same key is `IdempotencyConflict`. Keys
/// are the client's own (`IdempotencyKey::scope`): one client's key never answers
/// another's calls. Creates without a key go through `create_each` or `create_calls`.
pub async fn create_idempotent(
    pool: &PgPool,
    calls: &[NewCall],
    key: IdempotencyKey<'_>,
) -> Result<CreateOutcome, DbError> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.id).collect();
    // Nothing left to create (every call of a batch skipped as suppressed): only a repeat of
    // an earlier request has an answer.
    let Some(&first) = ids.first() else {
        return replay(pool, key)
            .await?
            .unwrap_or(Ok(CreateOutcome::Created(Vec::new())));
    };
    // A key can expire between our failed claim and our look-up; a few rounds settle it.
    for _ in 0..3 {
        let mut tx = pool.begin().await?;
        if let Err(refused) = super::campaigns::hold_open(&mut tx, calls).await {
            tx.rollback().await?;
            return match replay(pool, key).await? {
                Some(answer) => answer,
                None => Err(refused),
            };
        }
        let created = insert_calls(&mut *tx, calls).await?;
        let left_out = suppressed(calls, &created);
        if !left_out.is_empty() {
            tx.rollback().await?;
            // A repeat of a request whose calls were created before their number was
            // suppressed answers those calls, as any repeat does.
            return match replay(pool, key).await? {
                Some(answer) => answer,
                None => Err(DbError::Suppressed(left_out)),
            };
        }
        let claimed: Option<Uuid> =
            sqlx::query_scalar(include_str!("../../sql/queries/claim_idempotency_key.sql"))
                .bind(key.scope)
                .bind(key.key)
                .bind(key.request_hash)
                .bind(first)
                .bind(&ids)
                .fetch_optional(&mut *tx)
                .await?;
        if claimed.is_some() {
            tx.commit().await?;
            return Ok(CreateOutcome::Created(created));
        }
        tx.rollback().await?;
        if let Some(answer) = replay(pool, key).await? {
            return answer;
        }
    }
    Err(DbError::Other(sqlx::Error::Protocol(
        "Idempotency-Key kept changing hands".into(),
    )))
}

/// What an earlier request under `key` answers to a repeat: its calls, or a conflict when
/// it was another request; `None` when the key is unused (or expired).
async fn replay(
    pool: &PgPool,
    key: IdempotencyKey<'_>,
) -> Result<Option<Result<CreateOutcome, DbError>>, DbError> {
    let existing: Option<(Vec<u8>, Uuid, Option<Vec<Uuid>>)> =
        sqlx::query_as(include_str!("../../sql/queries/find_idempotency_key.sql"))
            .bind(key.scope)
            .bind(key.key)
            .fetch_optional(pool)
            .await?;
    Ok(match existing {
        Some((stored, _, _)) if stored != key.request_hash => {
            Some(Err(DbError::IdempotencyConflict))
        }
        Some((_, call_id, call_ids)) => {
            let ids = call_ids.unwrap_or_else(|| vec![call_id]);
            Some(get_calls(pool, &ids).await.map(CreateOutcome::Replayed))
        }
        None => None,
    })
}

/// Calls by id, in the order of `ids`; `NotFound` if one is missing.
async fn get_calls(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Call>, DbError> {
    let rows: Vec<CallRow> =
        sqlx::query_as(include_str!("../../sql/queries/get_calls_in_order.sql"))
            .bind(ids)
            .fetch_all(pool)
            .await?;
    if rows.len() != ids.len() {
        return Err(DbError::NotFound);
    }
    Ok(rows.into_iter().map(Call::from).collect())
}

/// The calls that events recorded, as each event's snapshot holds the row; by event id.
pub async fn calls_of_events(
    pool: &PgPool,
    event_ids: &[Uuid],
) -> Result<Vec<(Uuid, Call)>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Recorded {
        event_id: Uuid,
        #[sqlx(flatten)]
        row: CallRow,
    }
    let rows: Vec<Recorded> = sqlx::query_as(
        "SELECT e.id AS event_id, r.* FROM client_events e \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::calls, e.snapshot) r WHERE e.id = ANY ($1) AND e.call_id IS NOT NULL",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, Call::from(r.row)))
        .collect())
}

/// One call by id.
pub async fn get_call(pool: &PgPool, id: Uuid) -> Result<Call, DbError> {
    let row: Option<CallRow> = sqlx::query_as("SELECT * FROM calls WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(Call::from).ok_or(DbError::NotFound)
}

/// Replaces the payload and schedule of a `PENDING` call with what `apply` makes of them,
/// and moves its due time where `rules` say. The row is locked while the change is
/// validated, so the dispatcher either claims the call before (and the change is refused)
/// or after (and dials the changed call). `patch` is recorded on the timeline: the payload's
/// merge patch (or null) and the schedule fields changed.
pub async fn update_call<F, E>(
    pool: &PgPool,
    id: Uuid,
    patch: (&Value, &Value),
    rules: &Rules,
    apply: F,
) -> Result<Result<Call, E>, DbError>
where
    F: FnOnce(&Call, Option<&CampaignRules>) -> Result<(CallPayload, CallTiming), E>,
{
    let mut tx = pool.begin().await?;
    let row: Option<CallRow> = sqlx::query_as("SELECT * FROM calls WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let row = row.ok_or(DbError::NotFound)?;
    let waiting_for = row.waiting_for.clone();
    let current = Call::from(row);
    if current.status != CallStatus::Pending {
        return Err(DbError::NotPending(current.status));
    }
    let campaign = match current.campaign_id {
        Some(id) => Some(super::campaigns::rules_of(&mut *tx, id).await?),
        None => None,
    };
    let (payload, timing) = match apply(&current, campaign.as_ref()) {
        Ok(changed) => changed,
        Err(err) => return Ok(Err(err)),
    };
    if payload.to != current.payload.to
        && !super::suppressed_among(&mut *tx, &[payload.to.as_str()])
            .await?
            .is_empty()
    {
        return Err(DbError::Suppressed(vec![Suppressed {
            index: 0,
            number: payload.to.as_str().to_owned(),
        }]));
    }
    // A change of the number or of the schedule schedules the call afresh: from when it fell
    // due (so a call keeps its place in the queue where its new window allows), or from
    // now when its old schedule had moved it. Any other change leaves its due time alone.
    let (due, why) = if payload.to == current.payload.to && timing == current.timing {
        (current.next_attempt_at, waiting_for)
    } else {
        let now = Utc::now();
        let base = match (current.next_attempt_at, &waiting_for) {
            (Some(due), None) => due,
            _ => now,
        };
        let (due, why) = rules.schedule(&timing.within(&payload.to, campaign.as_ref()), base);
        (Some(due), why.map(|w| w.as_str().to_owned()))
    };
    let row: CallRow = sqlx::query_as(include_str!("../../sql/queries/update_payload.sql"))
        .bind(id)
        .bind(payload.to.as_str())
        .bind(payload.script_id.as_str())
        .bind(Value::Object(payload.metadata))
        .bind(patch.0)
        .bind(timing.not_before)
        .bind(timing.not_after)
        .bind(timing.timezone.as_ref().map(|tz| tz.name()))
        .bind(due)
        .bind(why)
        .bind(patch.1)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(row.into()))
}

/// Cancels a `PENDING` call.
pub async fn cancel_call(pool: &PgPool, id: Uuid) -> Result<Call, DbError> {
    let row: Option<CallRow> = sqlx::query_as(include_str!("../../sql/queries/cancel_call.sql"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row.into()),
        None => Err(DbError::NotPending(get_call(pool, id).await?.status)),
    }
}

/// Filters and page of `GET /api/v1/calls`.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    pub status: Option<CallStatus>,
    pub to: Option<PhoneNumber>,
    pub campaign_id: Option<Uuid>,
    /// Which page: by number (from 1), or after a cursor.
    pub page: Page,
    pub limit: u32,
}

/// Where a page of a list starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The page of this number, from 1; costs a walk over the pages before it.
    Number(u32),
    /// The items after the last one of an earlier page (its `seq`); costs only the page.
    After(i64),
}

impl Default for Page {
    fn default() -> Self {
        Page::Number(1)
    }
}

impl Page {
    /// The `seq` the page's items are below (after a cursor), and how many items it skips
    /// (by number), for pages of `limit`.
    pub(super) fn bounds(self, limit: u32) -> (Option<i64>, i64) {
        match self {
            Page::After(seq) => (Some(seq), 0),
            Page::Number(number) => (None, i64::from(number.saturating_sub(1)) * i64::from(limit)),
        }
    }

    pub(super) fn is_by_number(self) -> bool {
        matches!(self, Page::Number(_))
    }
}

/// A list query asks for one item more than `limit` to know whether a page follows: drops
/// it, and returns the cursor of the next page (`seq` of the page's last item) if so.
pub(super) fn cut_page<R>(rows: &mut Vec<R>, limit: u32, seq: impl Fn(&R) -> i64) -> Option<i64> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(seq)
}

/// One page of a list, newest first.
#[derive(Clone, Debug)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    /// How many items match the filter; only for a page by number.
    pub total: Option<i64>,
    /// The cursor of the next page (the `seq` of this page's last item); `None` on the last.
    pub next: Option<i64>,
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &CallFilter) {
    query.push(" WHERE true");
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(to) = &filter.to {
        query
            .push(" AND to_number = ")
            .push_bind(to.as_str().to_owned());
    }
    if let Some(campaign) = filter.campaign_id {
        query.push(" AND campaign_id = ").push_bind(campaign);
    }
}

/// One page of calls, newest first. A page by number also says how many calls match: from
/// the counts the database keeps (by status, by campaign), or for a number from its index,
/// never from a scan of `calls`.
pub async fn list_calls(pool: &PgPool, filter: &CallFilter) -> Result<ListPage<Call>, DbError> {
    let mut query = QueryBuilder::new("SELECT * FROM calls");
    push_filter(&mut query, filter);
    let (after, offset) = filter.page.bounds(filter.limit);
    if let Some(seq) = after {
        query.push(" AND seq < ").push_bind(seq);
    }
    query
        .push(" ORDER BY seq DESC LIMIT ")
        .push_bind(i64::from(filter.limit) + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    let mut rows: Vec<CallRow> = query.build_query_as().fetch_all(pool).await?;
    let next = cut_page(&mut rows, filter.limit, |row| row.seq);
    let total = if filter.page.is_by_number() {
        Some(count_matching(pool, filter).await?)
    } else {
        None
    };
    Ok(ListPage {
        items: rows.into_iter().map(Call::from).collect(),
        total,
        next,
    })
}

/// How many calls match `filter`: a number's calls from its index (a few per number), the
/// others from the kept counts.
async fn count_matching(pool: &PgPool, filter: &CallFilter) -> Result<i64, DbError> {
    if filter.to.is_some() {
        let mut count = QueryBuilder::new("SELECT count(*) FROM calls");
        push_filter(&mut count, filter);
        return Ok(count.build_query_scalar().fetch_one(pool).await?);
    }
    let counts = match filter.campaign_id {
        Some(campaign) => super::campaigns::counts_of(pool, &[campaign])
            .await?
            .into_iter()
            .map(|(_, status, calls)| (status, calls))
            .collect(),
        None => count_by_status(pool).await?,
    };
    Ok(counts
        .into_iter()
        .filter(|(status, _)| filter.status.is_none_or(|s| s == *status))
        .map(|(_, calls)| calls)
        .sum())
}

/// The number of calls in each status, from the counts the database keeps (see the
/// call_counts migration): a few rows, however many calls are stored.
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(CallStatus, i64)>, DbError> {
    Ok(
        sqlx::query_as(include_str!("../../sql/queries/call_counts.sql"))
            .fetch_all(pool)
            .await?,
    )
}

/// Folds the changes of the calls' and the campaigns' counts into the counts, so that a
/// read of them sums a few rows; returns how many changes were folded.
pub async fn fold_counts(pool: &PgPool) -> Result<usize, DbError> {
    let folded: i64 = sqlx::query_scalar(include_str!("../../sql/queries/fold_call_counts.sql"))
        .bind(FOLD_BATCH)
        .fetch_one(pool)
        .await?;
    Ok(folded as usize + super::campaigns::fold_campaign_counts(pool).await?)
}

/// Vacuums the tables of the counts' changes (skipping one being vacuumed already), so that a
/// read of the counts scans live rows only.
pub async fn vacuum_count_changes(pool: &PgPool) -> Result<(), DbError> {
    use sqlx::Executor as _;
    pool.execute(sqlx::raw_sql(
        "VACUUM (SKIP_LOCKED) call_count_changes, campaign_count_changes",
    ))
    .await?;
    Ok(())
}

/// Most count changes one fold takes.
const FOLD_BATCH: i64 = 50_000;
