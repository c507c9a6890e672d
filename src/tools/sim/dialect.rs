//! The vendors the simulator can play (`--dialect`): how each one's dial request reads,
//! what it answers, what its call object and webhooks look like, and how it signs them,
//! after each vendor's public documentation. The service's own reading of the same
//! dialects lives in `provider`; the two are written apart so that each checks the other.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use poem::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// A vendor's dialect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// The service's generic provider protocol (with `Idempotency-Key`).
    #[default]
    Generic,
    Twilio,
    Retell,
    Vapi,
    Bland,
}

/// The account SID the simulator's Twilio accepts.
pub const TWILIO_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// Where a simulated call stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    Queued,
    Ringing,
    InProgress,
    /// Ended with one of `COMPLETED`, `BUSY`, `NO_ANSWER`, `VOICEMAIL`, `FAILED`,
    /// `THROTTLED` (the vendor's concurrency limit), after `duration_sec`.
    Ended {
        outcome: &'static str,
        duration_sec: u64,
    },
}

/// One call the simulator placed.
#[derive(Clone, Debug)]
pub struct SimCall {
    pub id: String,
    pub number: String,
    /// The service's reference to the attempt, where the dial carried it.
    pub reference: Option<String>,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub stage: Stage,
    /// Headers the dial asked its webhooks to carry (Vapi's `server.headers`).
    pub headers: Vec<(String, String)>,
}

