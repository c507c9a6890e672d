//! The AI call provider's HTTP API, as the dispatcher uses it: one request per attempt, and
//! its outcome sorted into the classes that decide what happens to the call.

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Secret;

/// How many times a request whose outcome is unknown is sent again, with the same
/// `Idempotency-Key`, before the dialer leaves the attempt open for a later resend.
pub const RESENDS: u32 = 2;
/// The most of a provider's answer kept in `lastError`.
const MAX_ERROR_TEXT: usize = 1000;
/// The most of a provider's answer read at all: an answer is a small JSON object, and a
/// provider that sends more (broken, or hostile) must not fill the service's memory.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    to: &'a str,
    script_id: &'a str,
    metadata: &'a Map<String, Value>,
    webhook_url: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAnswer {
    call_id: Option<String>,
}

/// What became of a dial request; decides what happens to the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialOutcome {
    /// 2xx: the provider holds the call. Its id for the attempt, when it gave a usable one
    /// (webhooks are matched by the reference in their URL too).
    Accepted { provider_call_id: Option<String> },
    /// 429: not an attempt; dial again later.
    RateLimited { retry_after: Option<Duration> },
    /// Refused connection or 5xx to the first send: the attempt failed; retried while
    /// attempts remain.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the call has failed for good.
    Permanent { reason: String },
    /// The request may have placed the call, and no send settled it (timeout, cut
    /// connection, or a 5xx, 409, 425 or 429 to a resend): the attempt stays open and is
    /// sent again, with the same `Idempotency-Key`, after `resend_in`. Never a failed
    /// attempt, so a person is never dialed twice because an answer was lost.
    Unknown { reason: String, resend_in: Duration },
}

impl DialOutcome {
    /// A short name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
            Self::Unknown { .. } => "unknown",
        }
    }
}

/// One send, before resends: `Unknown` means the request may have reached the provider.
enum Sent {
    Known(DialOutcome),
    Unknown(String),
}

/// The provider client.
#[derive(Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
}

impl HttpProvider {
    pub fn new(url: &str, api_key: Secret, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirect would re-send the call's number and metadata to wherever the
            // provider (or whoever answers in its name) points: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("call-orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: url.to_owned(),
            api_key,
        })
    }

    /// Sends the attempt, and sends it again with the same `Idempotency-Key` while its
    /// outcome is unknown, so that a person is never dialed twice for one attempt. Once a
    /// send may have reached the provider, only a 2xx or a 4xx other than 409, 425 and 429
    /// settles the attempt; without one it is left open ([`DialOutcome::Unknown`]).
    /// `rescues` (how often the attempt was taken over) spaces out the later resends.
    pub async fn dial(&self, request: &DialRequest, rescues: u32) -> DialOutcome {
        let mut unknown = request.resend;
        let mut last = String::new();
        for send in 0..=RESENDS {
            if send > 0 {
                tracing::warn!(reason = ?last, send, "dial outcome unknown; sending it again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(send))).await;
            }
            match self.send(request).await {
                Sent::Known(outcome) if !unknown => return outcome,
                Sent::Known(outcome) => match settles_a_resend(outcome) {
                    Ok(outcome) => return outcome,
                    Err(reason) => last = reason,
                },
                Sent::Unknown(reason) => last = reason,
            }
            unknown = true;
        }
        DialOutcome::Unknown {
            reason: format!("outcome unknown after {} sends: {last}", RESENDS + 1),
            resend_in: unknown_resend_delay(rescues),
        }
    }

    async fn send(&self, request: &DialRequest) -> Sent {
        let body = WireRequest {
            to: &request.to,
            script_id: &request.script_id,
            metadata: &request.metadata,
            webhook_url: &request.webhook_url,
        };
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(self.api_key.expose())
            .header("Idempotency-Key", request.idempotency_key())
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            // Never connected: this request was not sent, so it is safe to count as failed
            // (unless an earlier send of the attempt may have gone through).
            Err(err) if err.is_connect() => {
                return Sent::Known(DialOutcome::Transient {
                    reason: format!("provider unreachable: {}", error_chain(&err)),
                    retry_after: None,
                });
            }
            Err(err) => return Sent::Unknown(error_chain(&err)),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match read_bounded(response).await {
            Ok(text) => text,
            Err(err) if status.is_success() => return Sent::Unknown(err),
            Err(_) => String::new(),
        };
        Sent::Known(classify(status, retry_after, &text))
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer; more is an error, not a truncation,
/// since a cut JSON answer could be read as one without its id.
async fn read_bounded(mut response: reqwest::Response) -> Result<String, String> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
    {
        return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| error_chain(&err))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A resend's answer, when the first send may have placed the call: a 2xx or a clear
/// refusal settles the attempt; anything else (`Err`, with why) leaves it unknown. A 409 or
/// 425 says the key is still being worked on, a 429 or 5xx says nothing of the first send,
/// and a refused connection proves only that this send did not arrive.
fn settles_a_resend(outcome: DialOutcome) -> Result<DialOutcome, String> {
    match outcome {
        DialOutcome::Accepted { .. } => Ok(outcome),
        DialOutcome::Permanent { reason }
            if !reason.starts_with("provider answered 409")
                && !reason.starts_with("provider answered 425") =>
        {
            Ok(DialOutcome::Permanent { reason })
        }
        DialOutcome::Permanent { reason } | DialOutcome::Transient { reason, .. } => Err(reason),
        DialOutcome::RateLimited { .. } => Err("provider answered 429 to a resend".into()),
        DialOutcome::Unknown { reason, .. } => Err(reason),
    }
}

/// How long an attempt whose outcome is unknown waits before it is sent again: 5 s, then
/// doubling with each rescue, at most 5 minutes (the attempt stays open meanwhile, until
/// an answer, its webhook or `CALL_TIMEOUT` settles it).
pub fn unknown_resend_delay(rescues: u32) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1 << rescues.min(6))
        .min(Duration::from_secs(300))
}

