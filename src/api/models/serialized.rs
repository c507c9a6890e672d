//! A JSON answer written by serde straight from the model, for the routes whose answers are
//! large or frequent (calls, pages of calls). poem-openapi's `Json` first builds the whole
//! answer as a `serde_json::Value` tree (a map per object) and then writes that tree out; for
//! a batch of a thousand calls that was half of the route's CPU time. The OpenAPI document is
//! the same: the schema is the model's own. Each model written this way derives `Serialize`
//! to the very JSON its `ToJSON` makes, which the tests below hold for every field.

use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};
use serde::Serialize;

/// The content type every JSON answer carries, as poem-openapi's `Json` sends it.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A JSON answer: `T`'s schema in the document, `T`'s `Serialize` on the wire.
pub struct Serialized<T>(pub T);

impl<T: Type + Send> Payload for Serialized<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for Serialized<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder().content_type(CONTENT_TYPE).body(body),
            // Our own models always serialize (string keys, finite numbers); should one not,
            // the answer is the 500 any failure gets, never a half-written body.
            Err(err) => crate::api::error::ApiError::internal(&err).into_response(),
        }
    }
}

impl<T: Type + Serialize + Send> ApiResponse for Serialized<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT_TYPE,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// `DateTime<Utc>` as poem-openapi writes it (`to_rfc3339`: `+00:00`, not `Z`).
pub(super) fn rfc3339<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339())
}

/// An optional `DateTime<Utc>` as poem-openapi writes it: null when absent.
pub(super) fn rfc3339_opt<S: serde::Serializer>(
    at: &Option<chrono::DateTime<chrono::Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};
    use poem_openapi::types::ToJSON;
    use uuid::Uuid;

    use super::super::*;

    fn calls() -> Vec<Call> {
        let at = Utc.with_ymd_and_hms(2025, 7, 25, 10, 0, 0).unwrap()
            + chrono::Duration::microseconds(123_456);
        let full = Call {
            id: Uuid::new_v4(),
            payload: Payload {
                to: "+966501234567".into(),
                script_id: "welcomeFlow".into(),
                metadata: [
                    (
                        "customerName".to_owned(),
                        serde_json::json!("John \"Doe\" <é>"),
                    ),
                    (
                        "nested".to_owned(),
                        serde_json::json!({"b": [1, 2.5, null], "a": true}),
                    ),
                ]
                .into(),
            },
            status: Status::InProgress,
            attempts: 2,
            provider_call_id: Some("ext-1".into()),
            last_error: Some("busy\nline".into()),
            next_attempt_at: Some(at),
            duration_sec: Some(31),
            created_at: at,
            updated_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            started_at: Some(at),
            completed_at: Some(at),
            not_before: Some(at),
            not_after: Some(at),
            timezone: Some("Asia/Riyadh".into()),
            time_zones: vec!["Asia/Riyadh".into()],
            campaign_id: Some(Uuid::new_v4()),
        };
        let empty = Call {
            payload: Payload {
                metadata: Default::default(),
                ..full.payload.clone()
            },
            status: Status::Pending,
            provider_call_id: None,
            last_error: None,
            next_attempt_at: None,
            duration_sec: None,
            started_at: None,
            completed_at: None,
            not_before: None,
            not_after: None,
            timezone: None,
            time_zones: vec!["America/New_York".into(), "America/Chicago".into()],
            campaign_id: None,
            ..full.clone()
        };
        let mut all = vec![full, empty];
        for status in [
            Status::Completed,
            Status::Failed,
            Status::Expired,
            Status::Cancelled,
        ] {
            all.push(Call {
                status,
                ..all[0].clone()
            });
        }
        all
    }

    fn same<T: serde::Serialize + ToJSON>(value: &T) {
        assert_eq!(
            serde_json::to_value(value).unwrap(),
            value.to_json().unwrap(),
            "serde and poem-openapi disagree"
        );
    }

    #[test]
    fn every_answer_written_by_serde_is_the_json_poem_openapi_writes() {
        for call in calls() {
            same(&call);
            same(&CallEnvelope::new(call));
        }
        same(&CallsEnvelope {
            success: true,
            data: calls(),
            skipped: vec![SkippedCall {
                index: 3,
                to: "+14155550100".into(),
                code: "NUMBER_SUPPRESSED".into(),
            }],
        });
        for pagination in [
            ListPagination {
                page: Some(2),
                limit: 10,
                total: Some(95),
                total_pages: Some(10),
                next_cursor: Some("77".into()),
            },
            ListPagination {
                page: None,
                limit: 10,
                total: None,
                total_pages: None,
                next_cursor: None,
            },
        ] {
            same(&CallPage {
                success: true,
                data: calls(),
                pagination,
            });
        }
    }
}
