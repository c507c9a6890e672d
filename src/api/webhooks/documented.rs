//! The vendors' webhook bodies as the OpenAPI document shows them: the fields the service
//! reads (each vendor sends more, which is ignored). The bodies themselves are read by the
//! vendor's dialect in `provider`, from the exact bytes received.

use poem_openapi::Object;
use serde_json::Value;

/// A Twilio status callback (form-encoded), as `StatusCallback` receives it.
#[derive(Object, Clone, Debug)]
pub struct TwilioStatusCallback {
    /// Twilio's id of the call (`CA…`).
    #[oai(rename = "CallSid")]
    pub call_sid: String,
    /// `queued`, `initiated`, `ringing`, `in-progress`, `completed`, `busy`, `no-answer`,
    /// `failed` or `canceled`.
    #[oai(rename = "CallStatus")]
    pub call_status: String,
    /// Seconds, with `completed`.
    #[oai(rename = "CallDuration")]
    pub call_duration: Option<String>,
    /// Answering machine detection: `human`, `machine_start`, `fax`, `unknown`, ….
    #[oai(rename = "AnsweredBy")]
    pub answered_by: Option<String>,
}

/// A Retell webhook.
#[derive(Object, Clone, Debug)]
pub struct RetellWebhook {
    /// `call_started`, `call_ended`, `call_analyzed`, ….
    pub event: String,
    /// Retell's call object: `call_id`, `call_status`, `disconnection_reason`,
    /// `duration_ms`, `metadata`, ….
    pub call: Value,
}

/// A Vapi server message.
#[derive(Object, Clone, Debug)]
pub struct VapiWebhook {
    /// `{type, call, …}`: `status-update` (with `status`) and `end-of-call-report` (with
    /// `endedReason`) are read; the other types are answered 200 and recorded as progress.
    pub message: Value,
}

/// Bland's post-call body (the call's object), or a progress message of `webhook_events`.
#[derive(Object, Clone, Debug)]
pub struct BlandWebhook {
    /// Bland's id of the call.
    pub call_id: String,
    /// `completed`, `failed`, `busy`, `no-answer`, `canceled`, ….
    pub status: Option<String>,
    pub queue_status: Option<String>,
    pub completed: Option<bool>,
    /// `human`, `voicemail`, `unknown`, `no-answer`.
    pub answered_by: Option<String>,
    /// Minutes.
    pub call_length: Option<f64>,
    pub error_message: Option<String>,
    /// The dial's metadata, echoed.
    pub metadata: Option<Value>,
}
