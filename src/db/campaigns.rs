//! Campaigns: creating, reading, changing, pausing, resuming and cancelling them; their
//! counts, which the database keeps (see the campaigns migration); and the sweeps that end
//! their calls when they end or are cancelled.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    DbError,
    calls::{ListPage, NewCall, Page, cut_page},
    claim::CLAIM_LOCK,
};
use crate::domain::{
    CallStatus, Campaign, CampaignRules, CampaignSettings, CampaignStatus, ScriptId,
};

/// A row of `campaigns`, exactly as stored.
#[derive(sqlx::FromRow)]
struct CampaignRow {
    id: Uuid,
    seq: i64,
    name: String,
    script_id: Option<String>,
    max_concurrent_calls: Option<i32>,
    priority: i16,
    window_hours: Option<String>,
    window_days: Option<String>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    retry: Option<Value>,
    metadata: Value,
    status: CampaignStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl CampaignRow {
    fn into_campaign(self, counts: Vec<(CallStatus, i64)>) -> Campaign {
        Campaign {
            id: self.id,
            settings: CampaignSettings {
                name: self.name,
                script_id: self.script_id.map(ScriptId::from_trusted),
                max_concurrent_calls: self.max_concurrent_calls.map(|n| n.max(1) as u32),
                priority: self.priority.clamp(0, 9) as u8,
                rules: CampaignRules::stored(
                    self.window_hours.as_deref(),
                    self.window_days.as_deref(),
                    self.start_at,
                    self.end_at,
                    self.retry.as_ref(),
                ),
                metadata: match self.metadata {
                    Value::Object(map) => map,
                    _ => Default::default(),
                },
            },
            status: self.status,
            counts,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// What a campaign tells the create of one of its calls.
#[derive(Clone, Debug)]
pub struct CampaignForCalls {
    pub status: CampaignStatus,
    pub script_id: Option<ScriptId>,
    pub rules: CampaignRules,
}

/// Why a campaign refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignRefusal {
    NotFound(Uuid),
    /// It cannot take this from the status it is in.
    Status(Uuid, CampaignStatus),
}

/// What an operator does to a campaign as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignAction {
    Pause,
    Resume,
    Cancel,
}

impl CampaignAction {
    /// The statuses it may leave, and the one it goes to.
    fn moves(self) -> (&'static [CampaignStatus], CampaignStatus) {
        use CampaignStatus::*;
        match self {
            Self::Pause => (&[Active], Paused),
            Self::Resume => (&[Paused], Active),
            Self::Cancel => (&[Active, Paused, Completed], Cancelled),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }
}

fn bind_settings<'q>(
    query: sqlx::query::QueryAs<'q, Postgres, CampaignRow, sqlx::postgres::PgArguments>,
    s: &'q CampaignSettings,
) -> sqlx::query::QueryAs<'q, Postgres, CampaignRow, sqlx::postgres::PgArguments> {
    let window = s.rules.window.as_ref();
    query
        .bind(&s.name)
        .bind(s.script_id.as_ref().map(ScriptId::as_str))
        .bind(s.max_concurrent_calls.map(|n| n as i32))
        .bind(i16::from(s.priority))
        .bind(window.and_then(|w| w.hours).map(|h| h.to_string()))
        .bind(window.map(|w| w.days.to_string()))
        .bind(s.rules.start_at)
        .bind(s.rules.end_at)
        .bind(s.rules.retry.as_ref().map(|r| r.to_json()))
        .bind(Value::Object(s.metadata.clone()))
}

/// Stores a new campaign, `ACTIVE`.
pub async fn create_campaign(
    pool: &PgPool,
    settings: &CampaignSettings,
) -> Result<Campaign, DbError> {
    let row: CampaignRow = bind_settings(
        sqlx::query_as(
            "INSERT INTO campaigns (id, name, script_id, max_concurrent_calls, priority, \
             window_hours, window_days, start_at, end_at, retry, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        )
        .bind(Uuid::now_v7()),
        settings,
    )
    .fetch_one(pool)
    .await?;
    Ok(row.into_campaign(Vec::new()))
}

/// The counts of each of `ids`: the folded counts plus the changes not yet folded, in one
/// statement (so one snapshot).
pub(super) async fn counts_of<'e, E>(
    executor: E,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, CallStatus, i64)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(include_str!("../../sql/queries/campaign_counts.sql"))
        .bind(ids)
        .fetch_all(executor)
        .await
}

