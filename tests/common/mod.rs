//! Shared by the integration tests: a database per test on the binary's PostgreSQL cluster
//! (`pg`), the real HTTP server on a loopback port chosen by the OS, and small request
//! helpers.

#![allow(dead_code)]

pub mod pg;
pub mod provider;
pub mod receiver;
pub mod vendor;

use std::{path::PathBuf, process::Command, sync::Once, time::Duration};

use call_orchestrator::{
    app,
    config::Config,
    tools::pg::{ClusterOptions, PgCluster},
    worker::{Dispatcher, Sweeper, Worker},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The service's binary, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_call-orchestrator");

/// The binary with a clean environment (only `PATH`): no setting leaks in from the machine.
pub fn binary(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // Tests that are not about calling windows pass at any hour.
        .env("CALLING_WINDOW", "off");
    command
}

/// A loopback port that is free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to `timeout` for `GET url` to answer 2xx.
pub async fn wait_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + timeout;
    while !client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running service on its own database.
pub struct TestApp {
    pub base: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub config: Config,
    /// The test's own database.
    pub db_url: String,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    // Last: a private cluster outlives the server and the pool.
    cluster: Option<PgCluster>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
            .with_test_writer()
            .try_init();
    });
}

/// A fake provider and the service pointed at it, with short provider timeouts and retry
/// delays of `retry_base_delay`, then `adjust`.
pub async fn with_provider(
    retry_base_delay: Duration,
    adjust: impl FnOnce(&mut Config),
) -> (provider::FakeProvider, TestApp) {
    let provider = provider::FakeProvider::start().await;
    let url = provider.url.clone();
    let app = TestApp::spawn_with(|c| {
        c.ai_call_api_url = Some(url);
        c.retry_base_delay = retry_base_delay;
        c.provider_timeout = Duration::from_millis(500);
        adjust(c);
    })
    .await;
    (provider, app)
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts with the default configuration, changed by `adjust`, on a database of its own.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start(pg::migrated_database().await, None, adjust).await
    }

    /// Starts on a PostgreSQL cluster of its own, for tests that stop or restart the
    /// database (see [`TestApp::private_cluster`]).
    pub async fn spawn_on_private_cluster(adjust: impl FnOnce(&mut Config)) -> Self {
        let cluster = PgCluster::start(ClusterOptions::default())
            .await
            .expect("start PostgreSQL");
        Self::start(cluster.url("postgres"), Some(cluster), adjust).await
    }

    /// The cluster of [`TestApp::spawn_on_private_cluster`].
    pub fn private_cluster(&mut self) -> &mut PgCluster {
        self.cluster
            .as_mut()
            .expect("started with spawn_on_private_cluster")
    }

    async fn start(
        db_url: String,
        cluster: Option<PgCluster>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        init_logs();
        let mut config = Config {
            database_url: Some(call_orchestrator::config::Secret::new(db_url.clone())),
            host: "127.0.0.1".into(),
            port: 0,
            // Tests that are not about calling windows pass at any hour.
            calling_window: "off".into(),
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        config.webhook_base_url = Some(base.clone());
        config.ai_call_api_key = Some(call_orchestrator::config::Secret::new("test-provider-key"));
        adjust(&mut config);
        let pool = app::connect_and_migrate(&config).await.expect("migrate");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let config = config.clone();
            let pool = pool.clone();
            let shutdown = shutdown.clone();
            async move { app::serve_api(&config, pool, listener, shutdown).await }
        });
        Self {
            base,
            pool,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            config,
            db_url,
            shutdown,
            server: Some(server),
            cluster,
        }
    }

    /// The dispatcher's and sweeper's handles, on a pool of their own (as another replica's
    /// would be).
    pub async fn worker(&self) -> Worker {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&self.db_url)
            .await
            .unwrap();
        app::worker(&self.config, pool).await.unwrap()
    }

    pub async fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(self.worker().await)
    }

    pub async fn sweeper(&self) -> Sweeper {
        Sweeper::new(self.worker().await)
    }

    /// One call as the API shows it (`data`).
    pub async fn call(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/calls/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].clone()
    }

    /// The kinds of a call's timeline entries, oldest first.
    pub async fn timeline(&self, id: &str) -> Vec<String> {
        let (_, body) = self.get(&format!("/api/v1/calls/{id}/events")).await;
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Sends a webhook as the provider would, to the URL the service handed it: an empty
    /// `query` becomes the `?ref=…&token=…` of the attempt that `body.callId` names (none
    /// when no attempt has that id), and a `ref` without a token gets its token.
    pub async fn webhook(&self, query: &str, body: Value) -> (StatusCode, Value) {
        let query = if query.is_empty() {
            webhook_query(&self.pool, body["callId"].as_str().unwrap_or_default()).await
        } else {
            with_token(&self.pool, query).await
        };
        self.webhook_raw(&query, body).await
    }

    /// Sends a webhook to exactly this query, as a forger would.
    pub async fn webhook_raw(&self, query: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/callbacks/call-status{query}"), body)
            .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `body` as JSON (when given) and returns the status and the JSON answer
    /// (`Value::Null` when the answer is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("request")).await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::PATCH, path, Some(body)).await
    }

    /// Creates a call and returns it (`data` of the answer).
    pub async fn create_call(&self, to: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/calls",
                json!({"to": to, "scriptId": "welcomeFlow"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"].clone()
    }

    /// Creates a call to `to` and dials it (one dispatcher step); returns (call id, the
    /// provider's callId).
    pub async fn dialed(&self, to: &str) -> (String, String) {
        let id = self.create_call(to).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.dispatcher().await.run_once().await.unwrap();
        let external = self.call(&id).await["externalCallId"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, external)
    }

    /// Rows in the tables a request may write to: (calls, events, idempotency keys).
    pub async fn row_counts(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM call_events),
                    (SELECT count(*) FROM idempotency_keys)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Opens a connection and sends a POST to `path` whose body never comes (1 byte of the
    /// 100 it declares): the request holds its slot of the requests in flight until
    /// `HTTP_READ_TIMEOUT`, or until the returned connection is dropped.
    pub fn hold_request(&self, path: &str) -> std::net::TcpStream {
        use std::io::Write as _;
        let mut slow =
            std::net::TcpStream::connect(self.base.trim_start_matches("http://")).unwrap();
        slow.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .unwrap();
        slow
    }

    /// Stops the HTTP server and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The webhook tokens of the service on `pool`'s database.
pub async fn tokens(pool: &PgPool) -> call_orchestrator::domain::WebhookTokens {
    call_orchestrator::app::webhook_tokens(pool).await.unwrap()
}

/// `?ref=…&token=…` of attempt `attempt` of `call_id`, as in its webhook URL.
pub async fn attempt_query(pool: &PgPool, call_id: uuid::Uuid, attempt: i32) -> String {
    let token = tokens(pool).await.token(call_id, attempt);
    format!("?ref={call_id}.{attempt}&token={token}")
}

/// The query of the webhook URL of the attempt the provider knows as `provider_call_id`;
/// empty when no attempt has that id.
pub async fn webhook_query(pool: &PgPool, provider_call_id: &str) -> String {
    let found: Option<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT call_id, attempt FROM call_attempts WHERE provider_call_id = $1")
            .bind(provider_call_id)
            .fetch_optional(pool)
            .await
            .unwrap();
    match found {
        Some((call_id, attempt)) => attempt_query(pool, call_id, attempt).await,
        None => String::new(),
    }
}

/// `query` with the token of its `ref` added, when it has a well-formed `ref` and no token.
async fn with_token(pool: &PgPool, query: &str) -> String {
    let reference = query
        .trim_start_matches('?')
        .split('&')
        .find_map(|pair| pair.strip_prefix("ref="))
        .and_then(|r| r.split_once('.'))
        .and_then(|(id, attempt)| Some((id.parse().ok()?, attempt.parse().ok()?)));
    match reference {
        Some((id, attempt)) if !query.contains("token=") => {
            let token = tokens(pool).await.token(id, attempt);
            format!("{query}&token={token}")
        }
        _ => query.to_owned(),
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the failure envelope with `code`, and returns the message.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) -> String {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!message.is_empty(), "an error needs a message: {body}");
    message
}

/// The virtualenv of the Python tools the tests use (tests/clients/requirements.txt:
/// openapi-python-client, schemathesis and the vendors' SDKs), made if it does not exist
/// yet; `Err` says why it could not be.
pub fn python_venv() -> Result<PathBuf, String> {
    let venv = match std::env::var_os("PY_CLIENTS_VENV") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            PathBuf::from(home).join(".cache/call-orchestrator/pyclients")
        }
    };
    let ready = |venv: &PathBuf| {
        venv.join("bin/openapi-python-client").is_file()
            && venv.join("bin/schemathesis").is_file()
            && Command::new(venv.join("bin/python"))
                .args([
                    "-c",
                    "import twilio.request_validator, retell.lib.webhook_auth, phonenumbers.tzdata, standardwebhooks",
                ])
                .output()
                .is_ok_and(|out| out.status.success())
    };
    if ready(&venv) {
        return Ok(venv);
    }
    eprintln!("making the virtualenv {} (once)", venv.display());
    if !venv.join("bin/pip").is_file() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|err| format!("python3 -m venv: {err}"))?;
        if !made.success() {
            return Err("python3 -m venv failed (is python3-venv installed?)".into());
        }
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "-r"])
        .arg(format!(
            "{}/tests/clients/requirements.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .status()
        .map_err(|err| format!("pip: {err}"))?;
    if !installed.success() || !ready(&venv) {
        return Err("pip install -r tests/clients/requirements.txt failed".into());
    }
    Ok(venv)
}

/// Runs `script` with the virtualenv's Python, `input` on its standard input as JSON;
/// returns what it printed, as JSON.
pub fn python(script: &str, input: &Value) -> Value {
    let venv = python_venv().unwrap_or_else(|why| panic!("the test virtualenv: {why}"));
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
