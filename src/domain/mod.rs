//! Pure code, no I/O: what a call is, which values are valid, which transitions are legal.

mod call;
mod payload;
mod phone;
mod retry;

pub use call::{Call, CallEvent, CallStatus, EventKind};
pub use payload::{
    CallPayload, FieldError, MAX_METADATA_BYTES, MAX_SCRIPT_ID_LEN, ScriptId, merge_patch,
};
pub use phone::{PhoneError, PhoneNumber};
pub use retry::{RetryDecision, RetryPolicy};

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
