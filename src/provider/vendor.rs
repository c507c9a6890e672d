//! What the four vendor dialects share: a [`Dialect`] says how one vendor's API is spoken
//! (its dial request and answer, its webhook's signature and body, its call object), and
//! [`Vendor`] turns that into a [`CallProvider`] with the rules that hold for all of them.
//!
//! None of the vendors takes an idempotency key, so a dial is sent once and only once.
//! When its outcome is unknown (a timeout, a cut connection), the attempt stays open and,
//! once its lease runs out, the sweeper's rescue looks the call up by the reference the
//! dial carried, instead of sending it again (invariant 12): found, the attempt is the
//! vendor's call; not found three rescues later (more than half a minute after the send),
//! it was not placed and counts as a failed attempt; a look-up that cannot tell leaves the
//! attempt open, for `CALL_TIMEOUT` to settle at worst.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use poem::http::{HeaderMap, Uri};
use reqwest::StatusCode;
use serde_json::Value;

use super::{
    CallProvider, DialRequest, LookUp, ProviderError, ProviderReport, Verification, WebhookError,
    http::{
        MAX_ANSWER_BYTES, client, error_chain, read_bounded, retry_after, truncate,
        unknown_resend_delay,
    },
};
use crate::{
    config::{Config, Secret},
    domain::{DialOutcome, is_provider_call_id},
};

/// A rescue that finds no call at the vendor for the attempt this many times (the
/// rescues come 5 s, 10 s and 20 s apart) concludes the dial was never placed.
pub const NOT_FOUND_RESCUES: u32 = 3;

/// Look-ups and listings may be larger than a dial's answer (a listing of calls with their
/// transcripts): read up to 1 MiB, within `PROVIDER_TIMEOUT` like every request.
const MAX_LOOK_UP_BYTES: usize = 1024 * 1024;

/// The most calls a look-up by reference reads the details of, when the vendor's listing
/// leaves the reference out.
const MAX_CANDIDATES: usize = 5;

/// What every dialect's requests are built from.
pub struct Http {
    pub client: reqwest::Client,
    /// `AI_CALL_API_URL` without a trailing `/` (the vendor's public API by default).
    pub base: String,
    /// `AI_CALL_API_KEY`: the vendor's API key (Twilio: the auth token).
    pub key: Secret,
    /// `WEBHOOK_BASE_URL` without a trailing `/`.
    pub webhook_base: String,
}

impl Http {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Which of the vendor's calls is the attempt, from a listing of the calls to its number.
#[derive(Debug, PartialEq, Eq)]
pub enum Identified {
    /// The vendor's id of the attempt's call.
    Found(String),
    /// Calls whose details may tell (the listing leaves the reference out).
    Candidates(Vec<String>),
    /// None of them is the attempt.
    None,
}

/// What a vendor's 2xx answer to a dial says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// It holds the call: its id for the attempt, if it gave one.
    Accepted(Option<String>),
    /// It refused the call (why).
    Refused(String),
}

