//! Request bodies and parameters turned into domain values, with every problem named.

use poem_openapi::types::ParseFromJSON;

use super::{
    MAX_BATCH,
    error::{ApiError, envelope},
    models::{BatchItem, CreateCallRequest, ErrorDetail},
};
use chrono::{DateTime, Utc};

use crate::{
    db::NewCall,
    domain::{CallPayload, CallTiming, FieldError, schedule::Rules},
};

/// A query string decodes `+` as a space, so `?to=+14155550100` arrives as
/// ` 14155550100`: a leading space before a digit is taken for the `+` it was.
pub(super) fn plus_decoded_as_space(raw: &str) -> std::borrow::Cow<'_, str> {
    match raw.strip_prefix(' ') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => format!("+{rest}").into(),
        _ => raw.into(),
    }
}

/// A create body as a call to store, due when `rules` say.
pub(super) fn parse_request(
    req: CreateCallRequest,
    rules: &Rules,
) -> Result<NewCall, Vec<FieldError>> {
    let metadata = req
        .metadata
        .map(|m| serde_json::Value::Object(m.into_iter().collect()));
    let payload = CallPayload::parse(Some(&req.to.0), Some(&req.script_id.0), metadata.as_ref());
    let timing = parse_timing(
        req.not_before,
        req.not_after,
        req.timezone.as_ref().map(|t| t.0.as_str()),
    );
    match (payload, timing) {
        (Ok(payload), Ok(timing)) => Ok(NewCall::scheduled(payload, timing, rules)),
        (payload, timing) => Err([payload.err(), timing.err()]
            .into_iter()
            .flatten()
            .flatten()
            .collect()),
    }
}

/// `notBefore`, `notAfter` and `timezone`, checked together: a deadline in the future and
/// after the start, a time zone the IANA database knows.
pub(super) fn parse_timing(
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    timezone: Option<&str>,
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
    if let Some(deadline) = not_after {
        if deadline <= Utc::now() {
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
pub(super) fn parse_batch(items: Vec<BatchItem>, rules: &Rules) -> Result<Vec<NewCall>, ApiError> {
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
    let mut calls = Vec::with_capacity(total);
    let mut details = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let index = index as u32;
        let parsed = CreateCallRequest::parse_from_json(Some(item.0))
            .map_err(|err| {
                vec![FieldError::new(
                    "",
                    format!("not a valid call request: {}", err.into_message()),
                )]
            })
            .and_then(|req| parse_request(req, rules));
        match parsed {
            Ok(call) => calls.push(call),
            Err(errors) => details.extend(errors.into_iter().map(|e| ErrorDetail {
                index: Some(index),
                field: (!e.field.is_empty()).then_some(e.field),
                message: e.message,
            })),
        }
    }
    if !details.is_empty() {
        let bad: std::collections::BTreeSet<_> = details.iter().filter_map(|d| d.index).collect();
        let list = bad
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::BadRequest(envelope(
            "VALIDATION_ERROR",
            format!(
                "{} of {total} calls are invalid (index {list}); no call was created",
                bad.len()
            ),
            details,
        )));
    }
    Ok(calls)
}
