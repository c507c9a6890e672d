//! `/api/v1/event-endpoints` and `/api/v1/event-deliveries`: where clients register to be
//! told of their calls' outcomes, and what became of each event sent.

use std::{net::IpAddr, sync::Arc, time::Duration};

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ApiState, ApiTags,
    error::ApiError,
    models::{
        CreateEventEndpointRequest, DeliveryStatusName, EventDelivery, EventDeliveryEnvelope,
        EventDeliveryPage, EventEndpoint, EventEndpointEnvelope, EventEndpointPage,
        EventEndpointSecretEnvelope, EventEndpointWithSecret,
    },
    requests::{page_and_limit, pagination},
};
use crate::{
    db::{self, EndpointChange, NewEndpoint},
    domain::{
        Endpoint, EventKeys, FieldError, SecretRef, Subscription,
        event_url::{self, Refused},
    },
};

/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// The fields a PATCH may change.
const FIELDS: [&str; 4] = ["url", "events", "description", "enabled"];
/// How long a name may take to resolve when an endpoint is registered.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the previous secret keeps signing after a rotation, by default and at most.
const KEEP_PREVIOUS: Duration = Duration::from_secs(24 * 3600);
const MAX_KEEP_PREVIOUS: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(ApiResponse)]
pub enum CreatedEndpoint {
    /// The endpoint was registered; its secret is shown this once.
    #[oai(status = 201)]
    Created(Json<EventEndpointSecretEnvelope>),
}

pub struct EventEndpointsApi;

fn endpoint_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(super::error::envelope(
        "ENDPOINT_NOT_FOUND",
        format!("no event endpoint has the id {id}"),
        Vec::new(),
    ))
}

fn answer(endpoint: Endpoint) -> Json<EventEndpointEnvelope> {
    Json(EventEndpointEnvelope {
        success: true,
        data: EventEndpoint::of(endpoint),
    })
}

/// The endpoint with the secret it signs with now.
fn with_secret(
    keys: &EventKeys,
    endpoint: Endpoint,
) -> Result<Json<EventEndpointSecretEnvelope>, ApiError> {
    let secret = keys
        .secret(&endpoint.secret.key_id, &endpoint.secret.salt)
        .map_err(|err| ApiError::internal(&err))?;
    Ok(Json(EventEndpointSecretEnvelope {
        success: true,
        data: EventEndpointWithSecret {
            endpoint: EventEndpoint::of(endpoint),
            secret: secret.whsec(),
        },
    }))
}

/// A new secret's key and salt; 409 when `EVENT_SECRET_KEY` is not set.
fn new_secret(keys: &EventKeys) -> Result<SecretRef, ApiError> {
    let key_id = keys.current_id().map_err(|_| {
        ApiError::conflict(
            "EVENTS_NOT_CONFIGURED",
            "the service runs without EVENT_SECRET_KEY, so it cannot sign events; \
             an operator must set it before endpoints can be registered or rotated",
        )
    })?;
    Ok(SecretRef {
        key_id: key_id.to_owned(),
        salt: EventKeys::new_salt(),
    })
}

