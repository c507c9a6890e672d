//! Request bodies and parameters turned into domain values, with every problem named.

use poem_openapi::types::ParseFromJSON;

use super::{
    MAX_BATCH,
    error::{ApiError, envelope},
    models::{BatchItem, CreateCallRequest, ErrorDetail, ListPagination, Pagination},
};
use chrono::{DateTime, Utc};

use uuid::Uuid;

use crate::{
    db::{CampaignForCalls, NewCall, Page},
    domain::{
        CallPayload, CallTiming, CampaignRules, FieldError,
        schedule::{CallingWindow, Rules, next_common_opening},
    },
};

/// A query string decodes `+` as a space, so `?to=+14155550100` arrives as
/// ` 14155550100`: a leading space before a digit is taken for the `+` it was.
pub(super) fn plus_decoded_as_space(raw: &str) -> std::borrow::Cow<'_, str> {
    match raw.strip_prefix(' ') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => format!("+{rest}").into(),
        _ => raw.into(),
    }
}

/// Largest `page` of a paginated list.
const MAX_PAGE: i64 = 1_000_000;

/// `page` (from 1, default 1) and `limit` (1 to `MAX_LIMIT`, default 10) of a list route;
/// out of range is 400, not clamped.
pub(super) fn page_and_limit(
    page: Option<i64>,
    limit: Option<i64>,
) -> Result<(u32, u32), ApiError> {
    let page = page.unwrap_or(1);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!("`page` must be between 1 and {MAX_PAGE}; it is {page}"),
        ));
    }
    let limit = limit.unwrap_or(10);
    if !(1..=super::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!(
                "`limit` must be between 1 and {}; it is {limit}",
                super::MAX_LIMIT
            ),
        ));
    }
    Ok((page as u32, limit as u32))
}

/// Where a page of calls or campaigns starts, and its `limit`: `page` (by number, the
/// default) or `after` (a cursor), not both; anything else is 400.
pub(super) fn page_or_cursor(
    page: Option<i64>,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<(Page, u32), ApiError> {
    let (number, limit) = page_and_limit(page, limit)?;
    let Some(after) = after else {
        return Ok((Page::Number(number), limit));
    };
    if page.is_some() {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            "`page` and `after` cannot be used together: `after` starts where the page it \
             came from ended",
        ));
    }
    let seq = after
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_PARAMETER",
                "`after` must be the `nextCursor` of an earlier page",
            )
        })?;
    Ok((Page::After(seq), limit))
}

/// The pagination of a page of calls or campaigns: with its total for a page by number.
pub(super) fn list_pagination(
    page: Page,
    limit: u32,
    total: Option<i64>,
    next: Option<i64>,
) -> ListPagination {
    let by_number = match (page, total) {
        (Page::Number(number), Some(total)) => Some(pagination(number, limit, total)),
        _ => None,
    };
    ListPagination {
        page: by_number.as_ref().map(|p| p.page),
        limit,
        total: by_number.as_ref().map(|p| p.total),
        total_pages: by_number.as_ref().map(|p| p.total_pages),
        next_cursor: next.map(|seq| seq.to_string()),
    }
}

/// The pagination of a page of `limit` items out of `total`.
pub(super) fn pagination(page: u32, limit: u32, total: i64) -> Pagination {
    Pagination {
        page,
        limit,
        total,
        total_pages: (total + i64::from(limit) - 1) / i64::from(limit),
    }
}

/// The 400 of a batch with invalid items: how many of `total` `noun` are invalid, by index,
/// each problem, and that `nothing` was written.
pub(super) fn invalid_items(
    details: Vec<ErrorDetail>,
    total: usize,
    noun: &str,
    nothing: &str,
) -> ApiError {
    let bad: std::collections::BTreeSet<_> = details.iter().filter_map(|d| d.index).collect();
    let list = bad
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    ApiError::BadRequest(envelope(
        "VALIDATION_ERROR",
        format!(
            "{} of {total} {noun} are invalid (index {list}); {nothing}",
            bad.len()
        ),
        details,
    ))
}