fn counts_for(all: &[(Uuid, CallStatus, i64)], id: Uuid) -> Vec<(CallStatus, i64)> {
    let mut counts: Vec<(CallStatus, i64)> = all
        .iter()
        .filter(|(c, _, n)| *c == id && *n != 0)
        .map(|(_, s, n)| (*s, *n))
        .collect();
    counts.sort_by_key(|(s, _)| CallStatus::ALL.iter().position(|x| x == s));
    counts
}

/// Campaign `id` without its counts; `NotFound` when there is none.
async fn campaign_alone<'e, E>(executor: E, id: Uuid) -> Result<Campaign, DbError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row: Option<CampaignRow> = sqlx::query_as("SELECT * FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await?;
    Ok(row
        .ok_or(DbError::Campaign(CampaignRefusal::NotFound(id)))?
        .into_campaign(Vec::new()))
}

/// One campaign, with its counts.
pub async fn get_campaign(pool: &PgPool, id: Uuid) -> Result<Campaign, DbError> {
    let mut campaign = campaign_alone(pool, id).await?;
    campaign.counts = counts_for(&counts_of(pool, &[id]).await?, id);
    Ok(campaign)
}

/// What the create of a call of campaign `id` needs of it.
pub async fn campaign_for_calls(pool: &PgPool, id: Uuid) -> Result<CampaignForCalls, DbError> {
    let campaign = campaign_alone(pool, id).await?;
    Ok(CampaignForCalls {
        status: campaign.status,
        script_id: campaign.settings.script_id,
        rules: campaign.settings.rules,
    })
}

/// What campaign `id` adds to the schedule and retries of its calls.
pub(super) async fn rules_of<'e, E>(executor: E, id: Uuid) -> Result<CampaignRules, DbError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    Ok(campaign_alone(executor, id).await?.settings.rules)
}

