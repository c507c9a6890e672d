//! The HTTP API: poem-openapi routes, the OpenAPI document, and the error envelope.

mod access_log;
mod calls;
mod campaigns;
mod error;
mod event_endpoints;
mod health;
mod idempotency;
pub mod listener;
pub mod models;
mod requests;
mod suppressions;
mod webhooks;

use std::{sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route,
    http::{StatusCode, header},
};
use poem_openapi::{OpenApiService, Tags};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{
    config::Config,
    db::{CreateBatcher, Wakeup, WebhookBatcher},
    domain::{WebhookTokens, schedule::Rules},
    provider::{CallProvider, Verification},
};

pub use calls::{MAX_BATCH, MAX_LIMIT};
pub use error::ApiError;
pub use suppressions::check_reason;
pub use webhooks::WebhookSignature;

/// Largest body of the batch route: 1000 calls with room for sizeable metadata.
pub const MAX_BATCH_BODY: usize = 20 * 1024 * 1024;
/// Largest body of every other route: one call with the largest metadata allowed.
pub const MAX_BODY: usize = 64 * 1024;
/// How long `/health` waits for the database.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest path and query accepted (hyper itself answers 414, without a body, past 64 KiB).
pub const MAX_URI: usize = 8 * 1024;

/// Who sent a request, as far as Idempotency-Keys are concerned: the SHA-256 of its API
/// key, or empty when the service runs without `API_KEYS`. Set by the guard.
#[derive(Clone, Debug, Default)]
pub struct ClientScope(pub Vec<u8>);

/// What the handlers share.
pub struct ApiState {
    pub pool: PgPool,
    /// The calling window, time zones and daily limit: when a new call falls due, and the
    /// time zones each call shows.
    pub rules: Rules,
    /// `MAX_CONCURRENT_CALLS`, reported by the metrics route.
    pub max_concurrent_calls: u32,
    /// SHA-256 of each of `API_KEYS`, computed once; empty: no authentication.
    pub api_key_digests: Vec<[u8; 32]>,
    /// The provider's dialect: its webhook route, signature scheme and body.
    pub provider: Arc<dyn CallProvider>,
    /// Checks the token of a webhook's URL.
    pub tokens: WebhookTokens,
    /// The writers that requests hand their work to.
    pub writers: Writers,
    /// Requests handled at once (`HTTP_MAX_IN_FLIGHT`), the provider's webhooks apart.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The provider's webhooks handled at once, apart from the rest: a burst of calls ending
    /// together never turns clients away, nor a busy client the webhooks. As many as
    /// `HTTP_MAX_CONNECTIONS`, so that in practice a webhook waits for a connection rather
    /// than being answered 503: a provider may never send it again.
    pub webhooks_in_flight: Arc<tokio::sync::Semaphore>,
    /// How long a client has to send a request body (`HTTP_READ_TIMEOUT`).
    pub read_timeout: Duration,
    /// `/metrics` asks for an API key (`METRICS_REQUIRE_API_KEY`).
    pub metrics_need_key: bool,
    /// `/metrics` is served on a port of its own, not here (`METRICS_PORT`).
    pub metrics_elsewhere: bool,
    /// `EVENT_SECRET_KEY`: makes the secrets of event endpoints.
    pub event_keys: crate::domain::EventKeys,
    /// `EVENT_ALLOW_PRIVATE_URLS`.
    pub event_allow_private: bool,
}

/// The background writers of the API, started by `app` (see `app::api_writers`).
pub struct Writers {
    /// Tells the dispatchers about new calls.
    pub wakeup: Wakeup,
    /// Stores creates (without an Idempotency-Key) that arrive together in one statement.
    pub creates: CreateBatcher,
    /// Applies webhooks that arrive together in one transaction.
    pub webhooks: WebhookBatcher,
}

impl ApiState {
    /// The state from the configuration and what `app` started; starts nothing itself.
    pub fn new(
        config: &Config,
        pool: PgPool,
        tokens: WebhookTokens,
        provider: Arc<dyn CallProvider>,
        writers: Writers,
    ) -> Self {
        Self {
            pool,
            rules: config.schedule_rules(),
            max_concurrent_calls: config.max_concurrent_calls,
            api_key_digests: config
                .api_key_list()
                .iter()
                .map(|key| digest(key.expose()))
                .collect(),
            provider,
            tokens,
            writers,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.http_max_in_flight as usize,
            )),
            webhooks_in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.http_max_connections as usize,
            )),
            read_timeout: config.http_read_timeout,
            metrics_need_key: config.metrics_require_api_key,
            metrics_elsewhere: config.metrics_port.is_some(),
            event_keys: config.event_keys(),
            event_allow_private: config.event_allow_private_urls,
        }
    }
}

