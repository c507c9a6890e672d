//! Pure code, no I/O: what a call is, which values are valid, which transitions are legal.

mod call;
mod payload;
mod phone;
mod retry;
mod webhook_token;

pub use call::{Call, CallEvent, CallStatus, EventKind};
pub use payload::{
    CallPayload, FieldError, MAX_METADATA_BYTES, MAX_SCRIPT_ID_LEN, ScriptId, merge_patch,
};
pub use phone::{PhoneError, PhoneNumber};
pub use retry::{RetryDecision, RetryPolicy};
pub use webhook_token::WebhookTokens;

/// Decodes a Standard Webhooks secret (`whsec_` followed by base64) into its key bytes.
pub fn webhook_secret_bytes(secret: &str) -> Result<Vec<u8>, &'static str> {
    use base64::Engine as _;
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "must be `whsec_` followed by base64")?;
    if bytes.len() < 16 {
        return Err("must hold at least 16 bytes of key");
    }
    Ok(bytes)
}

/// Longest provider id (`callId`) the service keeps.
pub const MAX_PROVIDER_CALL_ID_LEN: usize = 255;

/// Whether `id` may serve as a provider's id for an attempt: 1 to 255 characters of
/// letters, digits and `_ - . : ~ + / = @`. Every vendor's ids fit (hex, UUIDs, prefixed
/// alphanumerics); anything else (spaces, newlines, escape sequences) would end up in logs
/// and pages as it stands, so it is refused rather than stored.
pub fn is_provider_call_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PROVIDER_CALL_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:~+/=@".contains(&b))
}
