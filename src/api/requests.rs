//! Request bodies and parameters turned into domain values, with every problem named.

use poem_openapi::types::ParseFromJSON;

use super::{
    MAX_BATCH,
    error::{ApiError, envelope},
    models::{BatchItem, CreateCallRequest, ErrorDetail},
};
use crate::{
    db::NewCall,
    domain::{CallPayload, FieldError},
};

/// A query string decodes `+` as a space, so `?to=+14155550100` arrives as
/// ` 14155550100`: a leading space before a digit is taken for the `+` it was.
pub(super) fn plus_decoded_as_space(raw: &str) -> std::borrow::Cow<'_, str> {
    match raw.strip_prefix(' ') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => format!("+{rest}").into(),
        _ => raw.into(),
    }
}

pub(super) fn parse_request(req: CreateCallRequest) -> Result<CallPayload, Vec<FieldError>> {
    let metadata = req
        .metadata
        .map(|m| serde_json::Value::Object(m.into_iter().collect()));
    CallPayload::parse(Some(&req.to.0), Some(&req.script_id.0), metadata.as_ref())
}

/// The calls of a batch, all valid, in order; else a 400 naming each bad item by its index.
pub(super) fn parse_batch(items: Vec<BatchItem>) -> Result<Vec<NewCall>, ApiError> {
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
            .and_then(parse_request);
        match parsed {
            Ok(payload) => calls.push(NewCall::new(payload)),
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
