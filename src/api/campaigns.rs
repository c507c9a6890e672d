//! `/api/v1/campaigns`: create, list, read, change, pause, resume, cancel, and add calls.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
    types::{ParseFromJSON, ToJSON},
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ApiState, ApiTags,
    calls::{CreatedCalls, create_batch},
    error::ApiError,
    idempotency::checked_key,
    models::{
        Campaign, CampaignCallsRequest, CampaignEnvelope, CampaignPage, CampaignStatusName,
        CreateCampaignRequest,
    },
    requests::{instant, list_pagination, open_campaign, page_or_cursor, parse_batch},
};
use crate::{
    db::{self, CampaignAction},
    domain::{
        CampaignRules, CampaignSettings, FieldError, MAX_METADATA_BYTES, ScriptId,
        campaign::{CampaignRetry, DEFAULT_PRIORITY, parse_window},
        merge_patch,
        schedule::{CallingWindow, Rules},
    },
};

/// Longest campaign name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Largest `maxConcurrentCalls`.
const MAX_CAMPAIGN_CAP: i64 = 100_000;
/// The fields a campaign's PATCH may change.
const SETTINGS: [&str; 9] = [
    "name",
    "scriptId",
    "maxConcurrentCalls",
    "priority",
    "callingWindow",
    "startAt",
    "endAt",
    "retry",
    "metadata",
];

#[derive(ApiResponse)]
pub enum CreatedCampaign {
    /// The campaign was created, `ACTIVE`, with no calls yet.
    #[oai(status = 201)]
    Created(Json<CampaignEnvelope>),
}

pub struct CampaignsApi;

fn answer(campaign: crate::domain::Campaign) -> Json<CampaignEnvelope> {
    Json(CampaignEnvelope {
        success: true,
        data: Campaign::of(campaign),
    })
}

/// What of a campaign's settings came with this request: only a new `endAt` must be ahead,
/// and only a new `callingWindow` is checked against the service's window (a stored one
/// that the service's has since narrowed keeps working, narrowed in turn, and does not make
/// every later PATCH fail).
#[derive(Clone, Copy)]
struct Sent {
    end: bool,
    window: bool,
}

/// A campaign's settings as sent, checked against the rules in force.
fn settings(
    req: CreateCampaignRequest,
    rules: &Rules,
    sent: Sent,
) -> Result<CampaignSettings, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = req.name.0.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("`name` must hold 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let script_id = req.script_id.and_then(|id| {
        ScriptId::parse(&id.0)
            .map_err(|e| errors.push(FieldError::new("scriptId", format!("`scriptId` {e}"))))
            .ok()
    });
    let max_concurrent_calls = req.max_concurrent_calls.and_then(|n| {
        if (1..=MAX_CAMPAIGN_CAP).contains(&n) {
            Some(n as u32)
        } else {
            errors.push(FieldError::new(
                "maxConcurrentCalls",
                format!("`maxConcurrentCalls` must be between 1 and {MAX_CAMPAIGN_CAP}"),
            ));
            None
        }
    });
    let priority = match req.priority {
        None => DEFAULT_PRIORITY,
        Some(p @ 0..=9) => p as u8,
        Some(_) => {
            errors.push(FieldError::new(
                "priority",
                "`priority` must be between 0 and 9 (higher first)",
            ));
            DEFAULT_PRIORITY
        }
    };
    let window = req.calling_window.and_then(|w| {
        let days = w
            .days
            .map(|days| Value::from(days.into_iter().map(|d| d.0).collect::<Vec<_>>()));
        parse_window(&json!({"start": w.start.0, "end": w.end.0, "days": days}))
            .map_err(|e| errors.extend(e))
            .ok()
            .filter(|window| {
                let narrows = !sent.window || narrows(window, &rules.window);
                if !narrows {
                    errors.push(FieldError::new(
                        "callingWindow",
                        format!(
                            "`callingWindow` must lie within the service's calling window ({}): \
                             a campaign only narrows it",
                            rules.window
                        ),
                    ));
                }
                narrows
            })
    });
    let start_at = req
        .start_at
        .and_then(|at| instant(at, "startAt").map_err(|e| errors.push(e)).ok());
    let end_at = req
        .end_at
        .and_then(|at| instant(at, "endAt").map_err(|e| errors.push(e)).ok());
    if let Some(end) = end_at {
        if sent.end && end <= chrono::Utc::now() {
            errors.push(FieldError::new("endAt", "`endAt` must be in the future"));
        }
        if start_at.is_some_and(|start| end <= start) {
            errors.push(FieldError::new(
                "endAt",
                "`endAt` must come after `startAt`",
            ));
        }
    }
    let retry = req.retry.and_then(|r| {
        let value = json!({
            "maxAttempts": r.max_attempts,
            "outcomes": r.outcomes.map(|o| o.into_iter().map(|t| t.0).collect::<Vec<_>>()),
            "delays": r.delays.map(|d| d.into_iter().map(|(k, v)| (k, Value::from(v.0))).collect::<serde_json::Map<_, _>>()),
        });
        CampaignRetry::parse(&value)
            .map_err(|e| errors.extend(e))
            .ok()
    });
    let metadata: serde_json::Map<String, Value> =
        req.metadata.unwrap_or_default().into_iter().collect();
    if Value::Object(metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
        errors.push(FieldError::new(
            "metadata",
            format!(
                "`metadata` must be at most {} KiB",
                MAX_METADATA_BYTES / 1024
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CampaignSettings {
        name,
        script_id,
        max_concurrent_calls,
        priority,
        rules: CampaignRules {
            window,
            start_at,
            end_at,
            retry,
        },
        metadata,
    })
}

/// Whether a campaign's window lies within the service's (always, when that is off).
fn narrows(campaign: &CallingWindow, global: &CallingWindow) -> bool {
    match (campaign.hours, global.hours) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(hours), Some(outer)) => hours.within(outer) && global.days.contains(campaign.days),
    }
}