/// One vendor's API.
pub trait Dialect: Send + Sync + 'static {
    /// Its name in `AI_CALL_PROVIDER`.
    const NAME: &'static str;
    /// Its webhook route.
    const WEBHOOK_PATH: &'static str;

    /// The dial request of one attempt, carrying its reference where the vendor echoes it.
    fn dial(&self, http: &Http, request: &DialRequest) -> reqwest::RequestBuilder;

    /// What a 2xx answer says: the vendor's id for the attempt, or (from a vendor that
    /// answers some refusals with a 2xx) a refusal.
    fn answer(&self, answer: &Value) -> Answered;

    /// Whether a refusal says the vendor's rate or concurrency limit: not an attempt.
    fn is_rate_limit(&self, status: StatusCode, text: &str) -> bool {
        let _ = text;
        status == StatusCode::TOO_MANY_REQUESTS
    }

    /// Checks a webhook's signature; `public_url` is the URL the vendor sent it to.
    fn verify(
        &self,
        http: &Http,
        public_url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verification;

    /// How its webhooks are proven genuine, for the log line at start.
    fn proof(&self) -> &'static str;

    /// Reads a webhook body.
    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError>;

    /// Whether a look-up's answer says the vendor has no such call.
    fn not_found(&self, status: StatusCode) -> bool {
        status == StatusCode::NOT_FOUND
    }

    /// The request that looks one call up by the vendor's id.
    fn look_up(&self, http: &Http, provider_call_id: &str) -> reqwest::RequestBuilder;

    /// A call object, as a look-up answers it, in the service's words; `None` when it is
    /// not one (an error body answered 200).
    fn read_call(&self, call: &Value) -> Option<ProviderReport>;

    /// The most calls one listing answers (the `limit` its `list` asks for).
    const LIST_LIMIT: usize;

    /// The request that lists the calls placed to `request.to` since `since`.
    fn list(
        &self,
        http: &Http,
        request: &DialRequest,
        since: DateTime<Utc>,
    ) -> reqwest::RequestBuilder;

    /// The calls of a listing.
    fn listed<'v>(&self, answer: &'v Value) -> Vec<&'v Value>;

    /// Which listed call is the attempt: by default the one whose echoed reference is the
    /// attempt's; those without one are candidates whose details may tell.
    fn identify(
        &self,
        request: &DialRequest,
        since: DateTime<Utc>,
        listed: &[&Value],
    ) -> Identified {
        let _ = since;
        let ours = Some((request.call_id, request.attempt));
        let mut candidates = Vec::new();
        for call in listed {
            let Some(report) = self.read_call(call) else {
                continue;
            };
            // Another attempt's call (the same attempt number refused for the vendor's
            // concurrency limit carries the same reference): never this one.
            if request
                .known_provider_ids
                .contains(&report.provider_call_id)
            {
                continue;
            }
            match report.reference {
                reference if reference == ours => {
                    return Identified::Found(report.provider_call_id);
                }
                Some(_) => {}
                None => candidates.push(report.provider_call_id),
            }
        }
        if candidates.is_empty() {
            Identified::None
        } else {
            Identified::Candidates(candidates)
        }
    }
}

/// A vendor's dialect as a [`CallProvider`].
pub struct Vendor<D> {
    dialect: D,
    http: Http,
}