/// A create body as a call to store (of `campaign`, when it names one), due when `rules`
/// (narrowed by the campaign's) say.
pub(super) fn parse_request(
    req: CreateCallRequest,
    rules: &Rules,
    campaign: Option<(Uuid, &CampaignForCalls)>,
) -> Result<NewCall, Vec<FieldError>> {
    let metadata = req
        .metadata
        .map(|m| serde_json::Value::Object(m.into_iter().collect()));
    let script_id = req
        .script_id
        .as_ref()
        .map(|t| t.0.as_str())
        .or_else(|| campaign.and_then(|(_, c)| c.script_id.as_ref().map(|id| id.as_str())));
    let payload = CallPayload::parse(Some(&req.to.0), script_id, metadata.as_ref());
    let timing = parse_timing(
        req.not_before,
        req.not_after,
        req.timezone.as_ref().map(|t| t.0.as_str()),
        true,
    );
    let narrowing = campaign.map(|(_, c)| &c.rules);
    let (payload, timing) = together(payload, timing, rules, narrowing)?;
    Ok(NewCall::scheduled_in(
        payload,
        timing,
        rules,
        campaign.map(|(id, c)| (id, &c.rules)),
    ))
}

/// A payload and a schedule, each checked on its own, then together (`reachable`): every
/// problem of both, or the two.
pub(super) fn together(
    payload: Result<CallPayload, Vec<FieldError>>,
    timing: Result<CallTiming, Vec<FieldError>>,
    rules: &Rules,
    campaign: Option<&CampaignRules>,
) -> Result<(CallPayload, CallTiming), Vec<FieldError>> {
    match (payload, timing) {
        (Ok(payload), Ok(timing)) => {
            reachable(&timing, &payload, rules, campaign)?;
            Ok((payload, timing))
        }
        (payload, timing) => Err([payload.err(), timing.err()]
            .into_iter()
            .flatten()
            .flatten()
            .collect()),
    }
}

/// A call whose callee's time zones share no hour of the calling window (a `+1` number with no
/// known area code spans Guam to Newfoundland) would wait for ever: refused, asking for its
/// `timezone`.
fn reachable(
    timing: &CallTiming,
    payload: &CallPayload,
    rules: &Rules,
    campaign: Option<&CampaignRules>,
) -> Result<(), Vec<FieldError>> {
    let zones = rules.zones(&payload.to, timing.timezone);
    let windows: Vec<CallingWindow> = std::iter::once(rules.window)
        .chain(campaign.and_then(|c| c.window))
        .collect();
    if next_common_opening(&windows, &zones, Utc::now()).is_some() {
        return Ok(());
    }
    Err(vec![FieldError::new(
        "timezone",
        format!(
            "the time zones of `to` ({} of them, from its prefix) share no hour of the calling \
             window {}{}: give the call its callee's `timezone`",
            zones.len(),
            rules.window,
            match campaign.and_then(|c| c.window) {
                Some(w) => format!(" and its campaign's {w}"),
                None => String::new(),
            }
        ),
    )])
}

/// `notBefore`, `notAfter` and `timezone`, checked together: a deadline in the future and
/// after the start, a time zone the IANA database knows.
pub(super) fn parse_timing(
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    timezone: Option<&str>,
    deadline_sent: bool,
) -> Result<CallTiming, Vec<FieldError>> {
    let mut errors = Vec::new();
    let timezone = match timezone.map(parse_zone) {
        Some(Ok(tz)) => Some(tz),
        Some(Err(error)) => {
            errors.push(error);
            None
        }
        None => None,
    };
    let not_before =
        not_before.and_then(|at| instant(at, "notBefore").map_err(|e| errors.push(e)).ok());
    let not_after =
        not_after.and_then(|at| instant(at, "notAfter").map_err(|e| errors.push(e)).ok());
    if let Some(deadline) = not_after {
        // Only a deadline sent now must be ahead: a PATCH of another field leaves a stored
        // one alone, passed or not (the sweeper expires the call).
        if deadline_sent && deadline <= Utc::now() {
            errors.push(FieldError::new(
                "notAfter",
                "`notAfter` must be in the future",
            ));
        }
        if not_before.is_some_and(|start| deadline <= start) {
            errors.push(FieldError::new(
                "notAfter",
                "`notAfter` must come after `notBefore`",
            ));
        }
    }
    if errors.is_empty() {
        Ok(CallTiming {
            not_before,
            not_after,
            timezone,
        })
    } else {
        Err(errors)
    }
}

/// The first instant `notBefore`, `notAfter` or `expiresAt` may name.
const EARLIEST: &str = "2000-01-01T00:00:00Z";
/// How far ahead they may reach.
const FURTHEST_YEARS: i32 = 100;