/// A campaign's settings as its PATCH merges into them: the API's form, nulls left out.
fn settings_json(campaign: &Campaign) -> Value {
    let shown = campaign.to_json().unwrap_or_default();
    let mut settings = serde_json::Map::new();
    for key in SETTINGS {
        if let Some(value) = shown.get(key).filter(|v| !v.is_null()) {
            settings.insert(key.to_owned(), value.clone());
        }
    }
    Value::Object(settings)
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Campaigns")]
impl CampaignsApi {
    /// Create a campaign
    ///
    /// A campaign groups calls that share a purpose and its rules: its own cap on calls in
    /// progress, a priority against other campaigns, a calling window that narrows the
    /// service's, a start and an end, and retries within the service's. It starts `ACTIVE`;
    /// add calls with `POST /api/v1/campaigns/{id}/calls` or `campaignId` on a create.
    #[oai(path = "/campaigns", method = "post", operation_id = "createCampaign")]
    async fn create(
        &self,
        state: Data<&Arc<ApiState>>,
        body: Json<CreateCampaignRequest>,
    ) -> Result<CreatedCampaign, ApiError> {
        let sent = Sent {
            end: true,
            window: true,
        };
        let settings = settings(body.0, &state.rules, sent).map_err(ApiError::validation)?;
        let campaign = db::create_campaign(&state.pool, &settings).await?;
        tracing::info!(campaign_id = %campaign.id, name = %campaign.settings.name, "campaign created");
        Ok(CreatedCampaign::Created(answer(campaign)))
    }

    /// List campaigns
    ///
    /// Newest first, optionally by status, each with its calls counted by status.
    #[oai(path = "/campaigns", method = "get", operation_id = "listCampaigns")]
    async fn list(
        &self,
        state: Data<&Arc<ApiState>>,
        /// Only campaigns in this status.
        status: Query<Option<CampaignStatusName>>,
        /// Page number, from 1 (default 1).
        page: Query<Option<i64>>,
        /// The `pagination.nextCursor` of the previous page, instead of `page`.
        after: Query<Option<String>>,
        /// Campaigns per page, 1 to 100 (default 10).
        limit: Query<Option<i64>>,
    ) -> Result<Json<CampaignPage>, ApiError> {
        let (page, limit) = page_or_cursor(page.0, after.0.as_deref(), limit.0)?;
        let listed = db::list_campaigns(&state.pool, status.0.map(Into::into), page, limit).await?;
        Ok(Json(CampaignPage {
            success: true,
            data: listed.items.into_iter().map(Campaign::of).collect(),
            pagination: list_pagination(page, limit, listed.total, listed.next),
        }))
    }

    /// Get a campaign
    #[oai(path = "/campaigns/:id", method = "get", operation_id = "getCampaign")]
    async fn get(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<CampaignEnvelope>, ApiError> {
        let campaign = db::get_campaign(&state.pool, id.0)
            .await
            .map_err(|err| ApiError::from_db(err, id.0))?;
        Ok(answer(campaign))
    }

    /// Change a campaign
    ///
    /// A JSON Merge Patch (RFC 7396) of its settings (`name`, `scriptId`,
    /// `maxConcurrentCalls`, `priority`, `callingWindow`, `startAt`, `endAt`, `retry`,
    /// `metadata`; `null` removes one), validated like a new campaign. The next claim
    /// follows it. Not of a `CANCELLED` or `COMPLETED` campaign: 409.
    #[oai(
        path = "/campaigns/:id",
        method = "patch",
        operation_id = "updateCampaign"
    )]
    async fn patch(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        body: Json<Value>,
    ) -> Result<Json<CampaignEnvelope>, ApiError> {
        let Some(patch) = body.0.as_object() else {
            return Err(ApiError::validation(vec![FieldError::new(
                "",
                "the body must be a JSON object: a merge patch of the campaign's settings",
            )]));
        };
        if patch.is_empty() {
            return Err(ApiError::validation(vec![FieldError::new(
                "",
                format!("nothing to change: send one of {}", SETTINGS.join(", ")),
            )]));
        }
        if let Some(other) = patch.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(ApiError::validation(vec![FieldError::new(
                other.clone(),
                format!(
                    "`{other}` is not a setting a PATCH changes ({})",
                    SETTINGS.join(", ")
                ),
            )]));
        }
        let patch = body.0.clone();
        let sent = Sent {
            end: patch.get("endAt").is_some_and(|v| !v.is_null()),
            window: patch.get("callingWindow").is_some_and(|v| !v.is_null()),
        };
        let result = db::update_campaign(&state.pool, id.0, |current| {
            let mut merged = settings_json(&Campaign::of(current.clone()));
            merge_patch(&mut merged, &patch);
            let req = CreateCampaignRequest::parse_from_json(Some(merged)).map_err(|err| {
                vec![FieldError::new(
                    "",
                    format!("not valid campaign settings: {}", err.into_message()),
                )]
            })?;
            settings(req, &state.rules, sent)
        })
        .await
        .map_err(|err| match err {
            db::DbError::Campaign(refusal) => ApiError::campaign(refusal, "be changed"),
            err => ApiError::from_db(err, id.0),
        })?;
        let campaign = result.map_err(ApiError::validation)?;
        tracing::info!(campaign_id = %campaign.id, "campaign updated");
        Ok(answer(campaign))
    }

    /// Pause a campaign
    ///
    /// None of its calls is dialed until it is resumed (from the moment this answers, on
    /// every replica); calls in progress run to their end. Only an `ACTIVE` campaign: 409
    /// otherwise.
    #[oai(
        path = "/campaigns/:id/pause",
        method = "post",
        operation_id = "pauseCampaign"
    )]
    async fn pause(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<CampaignEnvelope>, ApiError> {
        act(&state, id.0, CampaignAction::Pause).await
    }

    /// Resume a campaign
    ///
    /// Its calls are dialed again. Only a `PAUSED` campaign: 409 otherwise.
    #[oai(
        path = "/campaigns/:id/resume",
        method = "post",
        operation_id = "resumeCampaign"
    )]
    async fn resume(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<CampaignEnvelope>, ApiError> {
        act(&state, id.0, CampaignAction::Resume).await
    }

    /// Cancel a campaign
    ///
    /// Every `PENDING` call of it becomes `CANCELLED`, and no call of it is dialed again;
    /// calls in progress run to their end. 409 for a campaign cancelled already.
    #[oai(
        path = "/campaigns/:id/cancel",
        method = "post",
        operation_id = "cancelCampaign"
    )]
    async fn cancel(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<CampaignEnvelope>, ApiError> {
        act(&state, id.0, CampaignAction::Cancel).await
    }

    /// Add calls to a campaign
    ///
    /// Up to 1000 create bodies (without `campaignId`; `scriptId` may be left out when the
    /// campaign has one), all or nothing like `POST /api/v1/calls/batch`, with
    /// `skipSuppressed` and `Idempotency-Key` as there. 404 for an unknown campaign, 409 for a
    /// `CANCELLED` one; a `COMPLETED` one becomes `ACTIVE` again.
    #[oai(
        path = "/campaigns/:id/calls",
        method = "post",
        operation_id = "addCampaignCalls"
    )]
    async fn add_calls(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        body: Json<CampaignCallsRequest>,
        /// Any string of 1 to 255 visible ASCII characters that names this request.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        request: &poem::Request,
    ) -> Result<CreatedCalls, ApiError> {
        let key = checked_key(&idempotency_key, request)?;
        open_campaign(&state.pool, id.0, key.is_some()).await?;
        let as_sent = parse_batch(
            &state.pool,
            body.0.calls,
            &state.rules,
            Some(id.0),
            key.is_some(),
        )
        .await?;
        create_batch(
            state.0,
            request,
            key,
            as_sent,
            body.0.skip_suppressed,
            "campaign-calls",
        )
        .await
    }
}

async fn act(
    state: &ApiState,
    id: Uuid,
    action: CampaignAction,
) -> Result<Json<CampaignEnvelope>, ApiError> {
    let campaign = db::act_on_campaign(&state.pool, id, action)
        .await
        .map_err(|err| match err {
            db::DbError::Campaign(refusal) => ApiError::campaign(refusal, action.as_str()),
            err => ApiError::from_db(err, id),
        })?;
    tracing::info!(campaign_id = %id, status = campaign.status.as_str(), "campaign {}", action.as_str());
    Ok(answer(campaign))
}
