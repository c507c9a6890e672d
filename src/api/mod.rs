//! The HTTP API: poem-openapi routes, the OpenAPI document, and the error envelope.

mod calls;
mod error;
mod health;
pub mod models;

use std::{sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, Request, Response, Route, http::header,
    middleware::Tracing,
};
use poem_openapi::{OpenApiService, Tags};
use sqlx::PgPool;

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
}

#[derive(Tags)]
pub enum ApiTags {
    /// Creating and following calls.
    Calls,
    /// Health and counts, for operators and load balancers.
    Operations,
}

/// The OpenAPI service: the routes and their document.
pub fn service(state: Arc<ApiState>) -> OpenApiService<(calls::CallsApi, health::HealthApi), ()> {
    OpenApiService::new(
        (
            calls::CallsApi {
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
         bad request, and nothing written.",
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
        service(Arc::new(ApiState {
            pool,
            max_concurrent_calls: 0,
        }))
        .spec_yaml()
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
    let api = service(state);
    let spec_json = api.spec_endpoint();
    let spec_yaml = api.spec_endpoint_yaml();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec_json)
        .at("/openapi.yaml", spec_yaml)
        .nest("/docs", docs)
        .around(limit_body)
        .catch_all_error(error::render)
        .with(Tracing)
        .into_endpoint()
}

/// Reads the body up front with a per-route limit, so that an oversized body is a 413
/// whether or not it declares its length.
async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let limit = if req.uri().path() == "/api/v1/calls/batch" {
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
        return Err(poem::Error::from_status(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    let body = req
        .take_body()
        .into_bytes_limit(limit)
        .await
        .map_err(poem::Error::from)?;
    req.set_body(body);
    next.call(req).await.map(poem::IntoResponse::into_response)
}
