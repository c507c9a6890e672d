//! The checked-in `openapi.yaml` is exactly what the server serves.

mod common;

use common::TestApp;
use reqwest::StatusCode;

const CHECKED_IN: &str = include_str!("../openapi.yaml");

#[test]
fn checked_in_document_matches_the_code() {
    assert!(
        call_orchestrator::api::openapi_yaml() == CHECKED_IN,
        "openapi.yaml is stale: run `cargo run -- openapi > openapi.yaml`"
    );
}

#[tokio::test]
async fn the_server_serves_the_document_and_swagger_ui() {
    let app = TestApp::spawn().await;
    let yaml = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), StatusCode::OK);
    assert_eq!(yaml.text().await.unwrap(), CHECKED_IN);

    let (status, json) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = json["paths"].as_object().unwrap();
    for path in [
        "/api/v1/calls",
        "/api/v1/calls/batch",
        "/api/v1/calls/{id}",
        "/api/v1/calls/{id}/cancel",
        "/api/v1/calls/{id}/events",
        "/api/v1/metrics",
        "/health",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
