//! The AI call provider's HTTP API, as the dispatcher uses it: one request per attempt, and
//! its outcome sorted into the classes that decide what happens to the call.

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Secret;

/// How many times a request whose outcome is unknown is sent again, with the same
/// `Idempotency-Key`, before the attempt counts as failed.
pub const RESENDS: u32 = 2;
/// The most of a provider's answer kept in `lastError`.
const MAX_ERROR_TEXT: usize = 1000;

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
    /// Network error, timeout, 5xx: the attempt failed; retried while attempts remain.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the call has failed for good.
    Permanent { reason: String },
}

impl DialOutcome {
    /// A short name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
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
    /// outcome is unknown, so that a person is never dialed twice for one attempt.
    pub async fn dial(&self, request: &DialRequest) -> DialOutcome {
        let mut last = String::new();
        for send in 0..=RESENDS {
            if send > 0 {
                tracing::warn!(reason = %last, send, "dial outcome unknown; sending it again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(send))).await;
            }
            match self.send(request).await {
                Sent::Known(outcome) => return outcome,
                Sent::Unknown(reason) => last = reason,
            }
        }
        DialOutcome::Transient {
            reason: format!("outcome unknown after {} sends: {last}", RESENDS + 1),
            retry_after: None,
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
            // Never connected: the request was not sent, so it is safe to count as failed.
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
        let text = match response.text().await {
            Ok(text) => text,
            Err(err) if status.is_success() => return Sent::Unknown(error_chain(&err)),
            Err(_) => String::new(),
        };
        Sent::Known(classify(status, retry_after, &text))
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, text: &str) -> DialOutcome {
    if status.is_success() {
        let provider_call_id = serde_json::from_str::<WireAnswer>(text)
            .ok()
            .and_then(|a| a.call_id)
            .filter(|id| !id.is_empty() && id.len() <= 255 && !id.contains('\0'));
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
