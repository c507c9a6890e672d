//! The service speaking a vendor's dialect to the simulator playing that vendor, its
//! dispatcher and sweeper running: shared by tests/providers.rs and tests/vendor_sdks.rs.

use std::time::{Duration, Instant};

use call_orchestrator::{
    config::{Config, Secret},
    tools::sim::{Dialect, OutcomeMix, SimConfig, Simulator, TWILIO_ACCOUNT_SID},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::TestApp;

/// Vapi's and Bland's secret in these tests (Twilio and Retell sign with the key).
pub const SECRET: &str = "vendor-webhook-secret";
pub const KEY: &str = "sim-key";

/// The service speaking `dialect` to the simulator playing it, with its dispatcher and
/// sweeper running.
pub struct Vendor {
    pub dialect: Dialect,
    pub sim: Simulator,
    pub app: TestApp,
    pub workers: CancellationToken,
}

impl Drop for Vendor {
    fn drop(&mut self) {
        self.workers.cancel();
        self.sim.stop();
    }
}

pub fn secret_of(dialect: Dialect) -> Option<&'static str> {
    matches!(dialect, Dialect::Vapi | Dialect::Bland).then_some(SECRET)
}

/// The service speaking `dialect` to its simulator, one call dialed and held open (it never
/// ends on its own: the test's webhook ends it): the service and simulator, the call's id,
/// the vendor's id for it.
pub async fn one_call(dialect: Dialect) -> (Vendor, String, String) {
    let vendor = start(
        dialect,
        |s| {
            s.progress_webhooks = false;
            s.drop_webhook_rate = 1.0;
            s.min_duration = Duration::from_secs(600);
            s.max_duration = Duration::from_secs(600);
        },
        |_| {},
    )
    .await;
    let id = vendor.create("+14155550100", json!({})).await;
    let external = vendor.dialed(&id).await;
    (vendor, id, external)
}

pub async fn start(
    dialect: Dialect,
    sim: impl FnOnce(&mut SimConfig),
    adjust: impl FnOnce(&mut Config),
) -> Vendor {
    let mut config = SimConfig {
        dialect,
        api_key: KEY.into(),
        webhook_secret: secret_of(dialect).map(str::to_owned),
        min_duration: Duration::from_millis(50),
        max_duration: Duration::from_millis(150),
        outcomes: OutcomeMix::all_completed(),
        ..SimConfig::default()
    };
    sim(&mut config);
    let sim = Simulator::start(config).await.unwrap();
    let url = sim.url();
    let app = TestApp::spawn_with(|c| {
        c.ai_call_provider = dialect.name().into();
        c.ai_call_api_url = Some(url);
        c.ai_call_api_key = Some(Secret::new(KEY));
        c.ai_call_from_number = Some("+15550000000".into());
        c.ai_call_phone_number_id = Some("pn-1".into());
        c.twilio_account_sid = Some(TWILIO_ACCOUNT_SID.into());
        c.twilio_twiml_url = Some("https://twiml.example/flow?lang=en".into());
        c.webhook_secret = secret_of(dialect).map(Secret::new);
        c.provider_timeout = Duration::from_secs(2);
        c.retry_base_delay = Duration::from_millis(100);
        c.retry_max_delay = Duration::from_millis(500);
        c.call_timeout = Duration::from_secs(20);
        adjust(c);
    })
    .await;
    sim.set_webhook_url(&app.url(dialect.webhook_path()));
    let workers = CancellationToken::new();
    tokio::spawn(app.dispatcher().await.run(workers.clone()));
    tokio::spawn(app.sweeper().await.run(workers.clone()));
    Vendor {
        dialect,
        sim,
        app,
        workers,
    }
}

impl Vendor {
    pub async fn create(&self, to: &str, metadata: Value) -> String {
        let (status, body) = self
            .app
            .post(
                "/api/v1/calls",
                json!({"to": to, "scriptId": "welcomeFlow", "metadata": metadata}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["data"]["id"].as_str().unwrap().to_owned()
    }

    /// Waits until every call in `ids` is final; returns them.
    pub async fn finals(&self, ids: &[String], within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let mut calls = Vec::new();
            for id in ids {
                calls.push(self.app.call(id).await);
            }
            let open: Vec<&Value> = calls
                .iter()
                .filter(|c| matches!(c["status"].as_str(), Some("PENDING" | "IN_PROGRESS")))
                .collect();
            if open.is_empty() {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{}: calls still open: {open:?}\nsim: {:?}",
                self.dialect.name(),
                self.sim.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the call is `IN_PROGRESS` with the vendor's id; returns it.
    pub async fn dialed(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let call = self.app.call(id).await;
            if let Some(external) = call["externalCallId"].as_str() {
                return external.to_owned();
            }
            assert!(Instant::now() < deadline, "never dialed: {call}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (_, body) = self.app.get(&format!("/api/v1/calls/{id}/events")).await;
        body["data"].as_array().unwrap().clone()
    }
}
