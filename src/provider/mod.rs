//! The AI call provider, behind one seam: [`CallProvider`] dials an attempt, verifies and
//! reads a webhook, and looks a call up. Each vendor's dialect is a module of its own
//! (`generic` today), picked by `AI_CALL_PROVIDER` in [`from_config`]; the dispatcher, the
//! webhook route and the API know the trait only.

mod generic;
mod http;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use poem::http::HeaderMap;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    config::Config,
    domain::{DialOutcome, ProviderStatus},
};

pub use generic::{GenericProvider, GenericWebhook, RESENDS};
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
    /// signature over the exact bytes received, by the vendor's scheme.
    fn verify_webhook(&self, headers: &HeaderMap, body: &[u8]) -> Verification;

    /// Reads a webhook body into the service's words; `Err` says what is wrong with it.
    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError>;

    /// Looks a call up at the vendor by its id for the attempt. The generic provider has
    /// no look-up.
    fn look_up<'a>(&'a self, provider_call_id: &'a str) -> BoxFuture<'a, LookUp> {
        let _ = provider_call_id;
        Box::pin(async { LookUp::Unsupported })
    }
}

/// The names `AI_CALL_PROVIDER` takes.
pub const PROVIDERS: &[&str] = &["generic"];

/// The provider `AI_CALL_PROVIDER` names, built from the configuration (no I/O). A new
/// vendor is a module beside `generic` and one line here (and its name in [`PROVIDERS`]).
pub fn from_config(config: &Config) -> Result<Arc<dyn CallProvider>, ProviderError> {
    match config.ai_call_provider.as_str() {
        "generic" => Ok(Arc::new(GenericProvider::from_config(config)?)),
        other => Err(ProviderError::Unknown(other.to_owned())),
    }
}

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("AI_CALL_PROVIDER `{0}` is not a provider this service speaks (generic)")]
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
}

impl DialRequest {
    /// `{call id}:{attempt}`: the provider places at most one call per key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.call_id, self.attempt)
    }
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
