//! The simulator's routes, per dialect: the dial, the look-up of one call and the listing
//! of calls, at the paths each vendor serves them.

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, Request, Response, Route, get, handler,
    http::{Method, StatusCode},
    post,
    web::{Data, Json, Path},
};
use serde_json::{Value, json};

use super::{Answer, RecordedDial, Simulator, Status};
use crate::tools::sim::dialect::Dialect;

/// The simulator's HTTP routes for `dialect`, `/status` and `/health` beside.
pub(super) fn app(dialect: Dialect) -> impl IntoEndpoint<Endpoint: Endpoint> {
    let route = Route::new()
        .at("/status", get(status_route))
        .at("/health", get(health));
    match dialect {
        Dialect::Generic => route.at("/v1/calls", post(create_call)),
        Dialect::Twilio => route
            .at(
                "/2010-04-01/Accounts/:account/Calls.json",
                post(create_call).get(list_calls),
            )
            .at(
                "/2010-04-01/Accounts/:account/Calls/:sid",
                get(twilio_get_call),
            ),
        Dialect::Retell => route
            .at("/v2/create-phone-call", post(create_call))
            .at("/v2/get-call/:id", get(get_call))
            .at("/v3/list-calls", post(list_calls)),
        Dialect::Vapi => route
            .at("/call", post(create_call).get(list_calls))
            .at("/call/:id", get(get_call)),
        Dialect::Bland => route
            .at("/v1/calls", post(create_call).get(list_calls))
            .at("/v1/calls/:id", get(get_call)),
    }
    .boxed()
}

fn answer(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

/// Checks the caller's credentials (the refusal when they are wrong); counts the request.
fn authorize(sim: &Simulator, req: &Request, dial: bool) -> Option<Response> {
    let dialect = sim.config.dialect;
    let authorized = dialect.authorized(req.headers(), &sim.config.api_key)
        && (dialect != Dialect::Twilio
            || req
                .uri()
                .path()
                .contains(crate::tools::sim::TWILIO_ACCOUNT_SID));
    let mut state = sim.state.lock().expect("simulator state");
    if dial {
        state.status.received += 1;
    } else {
        state.status.look_ups += 1;
    }
    if authorized {
        return None;
    }
    state.status.unauthorized += 1;
    Some(answer(
        StatusCode::UNAUTHORIZED,
        &dialect.refusal(StatusCode::UNAUTHORIZED, "missing or wrong credentials"),
    ))
}

#[handler]
async fn create_call(req: &Request, body: poem::Body, sim: Data<&Simulator>) -> Response {
    let sim = sim.0;
    let dialect = sim.config.dialect;
    if let Some(refused) = authorize(sim, req, true) {
        return refused;
    }
    let body = body.into_bytes_limit(1024 * 1024).await.unwrap_or_default();
    sim.record(RecordedDial {
        path: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let dial = match dialect.parse_dial(req.headers(), &body) {
        Ok(dial) => dial,
        Err(problem) => {
            sim.state.lock().expect("simulator state").status.invalid += 1;
            return answer(
                StatusCode::BAD_REQUEST,
                &dialect.refusal(StatusCode::BAD_REQUEST, &problem),
            );
        }
    };
    let (outcome, pause) = sim.answer(dial);
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    match outcome {
        Answer::Lost => {
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            answer(
                StatusCode::GATEWAY_TIMEOUT,
                &dialect.refusal(StatusCode::GATEWAY_TIMEOUT, "lost"),
            )
        }
        Answer::Accepted(id) => {
            let Some(call) = sim.call(&id) else {
                return answer(StatusCode::ACCEPTED, &json!({"callId": id}));
            };
            let (status, body) = dialect.accepted(&call);
            answer(status, &body)
        }
        Answer::Refused(status, body, retry_after) => {
            let mut response = Response::builder()
                .status(status)
                .content_type("application/json");
            if let Some(after) = retry_after {
                response = response.header("retry-after", after.to_string());
            }
            response.body(body.to_string())
        }
    }
}

fn look_up(sim: &Simulator, req: &Request, id: &str) -> Response {
    if let Some(refused) = authorize(sim, req, false) {
        return refused;
    }
    let dialect = sim.config.dialect;
    match sim.call(id) {
        Some(call) => answer(StatusCode::OK, &dialect.call_object(&call)),
        None => {
            let (status, body) = dialect.not_found();
            answer(status, &body)
        }
    }
}

#[handler]
fn get_call(req: &Request, Path(id): Path<String>, sim: Data<&Simulator>) -> Response {
    look_up(sim.0, req, &id)
}

#[handler]
fn twilio_get_call(
    req: &Request,
    Path((_account, sid)): Path<(String, String)>,
    sim: Data<&Simulator>,
) -> Response {
    look_up(sim.0, req, sid.trim_end_matches(".json"))
}

/// The calls to one number (or, for Vapi, of one phone number since a time), in the
/// vendor's listing shape, newest first.
#[handler]
async fn list_calls(req: &Request, body: poem::Body, sim: Data<&Simulator>) -> Response {
    let sim = sim.0;
    if let Some(refused) = authorize(sim, req, false) {
        return refused;
    }
    let dialect = sim.config.dialect;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body: Value = if req.method() == Method::POST {
        let bytes = body.into_bytes_limit(64 * 1024).await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let number = match dialect {
        Dialect::Twilio => param("To"),
        Dialect::Bland => param("to_number"),
        Dialect::Retell => body
            .pointer("/filter_criteria/to_number/value")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let since = param("createdAtGe")
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&chrono::Utc));
    let mut calls: Vec<_> = {
        let state = sim.state.lock().expect("simulator state");
        state
            .calls
            .values()
            .filter(|call| number.as_ref().is_none_or(|n| *n == call.number))
            .filter(|call| since.is_none_or(|since| call.created_at >= since))
            .cloned()
            .collect()
    };
    calls.sort_by_key(|call| std::cmp::Reverse(call.created_at));
    calls.truncate(50);
    let objects: Vec<Value> = calls.iter().map(|c| dialect.call_object(c)).collect();
    let body = match dialect {
        Dialect::Twilio => {
            json!({"calls": objects, "page": 0, "page_size": 50, "next_page_uri": null})
        }
        Dialect::Retell => json!({"items": objects, "has_more": false}),
        // Bland's listing leaves the metadata out: its details tell.
        Dialect::Bland => {
            let trimmed: Vec<Value> = objects
                .into_iter()
                .map(|mut o| {
                    if let Some(o) = o.as_object_mut() {
                        o.remove("metadata");
                    }
                    o
                })
                .collect();
            json!({"total_count": trimmed.len(), "count": trimmed.len(), "calls": trimmed})
        }
        _ => Value::Array(objects),
    };
    answer(StatusCode::OK, &body)
}

#[handler]
fn status_route(sim: Data<&Simulator>) -> Json<Status> {
    Json(sim.0.status())
}

#[handler]
fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