#[derive(Tags)]
pub enum ApiTags {
    /// Creating and following calls.
    Calls,
    /// Health and counts, for operators and load balancers.
    Operations,
    /// Called by the AI call provider.
    Webhooks,
    /// The do-not-call list: numbers that are never dialed.
    Suppressions,
    /// Campaigns: calls grouped under one cap, priority, calling window and retry policy,
    /// paused, resumed and cancelled as one.
    Campaigns,
    /// Events for clients: signed, retried notices of how calls and campaigns ended, sent
    /// to the endpoints clients register.
    Events,
}

/// The OpenAPI service: the routes and their document. The handlers find the state as
/// request data (see [`app`]), so the document needs none.
pub fn service() -> OpenApiService<
    (
        calls::CallsApi,
        campaigns::CampaignsApi,
        event_endpoints::EventEndpointsApi,
        suppressions::SuppressionsApi,
        webhooks::WebhooksApi,
        health::HealthApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            calls::CallsApi,
            campaigns::CampaignsApi,
            event_endpoints::EventEndpointsApi,
            suppressions::SuppressionsApi,
            webhooks::WebhooksApi,
            health::HealthApi,
        ),
        "call-orchestrator",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Places AI phone calls on behalf of its clients: a call is created over this API, \
         stored in PostgreSQL, dialed through the AI call provider under a global cap on \
         calls in progress (never two at once to one number), retried with backoff, and \
         followed to its end through the provider's webhooks.\n\n\
         Every success is `{\"success\": true, \"data\": …}`; every failure is \
         `{\"success\": false, \"error\": {\"code\", \"message\"}}` with a 4xx status for a \
         bad request, and nothing written.\n\n\
         When the service runs with `API_KEYS`, every `/api/v1` route but the provider's \
         webhook needs `Authorization: Bearer <key>`; without one it answers 401.",
    )
}

/// The OpenAPI document as YAML, as served at `/openapi.yaml` and checked in as `openapi.yaml`.
pub fn openapi_yaml() -> String {
    service().spec_yaml()
}

/// The whole HTTP application: API, OpenAPI document, Swagger UI, body limits, error envelope.
pub fn app(state: Arc<ApiState>) -> impl Endpoint<Output = Response> {
    let api = service();
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .nest("/docs", docs)
        .around({
            let state = state.clone();
            move |next, req| guard(state.clone(), next, req)
        })
        .data(state)
        .catch_all_error(error::render)
        .around(access_log::access_log)
        .into_endpoint()
}

/// Runs before every route, in this order: a bound on the requests in flight (the
/// webhooks' apart from the rest); the API key (`API_KEYS`), checked before a byte of the
/// body is read; the body, read up front within a per-route limit (so that an oversized
/// body is a 413 whether or not it declares its length) and a time limit, refused if it
/// holds U+0000; and webhook signatures, verified against the exact bytes received.
async fn guard<E: Endpoint>(
    state: Arc<ApiState>,
    next: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let is_webhook = path == state.provider.webhook_path();
    let in_flight = if is_webhook {
        &state.webhooks_in_flight
    } else {
        &state.in_flight
    };
    let Ok(_in_flight) = in_flight.clone().try_acquire_owned() else {
        let mut response = fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            "the service is handling as many requests as it takes at once; retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(response);
    };
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return Ok(fail(
            StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            &format!("the path and query may hold at most {MAX_URI} bytes"),
        ));
    }
    let is_metrics = path == "/metrics";
    if is_metrics && state.metrics_elsewhere {
        return Ok(fail(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such route: /metrics is served on METRICS_PORT",
        ));
    }
    let needs_key = !state.api_key_digests.is_empty()
        // The providers' webhook routes prove their origin in their own way (and the routes
        // of the dialects not configured answer 404, not 401).
        && ((path.starts_with("/api/v1/") && !path.starts_with("/api/v1/callbacks/"))
            || (is_metrics && state.metrics_need_key));
    if needs_key {
        let Some(key) = known_key(&state, req.headers()) else {
            return Ok(unauthorized());
        };
        req.extensions_mut().insert(ClientScope(key.to_vec()));
    }
    let limit = if path == "/api/v1/calls/batch"
        || path == "/api/v1/suppressions/batch"
        || (path.starts_with("/api/v1/campaigns/") && path.ends_with("/calls"))
    {
        MAX_BATCH_BODY
    } else {
        MAX_BODY
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let reading = req.take_body().into_bytes_limit(limit);
    let body = match tokio::time::timeout(state.read_timeout, reading).await {
        Ok(body) => body.map_err(poem::Error::from)?,
        Err(_) => {
            return Ok(fail(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "the request body did not arrive in time",
            ));
        }
    };
    if holds_nul(&body) {
        return Ok(fail(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "the request body holds U+0000, which no field may hold",
        ));
    }
    if is_webhook {
        let verification = state
            .provider
            .verify_webhook(req.uri(), req.headers(), &body);
        if verification == Verification::Refused {
            crate::metrics::webhook("bad_signature");
            return Ok(refuse(
                "INVALID_SIGNATURE",
                "the webhook signature is missing, wrong or older than 5 minutes",
            ));
        }
        req.extensions_mut().insert(WebhookSignature(verification));
    }
    req.set_body(body);
    next.call(req).await.map(poem::IntoResponse::into_response)
}

