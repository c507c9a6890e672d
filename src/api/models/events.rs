//! The JSON shapes of event endpoints and their deliveries.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::{Pagination, Text};
use crate::{
    db,
    domain::{self, DeliveryStatus},
};

/// An endpoint to register: where events are sent and which.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEventEndpointRequest {
    /// `https` URL (`http`, loopback and private addresses only with
    /// `EVENT_ALLOW_PRIVATE_URLS`), at most 2048 characters.
    pub url: Text,
    /// Event types (`call.completed`, `call.failed`, `call.expired`, `call.cancelled`,
    /// `call.attempt_failed`, `campaign.completed`), or `["*"]` for all.
    pub events: Vec<Text>,
    /// For people, at most 500 characters.
    pub description: Option<Text>,
    /// Whether events are sent to it (default true).
    pub enabled: Option<bool>,
}

/// An endpoint that receives events.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventEndpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives, or `["*"]`.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Disabled: no new deliveries are made to it, and its pending ones wait.
    pub enabled: bool,
    /// After a rotation, until when the previous secret signs each delivery too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EventEndpoint {
    pub fn of(endpoint: domain::Endpoint) -> Self {
        let now = Utc::now();
        Self {
            id: endpoint.id,
            url: endpoint.url,
            events: endpoint.subscription.to_list(),
            description: endpoint.description,
            enabled: endpoint.enabled,
            previous_secret_expires_at: endpoint
                .previous
                .map(|(_, until)| until)
                .filter(|until| *until > now),
            created_at: endpoint.created_at,
            updated_at: endpoint.updated_at,
        }
    }
}

/// An endpoint with its signing secret, shown only when it is made (create, rotation).
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventEndpointWithSecret {
    #[oai(flatten)]
    pub endpoint: EventEndpoint,
    /// The Standard Webhooks secret (`whsec_…`) every delivery is signed with. Keep it:
    /// it is not shown again.
    pub secret: String,
}

/// One endpoint.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventEndpointEnvelope {
    /// Always true.
    pub success: bool,
    pub data: EventEndpoint,
}

/// One endpoint with its new secret.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventEndpointSecretEnvelope {
    /// Always true.
    pub success: bool,
    pub data: EventEndpointWithSecret,
}

/// A page of endpoints, oldest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventEndpointPage {
    /// Always true.
    pub success: bool,
    pub data: Vec<EventEndpoint>,
    pub pagination: Pagination,
}

/// Where a delivery stands: `PENDING` (waiting for its first or next try, or being tried),
/// `DELIVERED` (a 2xx came), `FAILED` (every try of the schedule failed).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatusName {
    Pending,
    Delivered,
    Failed,
}

impl From<DeliveryStatus> for DeliveryStatusName {
    fn from(status: DeliveryStatus) -> Self {
        match status {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Delivered => Self::Delivered,
            DeliveryStatus::Failed => Self::Failed,
        }
    }
}

impl From<DeliveryStatusName> for DeliveryStatus {
    fn from(status: DeliveryStatusName) -> Self {
        match status {
            DeliveryStatusName::Pending => Self::Pending,
            DeliveryStatusName::Delivered => Self::Delivered,
            DeliveryStatusName::Failed => Self::Failed,
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventDelivery {
    pub id: Uuid,
    /// The event's id: the `webhook-id` of every try, the same for every endpoint.
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    /// `call.completed`, `call.failed`, …
    pub event_type: String,
    /// The call the event is about, if it is about a call.
    pub call_id: Option<Uuid>,
    /// The campaign the event is about, or the call's campaign.
    pub campaign_id: Option<Uuid>,
    pub status: DeliveryStatusName,
    /// Tries made so far.
    pub attempts: i32,
    /// The status code of the last answer, if one came.
    pub last_status_code: Option<i32>,
    /// What went wrong with the last try, if it failed.
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// `PENDING`: when it is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the change the event reports happened.
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl EventDelivery {
    pub fn of(d: db::Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            event_type: d.event_type.as_str().to_owned(),
            call_id: d.call_id,
            campaign_id: d.campaign_id,
            status: d.status.into(),
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            occurred_at: d.occurred_at,
            created_at: d.created_at,
        }
    }
}

/// One delivery.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventDeliveryEnvelope {
    /// Always true.
    pub success: bool,
    pub data: EventDelivery,
}

/// A page of an endpoint's deliveries, newest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventDeliveryPage {
    /// Always true.
    pub success: bool,
    pub data: Vec<EventDelivery>,
    pub pagination: Pagination,
}