/// Checks a URL as sent, and what its host resolves to now. A name that does not resolve
/// is accepted (its deliveries fail, visibly, until it does): DNS may be down for a
/// moment, and the check is made again at every try anyway.
async fn checked_url(text: &str, allow_private: bool) -> Result<String, FieldError> {
    let url = event_url::check_url(text, allow_private).map_err(|e| FieldError::new("url", e))?;
    if let Some(url::Host::Domain(name)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((name.to_owned(), port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            let refused: Option<(IpAddr, Refused)> = addrs
                .map(|a| a.ip())
                .find_map(|ip| event_url::refused(ip, allow_private).map(|r| (ip, r)));
            if let Some((ip, refusal)) = refused {
                return Err(FieldError::new(
                    "url",
                    format!("`url`: {name} resolves to {ip}, {refusal}"),
                ));
            }
        }
    }
    Ok(url.to_string())
}

fn checked_description(text: Option<String>) -> Result<Option<String>, FieldError> {
    let text = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if text
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        return Err(FieldError::new(
            "description",
            format!("`description` must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(text)
}

fn checked_events(events: &[String]) -> Result<Subscription, FieldError> {
    Subscription::parse(events).map_err(|e| FieldError::new("events", e))
}

/// A PATCH body, checked: only known fields, each of the right type and valid.
async fn change_of(body: &Value, allow_private: bool) -> Result<EndpointChange, Vec<FieldError>> {
    let Some(patch) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            "the body must be a JSON object with any of url, events, description, enabled",
        )]);
    };
    if patch.is_empty() {
        return Err(vec![FieldError::new(
            "",
            format!("nothing to change: send one of {}", FIELDS.join(", ")),
        )]);
    }
    let mut errors = Vec::new();
    if let Some(other) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let shown: String = other.chars().take(64).collect();
        errors.push(FieldError::new(
            shown.clone(),
            format!(
                "`{shown}` is not a field a PATCH changes ({})",
                FIELDS.join(", ")
            ),
        ));
        return Err(errors);
    }
    let mut change = EndpointChange::default();
    match patch.get("url") {
        None => {}
        Some(Value::String(url)) => match checked_url(url, allow_private).await {
            Ok(url) => change.url = Some(url),
            Err(e) => errors.push(e),
        },
        Some(_) => errors.push(FieldError::new("url", "`url` must be a string")),
    }
    match patch.get("events") {
        None => {}
        Some(Value::Array(items)) => {
            let texts: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect();
            match texts.map(|t| checked_events(&t)) {
                Some(Ok(subscription)) => change.subscription = Some(subscription),
                Some(Err(e)) => errors.push(e),
                None => errors.push(FieldError::new(
                    "events",
                    "`events` must be a list of strings",
                )),
            }
        }
        Some(_) => errors.push(FieldError::new(
            "events",
            "`events` must be a list of strings",
        )),
    }
    match patch.get("description") {
        None => {}
        Some(Value::Null) => change.description = Some(None),
        Some(Value::String(text)) => match checked_description(Some(text.clone())) {
            Ok(text) => change.description = Some(text),
            Err(e) => errors.push(e),
        },
        Some(_) => errors.push(FieldError::new(
            "description",
            "`description` must be a string or null",
        )),
    }
    match patch.get("enabled") {
        None => {}
        Some(Value::Bool(enabled)) => change.enabled = Some(*enabled),
        Some(_) => errors.push(FieldError::new(
            "enabled",
            "`enabled` must be true or false",
        )),
    }
    if errors.is_empty() {
        Ok(change)
    } else {
        Err(errors)
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Events")]
impl EventEndpointsApi {
    /// Register an event endpoint
    ///
    /// From now on every event of the types named is sent to `url` as a signed POST
    /// (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`), retried
    /// for about a day and a half until it is answered with a 2xx. The answer holds the
    /// signing secret (`whsec_…`), shown this once. 409 `EVENTS_NOT_CONFIGURED` when the
    /// service runs without `EVENT_SECRET_KEY`.
    #[oai(
        path = "/event-endpoints",
        method = "post",
        operation_id = "createEventEndpoint"
    )]
    async fn create(
        &self,
        state: Data<&Arc<ApiState>>,
        body: Json<CreateEventEndpointRequest>,
    ) -> Result<CreatedEndpoint, ApiError> {
        let req = body.0;
        let mut errors = Vec::new();
        let url = checked_url(&req.url.0, state.event_allow_private)
            .await
            .map_err(|e| errors.push(e))
            .ok();
        let events: Vec<String> = req.events.into_iter().map(|t| t.0).collect();
        let subscription = checked_events(&events).map_err(|e| errors.push(e)).ok();
        let description = checked_description(req.description.map(|t| t.0))
            .map_err(|e| errors.push(e))
            .ok()
            .flatten();
        let (Some(url), Some(subscription), true) = (url, subscription, errors.is_empty()) else {
            return Err(ApiError::validation(errors));
        };
        let secret = new_secret(&state.event_keys)?;
        let endpoint = db::create_endpoint(
            &state.pool,
            &NewEndpoint {
                url: &url,
                subscription: &subscription,
                description: description.as_deref(),
                enabled: req.enabled.unwrap_or(true),
                secret: &secret,
            },
        )
        .await?;
        tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, "event endpoint registered");
        Ok(CreatedEndpoint::Created(with_secret(
            &state.event_keys,
            endpoint,
        )?))
    }

    /// List event endpoints
    ///
    /// Oldest first. Secrets are never shown here.
    #[oai(
        path = "/event-endpoints",
        method = "get",
        operation_id = "listEventEndpoints"
    )]
    async fn list(
        &self,
        state: Data<&Arc<ApiState>>,
        /// Page number, from 1 (default 1).
        page: Query<Option<i64>>,
        /// Endpoints per page, 1 to 100 (default 10).
        limit: Query<Option<i64>>,
    ) -> Result<Json<EventEndpointPage>, ApiError> {
        let (page, limit) = page_and_limit(page.0, limit.0)?;
        let (endpoints, total) = db::list_endpoints(&state.pool, page, limit).await?;
        Ok(Json(EventEndpointPage {
            success: true,
            data: endpoints.into_iter().map(EventEndpoint::of).collect(),
            pagination: pagination(page, limit, total),
        }))
    }

    /// Get an event endpoint
    #[oai(
        path = "/event-endpoints/:id",
        method = "get",
        operation_id = "getEventEndpoint"
    )]
    async fn get(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<EventEndpointEnvelope>, ApiError> {
        let endpoint = db::get_endpoint(&state.pool, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        Ok(answer(endpoint))
    }

    /// Change an event endpoint
    ///
    /// Any of `url`, `events`, `description` (`null` removes it) and `enabled`, checked as
    /// on registration. Deliveries not yet made go to the endpoint as it is when they are
    /// tried; a disabled endpoint gets no new deliveries, and its pending ones wait until
    /// it is enabled again.
    #[oai(
        path = "/event-endpoints/:id",
        method = "patch",
        operation_id = "updateEventEndpoint"
    )]
    async fn patch(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        body: Json<Value>,
    ) -> Result<Json<EventEndpointEnvelope>, ApiError> {
        let change = change_of(&body.0, state.event_allow_private)
            .await
            .map_err(ApiError::validation)?;
        let endpoint = db::update_endpoint(&state.pool, id.0, &change)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        tracing::info!(endpoint_id = %endpoint.id, "event endpoint updated");
        Ok(answer(endpoint))
    }

    /// Remove an event endpoint
    ///
    /// With its deliveries, sent or not. Answers the endpoint as it was.
    #[oai(
        path = "/event-endpoints/:id",
        method = "delete",
        operation_id = "deleteEventEndpoint"
    )]
    async fn delete(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<EventEndpointEnvelope>, ApiError> {
        let endpoint = db::delete_endpoint(&state.pool, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        tracing::info!(endpoint_id = %endpoint.id, "event endpoint removed");
        Ok(answer(endpoint))
    }

    /// Rotate an endpoint's secret
    ///
    /// Answers the endpoint with its new secret, shown this once. The previous secret keeps
    /// signing every delivery too (a second signature in `webhook-signature`) for
    /// `keepPrevious` (default `24h`, at most `7d`; `0s` ends it at once, for a secret that
    /// leaked), so the client can switch without missing an event.
    #[oai(
        path = "/event-endpoints/:id/rotate-secret",
        method = "post",
        operation_id = "rotateEventEndpointSecret"
    )]
    async fn rotate(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        /// How long the previous secret keeps signing: a duration such as `24h` or `0s`.
        #[oai(name = "keepPrevious")]
        keep_previous: Query<Option<String>>,
    ) -> Result<Json<EventEndpointSecretEnvelope>, ApiError> {
        let keep = match keep_previous.0.as_deref() {
            None => KEEP_PREVIOUS,
            Some(text) => humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| *d <= MAX_KEEP_PREVIOUS)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "INVALID_PARAMETER",
                        "`keepPrevious` must be a duration such as 24h or 0s, at most 7d",
                    )
                })?,
        };
        let secret = new_secret(&state.event_keys)?;
        let until = (!keep.is_zero())
            .then(|| chrono::Utc::now() + chrono::Duration::from_std(keep).unwrap_or_default());
        let endpoint = db::rotate_secret(&state.pool, id.0, &secret, until)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        tracing::info!(endpoint_id = %endpoint.id, "event endpoint secret rotated");
        with_secret(&state.event_keys, endpoint)
    }

    /// List an endpoint's deliveries
    ///
    /// Newest first, optionally of one status: each event sent (or to be sent) to it, its
    /// tries, and the last answer.
    #[oai(
        path = "/event-endpoints/:id/deliveries",
        method = "get",
        operation_id = "listEventDeliveries"
    )]
    async fn deliveries(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        /// Only deliveries in this status.
        status: Query<Option<DeliveryStatusName>>,
        /// Page number, from 1 (default 1).
        page: Query<Option<i64>>,
        /// Deliveries per page, 1 to 100 (default 10).
        limit: Query<Option<i64>>,
    ) -> Result<Json<EventDeliveryPage>, ApiError> {
        let (page, limit) = page_and_limit(page.0, limit.0)?;
        db::get_endpoint(&state.pool, id.0)
            .await?
            .ok_or_else(|| endpoint_not_found(id.0))?;
        let (deliveries, total) =
            db::list_deliveries(&state.pool, id.0, status.0.map(Into::into), page, limit).await?;
        Ok(Json(EventDeliveryPage {
            success: true,
            data: deliveries.into_iter().map(EventDelivery::of).collect(),
            pagination: pagination(page, limit, total),
        }))
    }

    /// Send a delivery again
    ///
    /// Now, whatever its status, with the same `webhook-id` and body; should this try fail,
    /// the retry schedule starts afresh.
    #[oai(
        path = "/event-deliveries/:id/retry",
        method = "post",
        operation_id = "retryEventDelivery"
    )]
    async fn retry(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Json<EventDeliveryEnvelope>, ApiError> {
        let delivery = db::retry_delivery(&state.pool, id.0)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(super::error::envelope(
                    "DELIVERY_NOT_FOUND",
                    format!("no event delivery has the id {}", id.0),
                    Vec::new(),
                ))
            })?;
        tracing::info!(delivery_id = %delivery.id, "event delivery sent again on demand");
        Ok(Json(EventDeliveryEnvelope {
            success: true,
            data: EventDelivery::of(delivery),
        }))
    }
}