/// The digest of the request's API key, when it presents one of `API_KEYS`.
fn known_key(state: &ApiState, headers: &header::HeaderMap) -> Option<[u8; 32]> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)?;
    let key = digest(presented);
    // Compare digests, in constant time, so the keys leak nothing through timing.
    let found = state.api_key_digests.iter().fold(false, |found, known| {
        found | bool::from(subtle::ConstantTimeEq::ct_eq(&key[..], &known[..]))
    });
    found.then_some(key)
}

fn unauthorized() -> Response {
    refuse(
        "UNAUTHORIZED",
        "send `Authorization: Bearer <key>` with one of the service's API keys",
    )
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Whether a body holds U+0000, raw or as a JSON escape (`\u0000`): PostgreSQL cannot store
/// it in text or jsonb, and no field of this API has a use for it. A backslash escapes the
/// byte after it, so an escaped backslash followed by `u0000` is text, not a NUL.
fn holds_nul(body: &[u8]) -> bool {
    if body.contains(&0) {
        return true;
    }
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if body.get(i + 1) == Some(&b'u')
                && body
                    .get(i + 2..i + 6)
                    .is_some_and(|hex| hex.iter().all(|b| *b == b'0'))
            {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

fn digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(key.as_bytes()));
    out
}

fn fail(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = error::envelope(code, message, Vec::new()).into_response();
    response.set_status(status);
    response
}

fn refuse(code: &str, message: &str) -> Response {
    fail(StatusCode::UNAUTHORIZED, code, message)
}

/// The Prometheus text, as `GET /metrics` serves it on `PORT` or on `METRICS_PORT`.
pub async fn prometheus_text(state: &ApiState) -> String {
    let counts = crate::db::count_by_status(&state.pool).await.ok();
    let pending = crate::db::pending_deliveries(&state.pool).await.ok();
    crate::metrics::render(counts.as_deref(), pending, state.max_concurrent_calls)
}

/// The listener of `METRICS_PORT`: `GET /metrics` and nothing else, behind one of
/// `API_KEYS` with `METRICS_REQUIRE_API_KEY`, as on `PORT`.
pub fn metrics_app(state: Arc<ApiState>) -> impl Endpoint<Output = Response> {
    Route::new()
        .at(
            "/metrics",
            poem::get(poem::endpoint::make(move |req: Request| {
                let state = state.clone();
                async move {
                    let needs_key = state.metrics_need_key && !state.api_key_digests.is_empty();
                    if needs_key && known_key(&state, req.headers()).is_none() {
                        return unauthorized();
                    }
                    prometheus_text(&state).await.into_response()
                }
            })),
        )
        .into_endpoint()
        .map_to_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_raw_and_escaped_but_not_in_escaped_backslashes() {
        assert!(holds_nul(b"{\"a\": \"x\0y\"}"));
        assert!(holds_nul(br#"{"k\u0000": null}"#));
        assert!(holds_nul(br#"{"a": "\u0000"}"#));
        assert!(!holds_nul(br#"{"a": "\\u0000"}"#));
        assert!(!holds_nul(br#"{"a": "\u0001 \n \"q\""}"#));
        assert!(!holds_nul(b"{\"a\": \"\\\\\"}"));
        assert!(!holds_nul(b"trailing backslash \\"));
    }

    #[test]
    fn bearer_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("bearer k1"), Some("k1"));
        assert_eq!(bearer_token("BEARER  k1 "), Some("k1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
