//! Pure code, no I/O: what a call is, which values are valid, which transitions are legal.

/// A vocabulary stored as `text` (with a CHECK constraint naming its values): the column's
/// type is `text`, whatever the Rust enum is called.
macro_rules! text_column {
    ($ty:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }
    };
}
use text_column;

mod attempt;
mod call;
pub mod campaign;
pub mod decide;
pub mod event;
pub mod event_secret;
pub mod event_url;
mod outcome;
mod payload;
mod phone;
mod retry;
pub mod schedule;
mod webhook_token;

pub use attempt::{AttemptState, AttemptStatus};
pub use call::{Call, CallEvent, CallStatus, CallTiming, EventKind};
pub use campaign::{Campaign, CampaignRetry, CampaignRules, CampaignSettings, CampaignStatus};
pub use event::{DeliverySchedule, DeliveryStatus, Endpoint, EventType, SecretRef, Subscription};
pub use event_secret::{EndpointSecret, EventKeys, SecretUnavailable};
pub use outcome::{DialOutcome, ProviderStatus, ReportSource, WebhookUpdate};
pub use payload::{
    CallPayload, FieldError, MAX_METADATA_BYTES, MAX_SCRIPT_ID_LEN, ScriptId, merge_patch,
};
pub use phone::{PhoneError, PhoneNumber};
pub use retry::{FailedOutcome, PerOutcome, RetryDecision, RetryPolicy};
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
