//! The generic dialect (`AI_CALL_PROVIDER=generic`): `POST {AI_CALL_API_URL}` with
//! `{to, scriptId, metadata, webhookUrl}`, a bearer key and `Idempotency-Key: {call id}:{attempt}`,
//! answered with `{callId}`; webhooks to `/api/v1/callbacks/call-status`, signed per
//! Standard Webhooks when `WEBHOOK_SECRET` is set.

mod webhook;

use std::time::Duration;

use futures_util::future::BoxFuture;
use poem::http::{HeaderMap, Uri};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    CallProvider, DialRequest, ProviderError, ProviderReport, Verification, WebhookError,
    http::{
        MAX_ANSWER_BYTES, client, error_chain, read_bounded, retry_after, truncate,
        unknown_resend_delay,
    },
};
use crate::{
    config::{Config, Secret},
    domain::DialOutcome,
};

pub use webhook::WebhookPayload;

/// How many times a request whose outcome is unknown is sent again, with the same
/// `Idempotency-Key`, before the dialer leaves the attempt open for a later resend.
pub const RESENDS: u32 = 2;

/// The path of the generic provider's webhook route.
pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/call-status";

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

/// One send, before resends: `Unknown` means the request may have reached the provider.
enum Sent {
    Known(DialOutcome),
    Unknown(String),
}

/// The generic provider.
pub struct GenericProvider {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    /// One verifier per `WEBHOOK_SECRET` (several during a rotation); empty: unsigned.
    verifiers: Vec<standardwebhooks::Webhook>,
}

impl GenericProvider {
    pub fn new(
        url: &str,
        api_key: Secret,
        timeout: Duration,
        webhook_secrets: &[Secret],
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            client: client(timeout)?,
            url: url.to_owned(),
            api_key,
            verifiers: webhook_secrets
                .iter()
                .filter_map(|secret| standardwebhooks::Webhook::new(secret.expose()).ok())
                .collect(),
        })
    }

    /// `AI_CALL_API_URL`, `AI_CALL_API_KEY`, `PROVIDER_TIMEOUT` and `WEBHOOK_SECRET`.
    pub fn from_config(config: &Config) -> Result<Self, ProviderError> {
        Self::new(
            config.ai_call_api_url.as_deref().unwrap_or_default(),
            config
                .ai_call_api_key
                .clone()
                .unwrap_or_else(|| Secret::new("")),
            config.provider_timeout,
            &config.webhook_secret_list(),
        )
    }

    /// Sends the attempt, and sends it again with the same `Idempotency-Key` while its
    /// outcome is unknown, so that a person is never dialed twice for one attempt. Once a
    /// send may have reached the provider, only a 2xx or a 4xx other than 409, 425 and 429
    /// settles the attempt; without one it is left open ([`DialOutcome::Unknown`]).
    /// `rescues` (how often the attempt was taken over) spaces out the later resends.
    async fn send_until_known(&self, request: &DialRequest, rescues: u32) -> DialOutcome {
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
        let text = match read_bounded(response, MAX_ANSWER_BYTES).await {
            Ok(text) => text,
            Err(err) if status.is_success() => return Sent::Unknown(err),
            Err(_) => String::new(),
        };
        Sent::Known(classify(status, retry_after, &text))
    }
}

impl CallProvider for GenericProvider {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn webhook_path(&self) -> &'static str {
        WEBHOOK_PATH
    }

    fn dial<'a>(&'a self, request: &'a DialRequest, rescues: u32) -> BoxFuture<'a, DialOutcome> {
        Box::pin(self.send_until_known(request, rescues))
    }

    fn verify_webhook(&self, _uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Verification {
        if self.verifiers.is_empty() {
            return Verification::Unsigned;
        }
        if !self
            .verifiers
            .iter()
            .any(|verifier| verifier.verify(body, headers).is_ok())
        {
            return Verification::Refused;
        }
        Verification::Signed {
            webhook_id: headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .filter(|id| !id.is_empty() && id.len() <= 255)
                .map(str::to_owned),
        }
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        webhook::read(body)
    }

    fn webhook_proof(&self) -> &'static str {
        if self.verifiers.is_empty() {
            "the token of each attempt's webhook URL"
        } else {
            "Standard Webhooks signatures (WEBHOOK_SECRET)"
        }
    }
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
}
