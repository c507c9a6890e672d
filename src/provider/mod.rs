//! The AI call provider, behind one seam: [`CallProvider`] dials an attempt, verifies and
//! reads a webhook, and looks a call up. Each vendor's dialect is a module of its own
//! (`generic`, and `twilio`, `retell`, `vapi` and `bland` on the shared machinery of
//! `vendor`), picked by `AI_CALL_PROVIDER` in [`from_config`]; the dispatcher, the webhook
//! route and the API know the trait only.

mod bland;
mod generic;
mod http;
mod retell;
mod signature;
mod twilio;
mod vapi;
mod vendor;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use poem::http::{HeaderMap, Uri};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    config::Config,
    domain::{DialOutcome, ProviderStatus},
};

pub use generic::{GenericProvider, RESENDS, WebhookPayload};
pub(crate) use http::error_chain;
pub use http::{MAX_ANSWER_BYTES, retry_after, unknown_resend_delay};

/// One vendor's API, as the service uses it.
pub trait CallProvider: Send + Sync {
    /// Its name in `AI_CALL_PROVIDER`.
    fn name(&self) -> &'static str;

    /// The path of the route its webhooks come to, appended to `WEBHOOK_BASE_URL` in the
    /// URL handed to it with each dial.
    fn webhook_path(&self) -> &'static str;

    /// Sends attempt `request`, and again while its outcome is unknown where the vendor
    /// makes that safe, so that a person is never dialed twice for one attempt. `rescues`
    /// (how often the attempt was taken over) spaces out later resends.
    fn dial<'a>(&'a self, request: &'a DialRequest, rescues: u32) -> BoxFuture<'a, DialOutcome>;

    /// Checks, before the body is read, whether a webhook comes from the vendor: its
    /// signature over the exact bytes received (and, for a vendor that signs its URL, the
    /// public URL it was sent to: `WEBHOOK_BASE_URL` with `uri`'s path and query), by the
    /// vendor's scheme.
    fn verify_webhook(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Verification;

    /// Reads a webhook body into the service's words; `Err` says what is wrong with it.
    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError>;

    /// Whether [`CallProvider::look_up`] can find calls: the sweeper reconciles calls
    /// whose end never arrived only then.
    fn has_look_up(&self) -> bool {
        false
    }

    /// Looks a call up at the vendor by its id for the attempt. The generic provider has
    /// no look-up.
    fn look_up<'a>(&'a self, provider_call_id: &'a str) -> BoxFuture<'a, LookUp> {
        let _ = provider_call_id;
        Box::pin(async { LookUp::Unsupported })
    }

    /// How the provider's webhooks are proven genuine, for the log line at start.
    fn webhook_proof(&self) -> &'static str;
}

/// The names `AI_CALL_PROVIDER` takes.
pub const PROVIDERS: &[&str] = &["generic", "twilio", "retell", "vapi", "bland"];

/// The webhook routes of the vendors (the generic one is `generic::WEBHOOK_PATH`).
pub const VENDOR_WEBHOOK_PATHS: &[(&str, &str)] = &[
    ("twilio", twilio::WEBHOOK_PATH),
    ("retell", retell::WEBHOOK_PATH),
    ("vapi", vapi::WEBHOOK_PATH),
    ("bland", bland::WEBHOOK_PATH),
];

/// The provider `AI_CALL_PROVIDER` names, built from the configuration (no I/O). A new
/// vendor is a module beside `twilio` (a [`vendor::Dialect`]) and one line here (and its
/// name in [`PROVIDERS`]).
pub fn from_config(config: &Config) -> Result<Arc<dyn CallProvider>, ProviderError> {
    match config.ai_call_provider.as_str() {
        "generic" => Ok(Arc::new(GenericProvider::from_config(config)?)),
        "twilio" => Ok(Arc::new(vendor::Vendor::new(
            twilio::Twilio::from_config(config),
            config,
        )?)),
        "retell" => Ok(Arc::new(vendor::Vendor::new(
            retell::Retell::from_config(config),
            config,
        )?)),
        "vapi" => Ok(Arc::new(vendor::Vendor::new(
            vapi::Vapi::from_config(config),
            config,
        )?)),
        "bland" => Ok(Arc::new(vendor::Vendor::new(
            bland::Bland::from_config(config),
            config,
        )?)),
        other => Err(ProviderError::Unknown(other.to_owned())),
    }
}

/// The vendor's public API, where `AI_CALL_API_URL` is not set.
pub fn default_api_url(provider: &str) -> Option<&'static str> {
    match provider {
        "twilio" => Some(twilio::API_URL),
        "retell" => Some(retell::API_URL),
        "vapi" => Some(vapi::API_URL),
        "bland" => Some(bland::API_URL),
        _ => None,
    }
}

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("AI_CALL_PROVIDER `{0}` is not a provider this service speaks")]
    Unknown(String),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// One dial attempt.
