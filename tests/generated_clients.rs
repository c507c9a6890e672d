//! Integrators generate clients from `openapi.yaml`: a Python client generated with
//! openapi-python-client creates, reads, patches, cancels and lists calls against the real
//! server, and schemathesis fuzzes every operation looking for a 5xx or a response that
//! breaks the schema. Needs a Python virtualenv with both tools (tests/clients/requirements.txt):
//! the one PY_CLIENTS_VENV names, else ~/.cache/call-orchestrator/pyclients, made on first
//! use when missing. Skipped only when asked by name: SKIP_GENERATED_CLIENTS=1.

mod common;

use std::process::Command;

use common::TestApp;

async fn run(mut command: Command) -> (bool, String) {
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_generated_python_client_and_schemathesis_agree_with_the_server() {
    if std::env::var_os("SKIP_GENERATED_CLIENTS").is_some_and(|v| v == "1") {
        eprintln!("skipped, as SKIP_GENERATED_CLIENTS=1 asks");
        return;
    }
    let venv = tokio::task::spawn_blocking(common::python_venv)
        .await
        .unwrap()
        .unwrap_or_else(|why| {
            panic!("no virtualenv for the generated-client test: {why}; SKIP_GENERATED_CLIENTS=1 skips it")
        });
    let app = TestApp::spawn_with(|c| {
        c.api_keys = Some(call_orchestrator::config::Secret::new("client-key"));
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let package = out.path().join("call_orchestrator_client");
    let mut generate = Command::new(venv.join("bin/openapi-python-client"));
    generate
        .args(["generate", "--meta", "none", "--overwrite", "--path"])
        .arg(format!("{}/openapi.yaml", env!("CARGO_MANIFEST_DIR")))
        .arg("--output-path")
        .arg(&package);
    let (ok, text) = run(generate).await;
    assert!(
        ok && package.join("client.py").is_file(),
        "generation failed: {text}"
    );

    let mut smoke = Command::new(venv.join("bin/python"));
    smoke
        .arg(format!(
            "{}/tests/clients/smoke.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("PYTHONPATH", out.path())
        .env("BASE_URL", &app.base)
        .env("API_KEY", "client-key");
    let (ok, text) = run(smoke).await;
    assert!(ok && text.contains("generated client: ok"), "{text}");

    let mut fuzz = Command::new(venv.join("bin/schemathesis"));
    fuzz.args(["run", &app.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args([
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "10",
        ])
        .args(["--header", "Authorization: Bearer client-key"])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1");
    let (ok, text) = run(fuzz).await;
    assert!(ok, "schemathesis found problems:\n{text}");
    eprintln!(
        "{}",
        text.lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