/// One page of campaigns, newest first; a page by number also says how many match (from
/// the campaigns' own indexes: a campaign is one row, however many calls it holds).
pub async fn list_campaigns(
    pool: &PgPool,
    status: Option<CampaignStatus>,
    page: Page,
    limit: u32,
) -> Result<ListPage<Campaign>, DbError> {
    let (after, offset) = page.bounds(limit);
    let mut rows: Vec<CampaignRow> = sqlx::query_as(
        "SELECT * FROM campaigns WHERE ($1::campaign_status IS NULL OR status = $1) \
           AND ($4::bigint IS NULL OR seq < $4) \
         ORDER BY seq DESC LIMIT $2 OFFSET $3",
    )
    .bind(status)
    .bind(i64::from(limit) + 1)
    .bind(offset)
    .bind(after)
    .fetch_all(pool)
    .await?;
    let next = cut_page(&mut rows, limit, |row| row.seq);
    let total = if page.is_by_number() {
        Some(
            sqlx::query_scalar(
                "SELECT count(*) FROM campaigns WHERE ($1::campaign_status IS NULL OR status = $1)",
            )
            .bind(status)
            .fetch_one(pool)
            .await?,
        )
    } else {
        None
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let counts = counts_of(pool, &ids).await?;
    Ok(ListPage {
        items: rows
            .into_iter()
            .map(|row| {
                let id = row.id;
                row.into_campaign(counts_for(&counts, id))
            })
            .collect(),
        total,
        next,
    })
}

/// Replaces a campaign's settings with what `apply` makes of the current ones, under the
/// row's lock; refused for a `CANCELLED` or `COMPLETED` campaign. The claim reads the
/// settings at each claim, so a change holds from the next one on.
pub async fn update_campaign<F, E>(
    pool: &PgPool,
    id: Uuid,
    apply: F,
) -> Result<Result<Campaign, E>, DbError>
where
    F: FnOnce(&Campaign) -> Result<CampaignSettings, E>,
{
    let mut tx = pool.begin().await?;
    let row: Option<CampaignRow> =
        sqlx::query_as("SELECT * FROM campaigns WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let current = row
        .ok_or(DbError::Campaign(CampaignRefusal::NotFound(id)))?
        .into_campaign(Vec::new());
    if matches!(
        current.status,
        CampaignStatus::Cancelled | CampaignStatus::Completed
    ) {
        return Err(DbError::Campaign(CampaignRefusal::Status(
            id,
            current.status,
        )));
    }
    let settings = match apply(&current) {
        Ok(settings) => settings,
        Err(err) => return Ok(Err(err)),
    };
    let row: CampaignRow = bind_settings(
        sqlx::query_as(
            "UPDATE campaigns SET name = $2, script_id = $3, max_concurrent_calls = $4, \
             priority = $5, window_hours = $6, window_days = $7, start_at = $8, end_at = $9, \
             retry = $10, metadata = $11, updated_at = now() WHERE id = $1 RETURNING *",
        )
        .bind(id),
        &settings,
    )
    .fetch_one(&mut *tx)
    .await?;
    let counts = counts_of(&mut *tx, &[id]).await?;
    tx.commit().await?;
    // Calls that wait for the old start wait for the new one instead, when it is earlier.
    if let Some(old) = current.settings.rules.start_at
        && settings.rules.start_at.is_none_or(|new| new < old)
    {
        loop {
            let moved: i64 = sqlx::query_scalar(include_str!(
                "../../sql/queries/bring_forward_campaign_calls.sql"
            ))
            .bind(id)
            .bind(old)
            .bind(settings.rules.start_at)
            .bind(CANCEL_BATCH as i64)
            .fetch_one(pool)
            .await?;
            if moved < CANCEL_BATCH as i64 {
                break;
            }
        }
    }
    // A cap raised, a start brought forward: the dispatchers may have calls to claim now.
    super::notify_dispatchers(pool).await;
    Ok(Ok(row.into_campaign(counts_for(&counts, id))))
}

/// Pauses, resumes or cancels a campaign. Pause and cancel take the claim lock first, so a
/// claim under way when they arrive commits before they do, and none after them reads the
/// campaign as it was: once they answer, no call of it is claimed. A cancel then cancels its
/// `PENDING` calls, `CANCEL_BATCH` per transaction (the sweeper finishes what a request
/// leaves, see [`cancel_campaign_calls`]).
pub async fn act_on_campaign(
    pool: &PgPool,
    id: Uuid,
    action: CampaignAction,
) -> Result<Campaign, DbError> {
    let (from, to) = action.moves();
    let mut tx = pool.begin().await?;
    if action != CampaignAction::Resume {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    let current: Option<CampaignStatus> =
        sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let current = current.ok_or(DbError::Campaign(CampaignRefusal::NotFound(id)))?;
    if !from.contains(&current) {
        return Err(DbError::Campaign(CampaignRefusal::Status(id, current)));
    }
    // A resumed campaign whose calls all ended meanwhile is complete.
    sqlx::query(
        "UPDATE campaigns k SET status = CASE WHEN $2 = 'ACTIVE' AND EXISTS \
             (SELECT 1 FROM calls c WHERE c.campaign_id = k.id) \
             AND NOT campaign_has_open_calls(k.id) \
           THEN 'COMPLETED'::campaign_status ELSE $2 END, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    match action {
        CampaignAction::Cancel => {
            while cancel_campaign_calls(pool, Some(id)).await? == CANCEL_BATCH {}
        }
        CampaignAction::Resume => super::notify_dispatchers(pool).await,
        CampaignAction::Pause => {}
    }
    get_campaign(pool, id).await
}

/// `PENDING` calls of cancelled campaigns cancelled per transaction.
pub const CANCEL_BATCH: usize = 5000;

/// Cancels up to `CANCEL_BATCH` `PENDING` calls of a cancelled campaign (`id`, or any),
/// each with a `CANCELLED` entry saying so; returns how many.
pub async fn cancel_campaign_calls(pool: &PgPool, id: Option<Uuid>) -> Result<usize, DbError> {
    let cancelled: i64 =
        sqlx::query_scalar(include_str!("../../sql/queries/cancel_campaign_calls.sql"))
            .bind(id)
            .bind(CANCEL_BATCH as i64)
            .fetch_one(pool)
            .await?;
    Ok(cancelled as usize)
}

/// Expires up to `CANCEL_BATCH` `PENDING` calls of campaigns whose `endAt` passed, each
/// with an `EXPIRED` entry saying so; returns how many.
pub async fn end_campaign_calls(pool: &PgPool) -> Result<usize, DbError> {
    let expired: i64 = sqlx::query_scalar(include_str!("../../sql/queries/end_campaign_calls.sql"))
        .bind(CANCEL_BATCH as i64)
        .fetch_one(pool)
        .await?;
    Ok(expired as usize)
}

/// Folds the count changes of the campaigns into their counts (a bounded number per call);
/// returns how many changes were folded.
pub(super) async fn fold_campaign_counts(pool: &PgPool) -> Result<usize, DbError> {
    let folded: i64 =
        sqlx::query_scalar(include_str!("../../sql/queries/fold_campaign_counts.sql"))
            .bind(50_000_i64)
            .fetch_one(pool)
            .await?;
    Ok(folded as usize)
}

/// Forgets the turns of campaigns the claim no longer serves (finished ones), so that
/// `dispatch_turns` holds only the lanes in use; one reopened starts with a fresh turn.
pub async fn forget_turns(pool: &PgPool) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM dispatch_turns t WHERE t.lane <> '00000000-0000-0000-0000-000000000000' \
         AND NOT EXISTS (SELECT 1 FROM campaigns k WHERE k.id = t.lane \
                         AND k.status IN ('ACTIVE', 'PAUSED'))",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Mends what the triggers could not see: a campaign whose last two calls ended at once in
/// two transactions (each saw the other's call open) is `COMPLETED`, and one that got calls
/// while it was being completed is `ACTIVE` again. Returns how many changed.
pub async fn settle_campaigns(pool: &PgPool) -> Result<u64, DbError> {
    Ok(
        sqlx::query(include_str!("../../sql/queries/settle_campaigns.sql"))
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Holds the campaigns of `calls` against a cancel until the transaction ends (a shared row
/// lock), refusing an unknown or cancelled one.
pub(super) async fn hold_open(
    tx: &mut Transaction<'_, Postgres>,
    calls: &[NewCall],
) -> Result<(), DbError> {
    let mut ids: Vec<Uuid> = calls.iter().filter_map(|c| c.campaign_id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    // A COMPLETED campaign is made ACTIVE first, under its row lock: two creates reopening
    // it at once would otherwise each hold a shared lock and wait for the other's to update
    // it (a deadlock).
    sqlx::query(
        "UPDATE campaigns SET status = 'ACTIVE', updated_at = now() \
         WHERE id IN (SELECT id FROM campaigns WHERE id = ANY ($1) AND status = 'COMPLETED' \
                      ORDER BY id FOR NO KEY UPDATE) \
           AND status = 'COMPLETED'",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    let found: Vec<(Uuid, CampaignStatus)> = sqlx::query_as(
        "SELECT id, status FROM campaigns WHERE id = ANY ($1) ORDER BY id FOR SHARE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for id in &ids {
        match found.iter().find(|(f, _)| f == id) {
            None => return Err(DbError::Campaign(CampaignRefusal::NotFound(*id))),
            Some((_, CampaignStatus::Cancelled)) => {
                return Err(DbError::Campaign(CampaignRefusal::Status(
                    *id,
                    CampaignStatus::Cancelled,
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The campaigns that events recorded, as each event's snapshot holds its row, with their
/// counts as they are now; by event id.
pub async fn campaigns_of_events(
    pool: &PgPool,
    event_ids: &[Uuid],
) -> Result<Vec<(Uuid, Campaign)>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Recorded {
        event_id: Uuid,
        #[sqlx(flatten)]
        row: CampaignRow,
    }
    let rows: Vec<Recorded> = sqlx::query_as(
        "SELECT e.id AS event_id, r.* FROM client_events e \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::campaigns, e.snapshot) r WHERE e.id = ANY ($1) AND e.type = 'campaign.completed'",
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.row.id).collect();
    let counts = counts_of(pool, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let id = r.row.id;
            (r.event_id, r.row.into_campaign(counts_for(&counts, id)))
        })
        .collect())
}