#[derive(Clone, Debug)]
pub struct DialRequest {
    pub call_id: Uuid,
    /// From 1.
    pub attempt: i32,
    pub to: String,
    pub script_id: String,
    pub metadata: Map<String, Value>,
    pub webhook_url: String,
    /// The attempt may have reached the provider already (see `db::Claimed::resend`).
    pub resend: bool,
    /// When the attempt was claimed: a call placed for it at the vendor was created after.
    pub claimed_at: DateTime<Utc>,
    /// The provider's ids of other attempts to the same number (for a rescue): a look-up
    /// never takes one of them for this attempt's call.
    pub known_provider_ids: Vec<String>,
}

impl DialRequest {
    /// `{call id}:{attempt}`: the provider places at most one call per key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.call_id, self.attempt)
    }

    /// `{call id}.{attempt}`: the service's reference to the attempt, put where the vendor
    /// echoes it (the dial's metadata, or its URLs), so that its webhooks and a look-up can
    /// find the attempt without the vendor's id.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.call_id, self.attempt)
    }
}

/// The metadata key under which the dial carries [`DialRequest::reference`] to vendors that
/// echo metadata back; a client's own value under this key is replaced.
pub const REFERENCE_KEY: &str = "call_orchestrator_ref";

/// Reads a reference `{call id}.{attempt}` back.
pub fn parse_reference(raw: &str) -> Option<(Uuid, i32)> {
    let (id, attempt) = raw.split_once('.')?;
    let id = Uuid::parse_str(id).ok()?;
    let attempt: i32 = attempt.parse().ok()?;
    (attempt >= 1).then_some((id, attempt))
}

/// What a webhook's signature proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The provider does not sign its webhooks (or no secret is configured): the token in
    /// the webhook URL is the proof.
    Unsigned,
    /// A valid signature; `webhook_id` names the delivery, so a replay of it is a duplicate.
    Signed { webhook_id: Option<String> },
    /// A signature is required and missing, wrong or too old.
    Refused,
}

/// A webhook in the service's words.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderReport {
    pub provider_call_id: String,
    pub status: ProviderStatus,
    pub duration_sec: Option<i32>,
    pub reason: Option<String>,
    /// The service's reference to the attempt, where the vendor echoes it in the body (the
    /// dial's metadata): trusted only when the webhook's signature was valid.
    pub reference: Option<(Uuid, i32)>,
    /// What the webhook said, for the timeline.
    pub body: Value,
}

/// What is wrong with a webhook body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not the shape the vendor sends.
    #[error("the request body is not valid: {0}")]
    Body(String),
    /// The shape, but a value out of bounds.
    #[error("{0}")]
    Invalid(String),
}

/// What a look-up found.
#[derive(Clone, Debug, PartialEq)]
pub enum LookUp {
    /// The vendor has no look-up.
    Unsupported,
    /// The vendor does not know the call.
    NotFound,
    /// Where the call stands at the vendor.
    Found(ProviderReport),
    /// The look-up failed (unreachable, an error answer).
    Failed(String),
}