impl<D: Dialect> Vendor<D> {
    pub fn new(dialect: D, config: &Config) -> Result<Self, ProviderError> {
        let base = config
            .ai_call_api_url
            .as_deref()
            .or(super::default_api_url(D::NAME))
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            dialect,
            http: Http {
                client: client(config.provider_timeout)?,
                base,
                key: config
                    .ai_call_api_key
                    .clone()
                    .unwrap_or_else(|| Secret::new("")),
                webhook_base: config
                    .webhook_base_url
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_owned(),
            },
        })
    }

    /// Sends the attempt once. A vendor without an idempotency key is never sent one
    /// attempt twice: an unknown outcome leaves the attempt open for a look-up.
    async fn send(&self, request: &DialRequest, rescues: u32) -> DialOutcome {
        let response = match self.dialect.dial(&self.http, request).send().await {
            Ok(response) => response,
            // Never connected: nothing was sent, so the attempt failed and may be retried.
            Err(err) if err.is_connect() => {
                return DialOutcome::Transient {
                    reason: format!("provider unreachable: {}", error_chain(&err)),
                    retry_after: None,
                };
            }
            Err(err) => return self.unknown(&error_chain(&err), rescues),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match read_bounded(response, MAX_ANSWER_BYTES).await {
            Ok(text) => text,
            Err(err) if status.is_success() => return self.unknown(&err, rescues),
            Err(_) => String::new(),
        };
        if status.is_success() {
            let answer = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
            return match self.dialect.answer(&answer) {
                Answered::Accepted(id) => {
                    let id = id.filter(|id| is_provider_call_id(id));
                    if id.is_none() {
                        tracing::warn!(%status, "provider accepted the call without a usable id");
                    }
                    DialOutcome::Accepted {
                        provider_call_id: id,
                    }
                }
                Answered::Refused(reason) => DialOutcome::Permanent {
                    reason: format!("provider answered {status}: {}", truncate(&reason)),
                },
            };
        }
        let reason = format!("provider answered {status}: {}", truncate(text.trim()));
        if self.dialect.is_rate_limit(status, &text) {
            return DialOutcome::RateLimited { retry_after };
        }
        // A 503 says the vendor did not take the request (overloaded, down for upkeep);
        // any other 5xx, or a 408, may come from a gateway in front of a vendor that did
        // place the call: never taken at its word, it is looked up like a lost answer.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return DialOutcome::Transient {
                reason,
                retry_after,
            };
        }
        if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
            return self.unknown(&reason, rescues);
        }
        DialOutcome::Permanent { reason }
    }

    fn unknown(&self, why: &str, rescues: u32) -> DialOutcome {
        DialOutcome::Unknown {
            reason: format!(
                "{why}; {} takes no idempotency key, so the call is looked up, never sent again",
                D::NAME
            ),
            resend_in: unknown_resend_delay(rescues),
        }
    }

    /// A rescue: the attempt may have been placed. Looks for the vendor's call by the
    /// attempt's reference and never sends the dial again.
    async fn find(&self, request: &DialRequest, rescues: u32) -> DialOutcome {
        // A margin for the clocks of the vendor and of this service.
        let since = request.claimed_at - chrono::Duration::minutes(2);
        let still_unknown = |why: String| DialOutcome::Unknown {
            reason: format!("looking the attempt up at {}: {why}", D::NAME),
            resend_in: unknown_resend_delay(rescues),
        };
        // A listing that fails, even with a "not found", tells nothing.
        let listing = match self
            .get(self.dialect.list(&self.http, request, since), false)
            .await
        {
            Ok(Some(listing)) => listing,
            Ok(None) => return still_unknown("an empty answer to the listing".into()),
            Err(why) => return still_unknown(why),
        };
        let listed = self.dialect.listed(&listing);
        // A full page may have left the attempt's call out: it cannot tell "not placed".
        let complete = listed.len() < D::LIST_LIMIT;
        let found = match self.dialect.identify(request, since, &listed) {
            Identified::Found(id) => Some(id),
            Identified::None => None,
            Identified::Candidates(ids) if ids.len() > MAX_CANDIDATES => {
                return still_unknown(format!(
                    "{} calls to the number to look at one by one",
                    ids.len()
                ));
            }
            Identified::Candidates(ids) => {
                let mut found = None;
                for id in ids {
                    match self.look_up_now(&id).await {
                        LookUp::Found(report)
                            if report.reference == Some((request.call_id, request.attempt)) =>
                        {
                            found = Some(report.provider_call_id);
                            break;
                        }
                        LookUp::Failed(why) => return still_unknown(why),
                        _ => {}
                    }
                }
                found
            }
        };
        match found {
            Some(id) if request.known_provider_ids.contains(&id) => {
                still_unknown("the only call found is another attempt's".into())
            }
            Some(id) if is_provider_call_id(&id) => {
                tracing::info!(provider_call_id = %id, "the lost dial was placed; its call found");
                DialOutcome::Accepted {
                    provider_call_id: Some(id),
                }
            }
            Some(_) => still_unknown("the vendor's id for it is not usable".into()),
            None if !complete => still_unknown(format!(
                "the listing is a full page of {} calls",
                D::LIST_LIMIT
            )),
            None if rescues >= NOT_FOUND_RESCUES => DialOutcome::Transient {
                reason: format!(
                    "the dial's answer was lost, and {} has no call for the attempt {} \
                     look-ups later: it was not placed",
                    D::NAME,
                    rescues
                ),
                retry_after: None,
            },
            None => still_unknown("no call for it yet".into()),
        }
    }

    /// GETs (or POSTs) a JSON answer: `Ok(None)` when `missing_is_none` and the vendor says
    /// it has no such call, `Err` for anything unclear.
    async fn get(
        &self,
        request: reqwest::RequestBuilder,
        missing_is_none: bool,
    ) -> Result<Option<Value>, String> {
        let response = request.send().await.map_err(|err| error_chain(&err))?;
        let status = response.status();
        if missing_is_none && self.dialect.not_found(status) {
            return Ok(None);
        }
        let text = read_bounded(response, MAX_LOOK_UP_BYTES).await?;
        if !status.is_success() {
            return Err(format!("answered {status}: {}", truncate(text.trim())));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| format!("answered {status} with no JSON: {err}"))
    }

    async fn look_up_now(&self, provider_call_id: &str) -> LookUp {
        match self
            .get(self.dialect.look_up(&self.http, provider_call_id), true)
            .await
        {
            Ok(None) => LookUp::NotFound,
            Ok(Some(call)) => match self.dialect.read_call(&call) {
                Some(report) if report.provider_call_id == provider_call_id => {
                    LookUp::Found(report)
                }
                Some(_) => LookUp::Failed("the look-up answered another call".into()),
                None => LookUp::NotFound,
            },
            Err(why) => LookUp::Failed(why),
        }
    }
}