/// What the simulator needs from a dial request.
#[derive(Clone, Debug)]
pub struct DialIn {
    pub number: String,
    /// The generic dialect's `Idempotency-Key`, or the vendor dial's reference.
    pub key: String,
    pub webhook_url: Option<String>,
    pub metadata: Value,
    /// Headers the dial asked its webhooks to carry (Vapi's `server.headers`).
    pub headers: Vec<(String, String)>,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Twilio => "twilio",
            Self::Retell => "retell",
            Self::Vapi => "vapi",
            Self::Bland => "bland",
        }
    }

    /// Whether the vendor takes an idempotency key (only the generic protocol does).
    pub fn idempotent(self) -> bool {
        self == Self::Generic
    }

    /// The path of the webhook route the service serves for this dialect.
    pub fn webhook_path(self) -> &'static str {
        match self {
            Self::Generic => "/api/v1/callbacks/call-status",
            Self::Twilio => "/api/v1/callbacks/twilio",
            Self::Retell => "/api/v1/callbacks/retell",
            Self::Vapi => "/api/v1/callbacks/vapi",
            Self::Bland => "/api/v1/callbacks/bland",
        }
    }

    /// Whether the request carries the vendor's credentials for `key`.
    pub fn authorized(self, headers: &HeaderMap, key: &str) -> bool {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match self {
            Self::Twilio => authorization
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .is_some_and(|pair| pair == format!("{TWILIO_ACCOUNT_SID}:{key}").as_bytes()),
            Self::Bland => authorization == key,
            _ => authorization.strip_prefix("Bearer ") == Some(key),
        }
    }

    /// Reads a dial request; `Err` says why it is refused (400).
    pub fn parse_dial(self, headers: &HeaderMap, body: &[u8]) -> Result<DialIn, String> {
        let json = || serde_json::from_slice::<Value>(body).map_err(|e| format!("not JSON: {e}"));
        let string = |value: &Value, pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("`{pointer}` is missing"))
        };
        let reference = |metadata: &Value| {
            metadata
                .get("call_orchestrator_ref")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| "the metadata carries no reference".to_owned())
        };
        match self {
            Self::Generic => {
                let body = json()?;
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .filter(|k| !k.is_empty())
                    .ok_or("expected Idempotency-Key")?;
                string(&body, "/scriptId")?;
                Ok(DialIn {
                    number: string(&body, "/to")?,
                    key: key.to_owned(),
                    webhook_url: Some(string(&body, "/webhookUrl")?),
                    metadata: body.get("metadata").cloned().unwrap_or(json!({})),
                    headers: Vec::new(),
                })
            }
            Self::Twilio => {
                let form: Vec<(String, String)> =
                    form_urlencoded::parse(body).into_owned().collect();
                let get = |name: &str| {
                    form.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("`{name}` is missing"))
                };
                get("From")?;
                let url = reqwest::Url::parse(&get("Url")?).map_err(|e| format!("Url: {e}"))?;
                let key = url
                    .query_pairs()
                    .find(|(k, _)| k == "ref")
                    .map(|(_, v)| v.into_owned())
                    .ok_or("the Url carries no ref")?;
                Ok(DialIn {
                    number: get("To")?,
                    key,
                    webhook_url: Some(get("StatusCallback")?),
                    metadata: json!({}),
                    headers: Vec::new(),
                })
            }
            Self::Retell => {
                let body = json()?;
                string(&body, "/from_number")?;
                string(&body, "/override_agent_id")?;
                let metadata = body.get("metadata").cloned().unwrap_or(json!({}));
                Ok(DialIn {
                    number: string(&body, "/to_number")?,
                    key: reference(&metadata)?,
                    webhook_url: None,
                    metadata,
                    headers: Vec::new(),
                })
            }
            Self::Vapi => {
                let body = json()?;
                string(&body, "/phoneNumberId")?;
                string(&body, "/assistantId")?;
                if body.get("metadata").is_some() {
                    // Vapi refuses properties it does not know.
                    return Err("property metadata should not exist".into());
                }
                let metadata = body
                    .pointer("/assistantOverrides/metadata")
                    .cloned()
                    .unwrap_or(json!({}));
                let headers = body
                    .pointer("/assistantOverrides/server/headers")
                    .and_then(Value::as_object)
                    .map(|headers| {
                        headers
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(DialIn {
                    number: string(&body, "/customer/number")?,
                    key: reference(&metadata)?,
                    webhook_url: string(&body, "/assistantOverrides/server/url").ok(),
                    metadata,
                    headers,
                })
            }
            Self::Bland => {
                let body = json()?;
                string(&body, "/pathway_id")?;
                let metadata = body.get("metadata").cloned().unwrap_or(json!({}));
                Ok(DialIn {
                    number: string(&body, "/phone_number")?,
                    key: reference(&metadata)?,
                    webhook_url: string(&body, "/webhook").ok(),
                    metadata,
                    headers: Vec::new(),
                })
            }
        }
    }

    /// A new id for a call.
    pub fn new_id(self, n: u64) -> String {
        match self {
            Self::Generic => format!("sim-{n}"),
            Self::Twilio => format!("CA{n:032x}"),
            Self::Retell => format!("retell_{n:012}"),
            Self::Vapi => format!("00000000-0000-4000-8000-{n:012}"),
            Self::Bland => format!("bland-{n:08}"),
        }
    }

    /// The 2xx answer to a dial that placed `call`.
    pub fn accepted(self, call: &SimCall) -> (StatusCode, Value) {
        match self {
            Self::Generic => (StatusCode::ACCEPTED, json!({"callId": call.id})),
            Self::Twilio | Self::Retell | Self::Vapi => {
                (StatusCode::CREATED, self.call_object(call))
            }
            Self::Bland => (
                StatusCode::OK,
                json!({"status": "success", "message": "Call successfully queued.", "call_id": call.id, "batch_id": null}),
            ),
        }
    }

    /// A refusal's body in the vendor's shape.
    pub fn refusal(self, status: StatusCode, message: &str) -> Value {
        match self {
            Self::Generic => json!({"error": message}),
            Self::Twilio => json!({
                "code": if status == StatusCode::TOO_MANY_REQUESTS { 20429 } else { 20500 },
                "message": message,
                "more_info": "https://www.twilio.com/docs/errors",
                "status": status.as_u16(),
            }),
            Self::Retell | Self::Vapi | Self::Bland => {
                json!({"status": "error", "message": message})
            }
        }
    }

    /// The answer to a look-up of an unknown call.
    pub fn not_found(self) -> (StatusCode, Value) {
        match self {
            Self::Retell => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"status": "error", "message": "Cannot find requested asset under given api key."}),
            ),
            Self::Twilio => (
                StatusCode::NOT_FOUND,
                json!({"code": 20404, "message": "The requested resource was not found", "status": 404}),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                json!({"status": "error", "message": "not found"}),
            ),
        }
    }

    /// The call as the vendor's look-up answers it.
    pub fn call_object(self, call: &SimCall) -> Value {
        let (word, ended) = match call.stage {
            Stage::Ended {
                outcome,
                duration_sec,
            } => (outcome, Some(duration_sec)),
            Stage::Queued => ("QUEUED", None),
            Stage::Ringing => ("RINGING", None),
            Stage::InProgress => ("IN_PROGRESS", None),
        };
        let duration = ended.unwrap_or(0);
        match self {
            Self::Generic => json!({"callId": call.id, "status": word}),
            Self::Twilio => {
                let (status, answered_by) = twilio_status(word);
                json!({
                    "sid": call.id,
                    "account_sid": TWILIO_ACCOUNT_SID,
                    "to": call.number,
                    "from": "+15550000000",
                    "status": if status == "initiated" { "queued" } else { status },
                    "direction": "outbound-api",
                    "date_created": call.created_at.to_rfc2822(),
                    "duration": ended.map(|d| d.to_string()),
                    "answered_by": answered_by,
                })
            }
            Self::Retell => {
                let mut object = json!({
                    "call_id": call.id,
                    "call_type": "phone_call",
                    "direction": "outbound",
                    "to_number": call.number,
                    "from_number": "+15550000000",
                    "agent_id": "agent_sim",
                    "metadata": call.metadata,
                    "call_status": match word {
                        "QUEUED" | "RINGING" => "registered",
                        "IN_PROGRESS" => "ongoing",
                        "COMPLETED" | "VOICEMAIL" => "ended",
                        "THROTTLED" => "error",
                        _ => "not_connected",
                    },
                    "start_timestamp": call.created_at.timestamp_millis(),
                });
                if ended.is_some() {
                    object["disconnection_reason"] = retell_reason(word).into();
                    object["duration_ms"] = (duration * 1000).into();
                }
                object
            }
            Self::Vapi => {
                let mut object = json!({
                    "id": call.id,
                    "type": "outboundPhoneCall",
                    "customer": {"number": call.number},
                    "assistantOverrides": {"metadata": call.metadata},
                    "createdAt": call.created_at.to_rfc3339(),
                    "status": match word {
                        "QUEUED" => "queued",
                        "RINGING" => "ringing",
                        "IN_PROGRESS" => "in-progress",
                        _ => "ended",
                    },
                });
                if ended.is_some() {
                    object["endedReason"] = vapi_reason(word).into();
                    object["startedAt"] = call.created_at.to_rfc3339().into();
                    object["endedAt"] = (call.created_at
                        + chrono::Duration::seconds(duration as i64))
                    .to_rfc3339()
                    .into();
                }
                object
            }
            Self::Bland => {
                let (status, completed, answered_by, queue) = match word {
                    "QUEUED" => (None, false, None, "queued"),
                    "RINGING" => (None, false, None, "allocated"),
                    "IN_PROGRESS" => (None, false, None, "started"),
                    "COMPLETED" => (Some("completed"), true, Some("human"), "complete"),
                    "VOICEMAIL" => (Some("completed"), true, Some("voicemail"), "complete"),
                    "BUSY" => (Some("busy"), true, None, "complete"),
                    "NO_ANSWER" => (Some("no-answer"), true, Some("no-answer"), "complete"),
                    _ => (Some("failed"), true, None, "call_error"),
                };
                json!({
                    "call_id": call.id,
                    "c_id": call.id,
                    "to": call.number,
                    "status": status,
                    "completed": completed,
                    "queue_status": queue,
                    "answered_by": answered_by,
                    "call_length": ended.map(|d| d as f64 / 60.0),
                    "corrected_duration": ended.map(|d| d.to_string()),
                    "error_message": (word == "FAILED").then_some("Call failed."),
                    "metadata": call.metadata,
                    "created_at": call.created_at.to_rfc3339(),
                })
            }
        }
    }

    /// The webhook the vendor sends when `call` reaches its current stage (`sequence`
    /// counts the call's webhooks), as content type and body; `None` when the vendor sends
    /// none for that stage.
    pub fn webhook(self, call: &SimCall, sequence: u32) -> Option<(&'static str, Vec<u8>)> {
        let json_body = |value: Value| Some(("application/json", value.to_string().into_bytes()));
        match (self, call.stage) {
            (
                Self::Generic,
                Stage::Ended {
                    outcome,
                    duration_sec,
                },
            ) => {
                let mut body = json!({
                    "callId": call.id,
                    "status": outcome,
                    "completedAt": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
                if outcome == "COMPLETED" {
                    body["durationSec"] = duration_sec.into();
                } else {
                    body["reason"] =
                        format!("simulated {}", outcome.to_lowercase().replace('_', " ")).into();
                }
                json_body(body)
            }
            (Self::Generic, stage) => json_body(json!({"callId": call.id, "status": match stage {
                Stage::Queued => "QUEUED",
                Stage::Ringing => "RINGING",
                _ => "IN_PROGRESS",
            }})),
            (Self::Twilio, stage) => {
                let (status, answered_by) = match stage {
                    Stage::Queued => ("initiated", None),
                    Stage::Ringing => ("ringing", None),
                    Stage::InProgress => ("in-progress", None),
                    Stage::Ended { outcome, .. } => twilio_status(outcome),
                };
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.append_pair("AccountSid", TWILIO_ACCOUNT_SID)
                    .append_pair("ApiVersion", "2010-04-01")
                    .append_pair("CallSid", &call.id)
                    .append_pair("CallStatus", status)
                    .append_pair("CallbackSource", "call-progress-events")
                    .append_pair("Direction", "outbound-api")
                    .append_pair("From", "+15550000000")
                    .append_pair("SequenceNumber", &sequence.to_string())
                    .append_pair("Timestamp", &Utc::now().to_rfc2822())
                    .append_pair("To", &call.number);
                if let Stage::Ended { duration_sec, .. } = stage {
                    if status == "completed" {
                        form.append_pair("CallDuration", &duration_sec.to_string());
                        form.append_pair("Duration", &duration_sec.div_ceil(60).to_string());
                    }
                    if let Some(who) = answered_by {
                        form.append_pair("AnsweredBy", who);
                    }
                }
                Some((
                    "application/x-www-form-urlencoded",
                    form.finish().into_bytes(),
                ))
            }
            (Self::Retell, Stage::Queued | Stage::Ringing) => None,
            (Self::Retell, Stage::InProgress) => {
                json_body(json!({"event": "call_started", "call": self.call_object(call)}))
            }
            (Self::Retell, Stage::Ended { .. }) => {
                json_body(json!({"event": "call_ended", "call": self.call_object(call)}))
            }
            (
                Self::Vapi,
                Stage::Ended {
                    outcome,
                    duration_sec,
                },
            ) => json_body(json!({"message": {
                "type": "end-of-call-report",
                "endedReason": vapi_reason(outcome),
                "durationSeconds": duration_sec,
                "call": self.call_object(call),
            }})),
            (Self::Vapi, stage) => json_body(json!({"message": {
                "type": "status-update",
                "status": match stage { Stage::Queued => "queued", Stage::Ringing => "ringing", _ => "in-progress" },
                "call": self.call_object(call),
            }})),
            (Self::Bland, Stage::Ended { .. }) => json_body(self.call_object(call)),
            (Self::Bland, Stage::InProgress) => json_body(json!({
                "call_id": call.id, "message": "Call connected", "category": "call", "log_level": "info",
            })),
            (Self::Bland, _) => None,
        }
    }

    /// The headers that sign a webhook to `url`, as the vendor signs: Twilio and Retell
    /// with `key` (the auth token, the API key), Vapi and Bland with `secret` when one is
    /// set (the generic dialect is signed apart, per Standard Webhooks).
    pub fn sign(
        self,
        key: &str,
        secret: Option<&str>,
        url: &str,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        match self {
            Self::Generic => Vec::new(),
            Self::Twilio => {
                let mut params: Vec<(String, String)> =
                    form_urlencoded::parse(body).into_owned().collect();
                params.sort();
                let mut mac =
                    <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key");
                mac.update(url.as_bytes());
                for (name, value) in &params {
                    mac.update(name.as_bytes());
                    mac.update(value.as_bytes());
                }
                let signature =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                vec![
                    ("x-twilio-signature", signature),
                    (
                        "i-twilio-idempotency-token",
                        uuid::Uuid::new_v4().to_string(),
                    ),
                ]
            }
            Self::Retell => {
                let timestamp = Utc::now().timestamp_millis().to_string();
                let digest = hmac_hex(key, &[body, timestamp.as_bytes()]);
                vec![("x-retell-signature", format!("v={timestamp},d={digest}"))]
            }
            Self::Vapi => match secret {
                Some(secret) => {
                    let timestamp = Utc::now().timestamp_millis().to_string();
                    let digest = hmac_hex(secret, &[timestamp.as_bytes(), b".", body]);
                    vec![("x-timestamp", timestamp), ("x-signature", digest)]
                }
                None => Vec::new(),
            },
            Self::Bland => match secret {
                Some(secret) => vec![("x-webhook-signature", hmac_hex(secret, &[body]))],
                None => Vec::new(),
            },
        }
    }
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("any key");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Twilio's `CallStatus` and `AnsweredBy` for an outcome.
fn twilio_status(outcome: &str) -> (&'static str, Option<&'static str>) {
    match outcome {
        "QUEUED" => ("queued", None),
        "RINGING" => ("ringing", None),
        "IN_PROGRESS" => ("in-progress", None),
        "COMPLETED" => ("completed", Some("human")),
        "VOICEMAIL" => ("completed", Some("machine_start")),
        "BUSY" => ("busy", None),
        "NO_ANSWER" => ("no-answer", None),
        _ => ("failed", None),
    }
}

fn retell_reason(outcome: &str) -> &'static str {
    match outcome {
        "COMPLETED" => "user_hangup",
        "VOICEMAIL" => "voicemail_reached",
        "BUSY" => "dial_busy",
        "NO_ANSWER" => "dial_no_answer",
        "THROTTLED" => "concurrency_limit_reached",
        _ => "dial_failed",
    }
}

fn vapi_reason(outcome: &str) -> &'static str {
    match outcome {
        "COMPLETED" => "customer-ended-call",
        "VOICEMAIL" => "voicemail",
        "BUSY" => "customer-busy",
        "NO_ANSWER" => "customer-did-not-answer",
        "THROTTLED" => "call.start.error-subscription-concurrency-limit-reached",
        _ => "twilio-failed-to-connect-call",
    }
}
