//! Bad input of every kind, on every route: a 4xx with the envelope and a message a person
//! understands, never a 5xx, never a partial write.

mod common;

use common::{TestApp, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// One request: method, path, content type (None: no body), raw body, expected status, code.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

fn case(method: Method, path: &str, body: Option<&str>, status: u16, code: &'static str) -> Case {
    Case {
        method,
        path: path.to_owned(),
        content_type: body.map(|_| "application/json"),
        body: body.unwrap_or_default().as_bytes().to_vec(),
        status: StatusCode::from_u16(status).unwrap(),
        code,
    }
}

async fn run(app: &TestApp, cases: Vec<Case>) {
    let before = app.row_counts().await;
    for case in cases {
        let mut request = app.client.request(case.method.clone(), app.url(&case.path));
        if let Some(content_type) = case.content_type {
            request = request
                .header("content-type", content_type)
                .body(case.body.clone());
        }
        let (status, body) = common::read(request.send().await.unwrap()).await;
        let shown = String::from_utf8_lossy(&case.body[..case.body.len().min(120)]).into_owned();
        assert!(
            status.is_client_error(),
            "{} {} {shown}: {status} {body}",
            case.method,
            case.path
        );
        assert_eq!(
            (
                status,
                body["error"]["code"].as_str().unwrap_or("<no envelope>")
            ),
            (case.status, case.code),
            "{} {} {shown}: {body}",
            case.method,
            case.path
        );
        assert_error(status, &body, case.status, case.code);
    }
    assert_eq!(
        app.row_counts().await,
        before,
        "a refused request wrote something"
    );
}

#[tokio::test]
async fn create_refuses_bad_bodies() {
    let app = TestApp::spawn().await;
    use Method as M;
    let p = "/api/v1/calls";
    let long_script = format!(
        r#"{{"to": "+14155550100", "scriptId": "{}"}}"#,
        "a".repeat(129)
    );
    let big_metadata = format!(
        r#"{{"to": "+14155550100", "scriptId": "s", "metadata": {{"k": "{}"}}}}"#,
        "x".repeat(17 * 1024)
    );
    let deep = format!(
        r#"{{"to": "+14155550100", "scriptId": "s", "metadata": {{"a": {}1{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let mut cases = vec![
        case(M::POST, p, Some("{"), 400, "INVALID_BODY"),
        case(M::POST, p, Some(""), 400, "INVALID_BODY"),
        case(M::POST, p, Some("null"), 400, "INVALID_BODY"),
        case(M::POST, p, Some("[]"), 400, "INVALID_BODY"),
        case(M::POST, p, Some("\"+14155550100\""), 400, "INVALID_BODY"),
        case(M::POST, p, Some("{}"), 400, "INVALID_BODY"),
        case(
            M::POST,
            p,
            Some(r#"{"scriptId": "s"}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": 14155550100, "scriptId": "s"}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": ["s"]}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s", "metadata": [1]}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s", "metadata": "x"}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s", "extra": 1}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "14155550100", "scriptId": "s"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+1 415 555 0100 ext 2", "scriptId": "s"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+0", "scriptId": "s"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "", "scriptId": "s"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": ""}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "has space"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s'; DROP TABLE calls;--"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(M::POST, p, Some(&long_script), 400, "VALIDATION_ERROR"),
        case(M::POST, p, Some(&big_metadata), 400, "VALIDATION_ERROR"),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s", "metadata": {"a": "\u0000"}}"#),
            400,
            "INVALID_BODY",
        ),
        case(M::POST, p, Some(&deep), 400, "INVALID_BODY"),
        // Every string field refuses a number or a boolean rather than storing its text.
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": 42}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": true}"#),
            400,
            "INVALID_BODY",
        ),
        // U+0000 anywhere, a key included.
        case(
            M::POST,
            p,
            Some(r#"{"to": "+14155550100", "scriptId": "s", "metadata": {"k\u0000": 1}}"#),
            400,
            "INVALID_BODY",
        ),
        case(M::POST, p, None, 415, "UNSUPPORTED_MEDIA_TYPE"),
        Case {
            content_type: Some("text/plain"),
            ..case(
                M::POST,
                p,
                Some(r#"{"to": "+14155550100", "scriptId": "s"}"#),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            )
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..case(
                M::POST,
                p,
                Some("to=%2B14155550100&scriptId=s"),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            )
        },
        Case {
            body: vec![0xff, 0xfe, 0x00],
            ..case(M::POST, p, Some(""), 400, "INVALID_BODY")
        },
        case(
            M::POST,
            p,
            Some(&format!(
                r#"{{"to": "+14155550100", "scriptId": "s", "metadata": {{"k": "{}"}}}}"#,
                "x".repeat(70 * 1024)
            )),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    // Every error must name what is wrong for the field-level failures.
    cases.push(case(M::DELETE, p, None, 405, "METHOD_NOT_ALLOWED"));
    run(&app, cases).await;

    let (status, body) = app
        .post(p, json!({"to": "12", "scriptId": "", "metadata": 1}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().len() > 10,
        "{body}"
    );
}

#[tokio::test]
async fn create_refuses_bad_idempotency_keys() {
    let app = TestApp::spawn().await;
    for key in ["".to_owned(), "k".repeat(256), "with space".to_owned()] {
        let response = app
            .client
            .post(app.url("/api/v1/calls"))
            .header("Idempotency-Key", key.as_str())
            .json(&json!({"to": "+14155550100", "scriptId": "s"}))
            .send()
            .await
            .unwrap();
        let (status, body) = common::read(response).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "INVALID_IDEMPOTENCY_KEY",
        );
    }
    let response = app
        .client
        .post(app.url("/api/v1/calls"))
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .json(&json!({"to": "+14155550100", "scriptId": "s"}))
        .send()
        .await
        .unwrap();
    let (status, _) = common::read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(app.row_counts().await, (0, 0, 0));
}

#[tokio::test]
async fn other_routes_refuse_bad_input() {
    let app = TestApp::spawn().await;
    let call = app.create_call("+14155550100").await;
    let id = call["id"].as_str().unwrap();
    let one = format!("/api/v1/calls/{id}");
    use Method as M;
    let cases = vec![
        // Listing: every parameter out of range or malformed.
        case(
            M::GET,
            "/api/v1/calls?page=0",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?page=-1",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?page=abc",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?page=1.5",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?page=99999999999999999999999",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?page=1000001",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?limit=0",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?limit=101",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?limit=",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?status=DONE",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?status=pending",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?to=4155550100",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        case(
            M::GET,
            "/api/v1/calls?to=%00",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        // Patch.
        case(M::PATCH, &one, Some("{"), 400, "INVALID_BODY"),
        case(M::PATCH, &one, Some("{}"), 400, "VALIDATION_ERROR"),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {}, "other": 1}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": "x"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": null}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": [1]}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {"to": 1}}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {"metadata": 1}}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {"metadata": {"a": "\u0000"}}}"#),
            400,
            "INVALID_BODY",
        ),
        // The patch is kept on the timeline: a NUL in a key that the patch removes was a 500.
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {"metadata": {"k\u0000": null}}}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::PATCH,
            &one,
            Some(r#"{"payload": {"status": "COMPLETED"}}"#),
            400,
            "VALIDATION_ERROR",
        ),
        case(M::PATCH, &one, None, 415, "UNSUPPORTED_MEDIA_TYPE"),
        case(
            M::PATCH,
            "/api/v1/calls/xyz",
            Some(r#"{"payload": {}}"#),
            400,
            "INVALID_ID",
        ),
        // Batch.
        case(
            M::POST,
            "/api/v1/calls/batch",
            Some("{}"),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            "/api/v1/calls/batch",
            Some(r#"{"calls": {}}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            "/api/v1/calls/batch",
            Some(r#"{"calls": null}"#),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            "/api/v1/calls/batch",
            Some("[]"),
            400,
            "INVALID_BODY",
        ),
        case(
            M::POST,
            "/api/v1/calls/batch",
            None,
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        // Ids and routes.
        case(
            M::POST,
            "/api/v1/calls/not-a-uuid/cancel",
            None,
            400,
            "INVALID_ID",
        ),
        case(
            M::GET,
            "/api/v1/calls/not-a-uuid/events",
            None,
            400,
            "INVALID_ID",
        ),
        case(M::GET, "/api/v1/nothing-here", None, 404, "NOT_FOUND"),
        case(M::GET, "/api/v2/calls", None, 404, "NOT_FOUND"),
        case(M::PUT, &one, Some("{}"), 405, "METHOD_NOT_ALLOWED"),
        case(M::DELETE, &one, None, 405, "METHOD_NOT_ALLOWED"),
    ];
    run(&app, cases).await;
    let (_, now) = app.get(&one).await;
    assert_eq!(now["data"], call, "the call must be untouched");
}

#[tokio::test]
async fn oversized_bodies_are_413_with_or_without_a_length() {
    let app = TestApp::spawn().await;
    let big = vec![b' '; 21 * 1024 * 1024];
    let response = app
        .client
        .post(app.url("/api/v1/calls/batch"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );

    // Chunked, with no Content-Length to check up front.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let response = app
        .client
        .post(app.url("/api/v1/calls"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    assert_eq!(app.row_counts().await, (0, 0, 0));
}

#[tokio::test]
async fn the_envelope_never_leaks_internals() {
    let app = TestApp::spawn().await;
    let raw = "{\"to\": \"+14155550100\", \"scriptId\": \"s\", \"metadata\": {\"a\": 1e400}}";
    let response = app
        .client
        .post(app.url("/api/v1/calls"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert!(status.is_client_error(), "{status} {body}");
    let text = body.to_string();
    for leak in ["sqlx", "postgres", "panicked", "src/"] {
        assert!(!text.contains(leak), "{text}");
    }
}