/// An instant a client sent, kept as the database keeps it (to the microsecond), between the
/// year 2000 and a hundred years from now: chrono reads years of six digits, which no
/// schedule means and which the database (or the calendar arithmetic) could not take.
pub(crate) fn instant(at: DateTime<Utc>, field: &str) -> Result<DateTime<Utc>, FieldError> {
    use chrono::{Datelike, DurationRound};
    let earliest: DateTime<Utc> = EARLIEST.parse().expect("a valid instant");
    let furthest_year = Utc::now().year() + FURTHEST_YEARS;
    if at < earliest || at.year() > furthest_year {
        return Err(FieldError::new(
            field,
            format!("`{field}` must be between the year 2000 and the year {furthest_year}"),
        ));
    }
    Ok(at
        .duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(at))
}

fn parse_zone(name: &str) -> Result<chrono_tz::Tz, FieldError> {
    // The database keeps names of at most 64 characters of this alphabet; every IANA name fits.
    let plausible = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+/-".contains(&b));
    plausible
        .then(|| name.parse::<chrono_tz::Tz>().ok())
        .flatten()
        .ok_or_else(|| {
            FieldError::new(
                "timezone",
                "`timezone` must be an IANA time zone name, e.g. America/New_York",
            )
        })
}

/// The calls of a batch, all valid, in order; else a 400 naming each bad item by its index.
/// Items may name their campaign (`campaignId`), or `route_campaign` is every item's (the
/// route of a campaign's calls, whose items name none); an unknown campaign is 404, a
/// cancelled one 409, for the whole batch (see [`open_campaign`] for `keyed`).
pub(super) async fn parse_batch(
    pool: &sqlx::PgPool,
    items: Vec<BatchItem>,
    rules: &Rules,
    route_campaign: Option<Uuid>,
    keyed: bool,
) -> Result<Vec<NewCall>, ApiError> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "INVALID_BATCH_SIZE",
            format!(
                "`calls` must hold 1 to {MAX_BATCH} calls; it holds {}",
                items.len()
            ),
        ));
    }
    let total = items.len();
    let mut details = Vec::new();
    let mut requests = Vec::with_capacity(total);
    for (index, item) in items.into_iter().enumerate() {
        let index = index as u32;
        let mut bad = |message: String, field: Option<&str>| {
            details.push(ErrorDetail {
                index: Some(index),
                field: field.map(str::to_owned),
                message,
            })
        };
        match CreateCallRequest::parse_from_json(Some(item.0)) {
            Ok(req) if route_campaign.is_some() && req.campaign_id.is_some() => bad(
                "`campaignId` is the route's: leave it out of the calls".into(),
                Some("campaignId"),
            ),
            Ok(req) => requests.push((index, req)),
            Err(err) => bad(
                format!("not a valid call request: {}", err.into_message()),
                None,
            ),
        }
    }
    let mut campaigns: Vec<(Uuid, CampaignForCalls)> = Vec::new();
    for (_, req) in &requests {
        if let Some(id) = route_campaign.or(req.campaign_id)
            && !campaigns.iter().any(|(known, _)| *known == id)
        {
            campaigns.push((id, open_campaign(pool, id, keyed).await?));
        }
    }
    let mut calls = Vec::with_capacity(total);
    for (index, req) in requests {
        let campaign = route_campaign
            .or(req.campaign_id)
            .and_then(|id| campaigns.iter().find(|(known, _)| *known == id))
            .map(|(id, c)| (*id, c));
        match parse_request(req, rules, campaign) {
            Ok(call) => calls.push(call),
            Err(errors) => details.extend(errors.into_iter().map(|e| ErrorDetail {
                index: Some(index),
                field: (!e.field.is_empty()).then_some(e.field),
                message: e.message,
            })),
        }
    }
    if !details.is_empty() {
        details.sort_by_key(|d| d.index);
        return Err(invalid_items(
            details,
            total,
            "calls",
            "no call was created",
        ));
    }
    Ok(calls)
}

/// A campaign calls may be added to: 404 unknown, 409 cancelled. Under an
/// `Idempotency-Key` (`keyed`) a cancelled one passes here: the create refuses it after
/// looking for the key, so a repeat of a request made before the cancel answers its calls.
pub(super) async fn open_campaign(
    pool: &sqlx::PgPool,
    id: Uuid,
    keyed: bool,
) -> Result<CampaignForCalls, ApiError> {
    let campaign = crate::db::campaign_for_calls(pool, id)
        .await
        .map_err(|err| ApiError::from_db(err, id))?;
    if !campaign.status.is_open() && !keyed {
        return Err(ApiError::campaign(
            crate::db::CampaignRefusal::Status(id, campaign.status),
            "take calls",
        ));
    }
    Ok(campaign)
}