impl<D: Dialect> CallProvider for Vendor<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn webhook_path(&self) -> &'static str {
        D::WEBHOOK_PATH
    }

    fn dial<'a>(&'a self, request: &'a DialRequest, rescues: u32) -> BoxFuture<'a, DialOutcome> {
        Box::pin(async move {
            if request.resend {
                self.find(request, rescues).await
            } else {
                self.send(request, rescues).await
            }
        })
    }

    fn verify_webhook(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Verification {
        let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        let public_url = format!("{}{path_and_query}", self.http.webhook_base);
        self.dialect.verify(&self.http, &public_url, headers, body)
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        self.dialect.read_webhook(body)
    }

    fn has_look_up(&self) -> bool {
        true
    }

    fn look_up<'a>(&'a self, provider_call_id: &'a str) -> BoxFuture<'a, LookUp> {
        Box::pin(self.look_up_now(provider_call_id))
    }

    fn webhook_proof(&self) -> &'static str {
        self.dialect.proof()
    }
}

/// A provider's id as one path segment of a look-up URL: percent-encoded, so an id (the
/// vendor's, or one a webhook named) can never reach another of the vendor's endpoints.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `AI_CALL_FROM_NUMBER` in E.164 (`+1 (415) 555-0100` sent as `+14155550100`).
pub fn from_number(config: &Config) -> Option<String> {
    let raw = config.ai_call_from_number.as_deref()?;
    Some(
        crate::domain::PhoneNumber::parse(raw)
            .map(|number| number.as_str().to_owned())
            .unwrap_or_else(|_| raw.to_owned()),
    )
}

/// A string field of a JSON object.
pub fn text<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// The reference a dial put in the metadata the vendor echoes.
pub fn reference_in(metadata: Option<&Value>) -> Option<(uuid::Uuid, i32)> {
    metadata
        .and_then(|m| m.get(super::REFERENCE_KEY))
        .and_then(Value::as_str)
        .and_then(super::parse_reference)
}

/// The metadata a dial sends: the client's, with the attempt's reference added.
pub fn metadata_with_reference(request: &DialRequest) -> serde_json::Map<String, Value> {
    let mut metadata = request.metadata.clone();
    metadata.insert(super::REFERENCE_KEY.into(), request.reference().into());
    metadata
}

/// A duration in seconds, bounded like the generic webhook's `durationSec`.
pub fn seconds(value: f64) -> Option<i32> {
    (value.is_finite() && (0.0..=7.0 * 24.0 * 3600.0).contains(&value))
        .then(|| value.round() as i32)
}

/// A vendor's free-text reason, bounded and without NUL.
pub fn reason(text: &str) -> String {
    text.chars().filter(|c| *c != '\0').take(2000).collect()
}

/// The vendor's id read from a webhook, checked like the generic one.
pub fn checked_id(id: Option<&str>) -> Result<String, WebhookError> {
    match id {
        Some(id) if is_provider_call_id(id) => Ok(id.to_owned()),
        Some(_) => Err(WebhookError::Invalid(
            "the call's id must hold 1 to 255 letters, digits and `_ - . : ~ + / = @`".into(),
        )),
        None => Err(WebhookError::Body("the call's id is missing".into())),
    }
}

/// A JSON webhook body as a value.
pub fn json_body(body: &[u8]) -> Result<Value, WebhookError> {
    serde_json::from_slice(body).map_err(|err| WebhookError::Body(err.to_string()))
}

/// The first value of header `name` as text.
pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Verification::Signed` without a delivery id when `valid`, else `Refused`.
pub fn signed_if(valid: bool) -> Verification {
    if valid {
        Verification::Signed { webhook_id: None }
    } else {
        Verification::Refused
    }
}

/// The calls of a listing: the array under `key` (or the answer itself when it is one).
pub fn calls_in<'v>(answer: &'v Value, key: &str) -> Vec<&'v Value> {
    answer
        .get(key)
        .unwrap_or(answer)
        .as_array()
        .map(|calls| calls.iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(segment("CA0123abc"), "CA0123abc");
        assert_eq!(segment("../../x"), "%2E%2E%2F%2E%2E%2Fx");
        assert_eq!(segment("a+b=c@d:e"), "a%2Bb%3Dc%40d%3Ae");
    }

    #[test]
    fn listings_are_found_under_their_key_or_bare() {
        let keyed = serde_json::json!({"calls": [1, 2]});
        assert_eq!(calls_in(&keyed, "calls").len(), 2);
        let bare = serde_json::json!([1, 2, 3]);
        assert_eq!(calls_in(&bare, "results").len(), 3);
        assert!(calls_in(&serde_json::json!({"error": "x"}), "calls").is_empty());
    }
}
