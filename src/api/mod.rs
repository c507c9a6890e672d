//! The HTTP API: poem-openapi routes, the OpenAPI document, and the error envelope.

mod calls;
mod error;
mod health;
pub mod models;
mod webhooks;

use std::{sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route,
    http::{StatusCode, header},
    middleware::Tracing,
};
use poem_openapi::{OpenApiService, Tags};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{
    config::Config,
    domain::RetryPolicy,
    worker::{WEBHOOK_PATH, WorkerSettings},
};

pub use calls::{MAX_BATCH, MAX_LIMIT};
pub use error::ApiError;

/// Largest body of the batch route: 1000 calls with room for sizeable metadata.
pub const MAX_BATCH_BODY: usize = 20 * 1024 * 1024;
/// Largest body of every other route: one call with the largest metadata allowed.
pub const MAX_BODY: usize = 64 * 1024;
/// How long `/health` waits for the database.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
pub struct ApiState {
    pub pool: PgPool,
    /// `MAX_CONCURRENT_CALLS`, reported by the metrics route.
    pub max_concurrent_calls: u32,
    /// Applied to attempts that webhooks report failed.
    pub policy: RetryPolicy,
    /// SHA-256 of each of `API_KEYS`, computed once; empty: no authentication.
    pub api_key_digests: Vec<[u8; 32]>,
    /// One verifier per `WEBHOOK_SECRET` (several during a rotation); empty: unsigned.
    pub webhook_verifiers: Vec<standardwebhooks::Webhook>,
    /// Tells the dispatchers about new calls.
    pub wakeup: crate::db::Wakeup,
    /// Stores creates (without an Idempotency-Key) that arrive together in one statement.
    pub creates: crate::db::CreateBatcher,
    /// Applies webhooks that arrive together in one transaction.
    pub webhooks: crate::db::WebhookBatcher,
}

impl ApiState {
    pub fn new(config: &Config, pool: PgPool) -> Self {
        crate::metrics::handle();
        let settings = WorkerSettings::from_config(config);
        let policy = settings.policy;
        let batch_pool = pool.clone();
        // Up to four lanes, each holding one connection while it writes.
        let lanes = (config.db_max_connections as usize / 3).clamp(1, 4);
        let webhooks = crate::db::Batcher::start("webhook", lanes, 64, move |updates| {
            let pool = batch_pool.clone();
            async move {
                crate::db::apply_webhooks(&pool, &updates, |attempt| {
                    policy.after_failure(attempt as u32, None, fastrand::f64())
                })
                .await
            }
        });
        let batch_pool = pool.clone();
        let creates = crate::db::Batcher::start("create", lanes, 128, move |calls| {
            let pool = batch_pool.clone();
            async move { crate::db::create_each(&pool, &calls).await }
        });
        Self {
            wakeup: crate::db::Wakeup::spawn(pool.clone()),
            creates,
            webhooks,
            pool,
            max_concurrent_calls: config.max_concurrent_calls,
            policy: settings.policy,
            api_key_digests: config
                .api_key_list()
                .iter()
                .map(|key| digest(key.expose()))
                .collect(),
            webhook_verifiers: config
                .webhook_secret_list()
                .iter()
                .filter_map(|secret| standardwebhooks::Webhook::new(secret.expose()).ok())
                .collect(),
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
}

/// The OpenAPI service: the routes and their document.
pub fn service(
    state: Arc<ApiState>,
) -> OpenApiService<(calls::CallsApi, webhooks::WebhooksApi, health::HealthApi), ()> {
    OpenApiService::new(
        (
            calls::CallsApi {
                state: state.clone(),
            },
            webhooks::WebhooksApi {
                state: state.clone(),
            },
            health::HealthApi { state },
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
    // The document does not depend on the state; a pool that never connects will do, but
    // even an idle pool wants a Tokio runtime around it.
    let build = || {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://localhost/unused")
            .expect("a constant URL parses");
        service(Arc::new(ApiState::new(&Config::default(), pool))).spec_yaml()
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        return build();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    build()
}

/// The whole HTTP application: API, OpenAPI document, Swagger UI, body limits, error envelope.
pub fn app(state: Arc<ApiState>) -> impl Endpoint<Output = Response> {
    let api = service(state.clone());
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .nest("/docs", docs)
        .around(move |next, req| guard(state.clone(), next, req))
        .catch_all_error(error::render)
        .with(Tracing)
        .into_endpoint()
}

/// Runs before every route: reads the body up front with a per-route limit (so that an
/// oversized body is a 413 whether or not it declares its length), checks `API_KEYS`, and
/// verifies webhook signatures against the exact bytes received.
async fn guard<E: Endpoint>(
    state: Arc<ApiState>,
    next: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let limit = if path == "/api/v1/calls/batch" {
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
    let body = req
        .take_body()
        .into_bytes_limit(limit)
        .await
        .map_err(poem::Error::from)?;
    let is_webhook = path == WEBHOOK_PATH;
    if is_webhook && !state.webhook_verifiers.is_empty() {
        let verified = state
            .webhook_verifiers
            .iter()
            .any(|verifier| verifier.verify(&body, req.headers()).is_ok());
        if !verified {
            crate::metrics::webhook("bad_signature");
            return Ok(refuse(
                "INVALID_SIGNATURE",
                "the webhook signature is missing, wrong or older than 5 minutes",
            ));
        }
    }
    if path.starts_with("/api/v1/") && !is_webhook && !state.api_key_digests.is_empty() {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let allowed = presented.is_some_and(|key| {
            // Compare digests, in constant time, so the keys leak nothing through timing.
            let key = digest(key);
            state.api_key_digests.iter().fold(false, |found, known| {
                let diff = key
                    .iter()
                    .zip(known.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                found | (diff == 0)
            })
        });
        if !allowed {
            return Ok(refuse(
                "UNAUTHORIZED",
                "send `Authorization: Bearer <key>` with one of the service's API keys",
            ));
        }
    }
    req.set_body(body);
    next.call(req).await.map(poem::IntoResponse::into_response)
}

fn digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(key.as_bytes()));
    out
}

fn refuse(code: &str, message: &str) -> Response {
    let mut response = error::envelope(code, message, Vec::new()).into_response();
    response.set_status(StatusCode::UNAUTHORIZED);
    response
}
