//! `Idempotency-Key` on the create routes: the header checked, the request it names hashed,
//! and the calls stored under it, scoped by the client's API key.

use poem_openapi::param::Header;
use sha2::{Digest, Sha256};

use super::{ApiState, ClientScope, error::ApiError};
use crate::db::{self, CreateOutcome, IdempotencyKey, NewCall};

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, checked: absent, or 1 to 255 visible ASCII characters.
pub(super) fn checked_key<'a>(
    parsed: &'a Header<Option<String>>,
    request: &poem::Request,
) -> Result<Option<&'a str>, ApiError> {
    match parsed.0.as_deref() {
        Some(key) => check_idempotency_key(key).map(|()| Some(key)),
        // Present but not text: ignoring it would silently drop the protection asked for.
        None if request.headers().contains_key("idempotency-key") => Err(ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            "the Idempotency-Key header may hold only visible ASCII characters",
        )),
        None => Ok(None),
    }
}

/// Hash of what a request asks for: the route and its normalised calls, so that a key
/// used on one route and replayed on the other, or with other calls, is a conflict.
fn request_hash(route: &str, calls: &[NewCall]) -> Vec<u8> {
    // A call without a schedule of its own hashes as its payload alone, as before calls had
    // one, so that keys stored then still answer their repeats.
    let payloads: Vec<serde_json::Value> = calls
        .iter()
        .map(|c| {
            if c.timing == Default::default() && c.campaign_id.is_none() {
                c.payload.to_json()
            } else {
                serde_json::json!({
                    "payload": c.payload.to_json(),
                    "notBefore": c.timing.not_before,
                    "notAfter": c.timing.not_after,
                    "timezone": c.timing.timezone.map(|tz| tz.name()),
                    "campaignId": c.campaign_id,
                })
            }
        })
        .collect();
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(serde_json::Value::Array(payloads).to_string().as_bytes());
    hash.finalize().to_vec()
}

/// What a request under an `Idempotency-Key` asks for, as it was sent.
pub(super) struct AsSent<'a> {
    pub route: &'a str,
    /// Every call of the request, suppressed ones included.
    pub calls: &'a [NewCall],
    /// The batch's `skipSuppressed`.
    pub skip_suppressed: bool,
}

/// Stores `calls` (the request's, less those left out) under the client's
/// `Idempotency-Key` for the request `sent` (see `db::create_idempotent`). The key names the
/// request as sent, so a repeat is recognised whatever the suppression list has become.
pub(super) async fn create_under_key(
    state: &ApiState,
    request: &poem::Request,
    sent: AsSent<'_>,
    calls: &[NewCall],
    key: &str,
) -> Result<CreateOutcome, db::DbError> {
    let mut hash = request_hash(sent.route, sent.calls);
    if sent.skip_suppressed {
        // Only then, so that the requests of before the flag keep their hashes.
        hash = Sha256::digest([hash.as_slice(), b"\0skipSuppressed"].concat()).to_vec();
    }
    let scope = scope(request);
    let key = IdempotencyKey {
        scope: &scope,
        key,
        request_hash: &hash,
    };
    db::create_idempotent(&state.pool, calls, key).await
}

/// Whose Idempotency-Keys these are (see `ClientScope`).
fn scope(request: &poem::Request) -> Vec<u8> {
    request
        .extensions()
        .get::<ClientScope>()
        .map(|scope| scope.0.clone())
        .unwrap_or_default()
}

fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            "the Idempotency-Key header must hold 1 to 255 characters",
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            "the Idempotency-Key header may hold only visible ASCII characters",
        ));
    }
    Ok(())
}