fn classify(status: StatusCode, retry_after: Option<Duration>, text: &str) -> DialOutcome {
    if status.is_success() {
        let provider_call_id = serde_json::from_str::<WireAnswer>(text)
            .ok()
            .and_then(|a| a.call_id)
            .filter(|id| crate::domain::is_provider_call_id(id));
        if provider_call_id.is_none() {
            tracing::warn!(%status, "provider accepted the call without a usable callId");
        }
        return DialOutcome::Accepted { provider_call_id };
    }
    let reason = format!("provider answered {status}: {}", truncate(text.trim()));
    match status {
        StatusCode::TOO_MANY_REQUESTS => DialOutcome::RateLimited { retry_after },
        StatusCode::REQUEST_TIMEOUT => DialOutcome::Transient {
            reason,
            retry_after,
        },
        s if s.is_server_error() => DialOutcome::Transient {
            reason,
            retry_after,
        },
        // Other 4xx and anything unexpected (1xx, 3xx): the request itself is wrong.
        _ => DialOutcome::Permanent { reason },
    }
}

fn truncate(text: &str) -> String {
    let clean: String = text.chars().filter(|c| *c != '\0').collect();
    if clean.len() <= MAX_ERROR_TEXT {
        return clean;
    }
    let mut end = MAX_ERROR_TEXT;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &clean[..end])
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(
            classify(StatusCode::ACCEPTED, None, r#"{"callId": "p-1"}"#),
            DialOutcome::Accepted {
                provider_call_id: Some("p-1".into())
            }
        );
        assert_eq!(
            classify(StatusCode::OK, None, "not json"),
            DialOutcome::Accepted {
                provider_call_id: None
            }
        );
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(3)),
                ""
            ),
            DialOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, "down"),
            DialOutcome::Transient { .. }
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, None, "bad number"),
            DialOutcome::Permanent { reason } if reason.contains("bad number")
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(
            header::RETRY_AFTER,
            later.replace("+0000", "GMT").parse().unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn long_answers_are_cut() {
        assert!(truncate(&"é".repeat(2000)).len() <= MAX_ERROR_TEXT + 3);
    }
}
