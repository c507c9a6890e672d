//! `GET /health`, for load balancers and container health checks.

use std::sync::Arc;

use poem::web::Data;

use poem_openapi::{
    ApiResponse, OpenApi,
    payload::{Json, PlainText},
};

use super::{ApiState, ApiTags, HEALTH_TIMEOUT, models::Health};
use crate::db;

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The process is up and the database answers.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The database does not answer; the process keeps trying and recovers by itself.
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Health
    ///
    /// `{"status": "ok"}` while the database answers within two seconds; 503 otherwise.
    /// No envelope: load balancers read it.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self, state: Data<&Arc<ApiState>>) -> HealthResponse {
        if db::ping(&state.pool, HEALTH_TIMEOUT).await {
            HealthResponse::Ok(Json(Health {
                status: "ok".into(),
            }))
        } else {
            HealthResponse::Unavailable(Json(Health {
                status: "unavailable".into(),
            }))
        }
    }

    /// Prometheus metrics
    ///
    /// The text exposition format: calls by status (`call_orchestrator_calls`), the cap,
    /// claim duration, how long due calls waited for a slot, the time from a wake-up (slot
    /// freed, call due) to the claim it led to, provider requests by outcome
    /// and their duration, webhooks by outcome, failed attempts by fate, expiries and
    /// rescues. Counters are this replica's own; the call counts are the database's. With
    /// `METRICS_REQUIRE_API_KEY` it asks for one of `API_KEYS`; with `METRICS_PORT` it is
    /// served on that port alone.
    #[oai(path = "/metrics", method = "get", operation_id = "prometheusMetrics")]
    async fn prometheus(&self, state: Data<&Arc<ApiState>>) -> PlainText<String> {
        PlainText(super::prometheus_text(state.0).await)
    }
}
