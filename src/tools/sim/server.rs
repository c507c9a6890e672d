//! The simulator's HTTP server and the life of each simulated call.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Request, Response, Route, Server, get, handler,
    http::StatusCode,
    listener::TcpAcceptor,
    post,
    web::{Data, Json},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Faults, SimConfig};

mod calls;

/// Latency figures, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// What the simulator has seen, as `GET /status` reports it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Dial requests received, repeats and refusals included.
    pub received: u64,
    /// Calls placed (one per new Idempotency-Key accepted).
    pub placed: u64,
    /// Requests that repeated a key already placed: answered with its callId, no new call.
    pub idempotent_repeats: u64,
    pub unauthorized: u64,
    pub invalid: u64,
    /// 503s answered on purpose.
    pub errors_injected: u64,
    /// 429s answered on purpose.
    pub rate_limited: u64,
    pub slow_answers: u64,
    pub active_now: usize,
    /// Most calls active at once.
    pub peak_active: usize,
    /// Most calls active at once to one number (above 1 is a service bug).
    pub peak_per_number: usize,
    /// Final statuses sent, by status.
    pub outcomes: BTreeMap<String, u64>,
    pub webhooks_sent: u64,
    pub webhook_failures: u64,
    pub webhooks_dropped: u64,
    pub webhooks_duplicated: u64,
    pub webhooks_late: u64,
    /// The first overlaps seen (a number with two calls active at once), for diagnosis.
    pub overlaps: Vec<String>,
    pub webhooks_out_of_order: u64,
    /// From a final webhook's 2xx to the next dial request, while calls were waiting.
    pub refill_latency_ms: Latency,
    /// The same refills measured from the moment the final webhook was sent: the service's
    /// whole handling of the webhook is inside.
    pub refill_from_send_ms: Latency,
}

struct State {
    rng: fastrand::Rng,
    faults: Faults,
    next_id: u64,
    by_key: HashMap<String, String>,
    active: HashMap<String, String>,
    per_number: HashMap<String, usize>,
    status: Status,
    /// When final webhooks were sent and acknowledged, oldest first, each waiting for the
    /// dial that refills its slot.
    acks: VecDeque<(Instant, Instant)>,
    refills: Vec<f64>,
    refills_from_send: Vec<f64>,
}

/// A running simulator.
#[derive(Clone)]
pub struct Simulator {
    config: Arc<SimConfig>,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    signer: Option<Arc<standardwebhooks::Webhook>>,
    address: SocketAddr,
    shutdown: CancellationToken,
}

/// What happens to one call's webhooks.
#[derive(Clone, Copy, Debug)]
struct Quirks {
    lose: bool,
    twice: bool,
    late: bool,
    out_of_order: bool,
}

/// What a dial request gets.
enum Answer {
    Accepted(String),
    Refused(StatusCode, Value, Option<u64>),
}

impl Simulator {
    /// Binds `host:port` and serves until [`Simulator::stop`].
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
        let address = listener.local_addr()?;
        let signer = match &config.webhook_secret {
            Some(secret) => Some(Arc::new(standardwebhooks::Webhook::new(secret)?)),
            None => None,
        };
        let simulator = Self {
            state: Arc::new(Mutex::new(State {
                rng: fastrand::Rng::with_seed(config.seed),
                faults: config.faults(),
                next_id: 0,
                by_key: HashMap::new(),
                active: HashMap::new(),
                per_number: HashMap::new(),
                status: Status::default(),
                acks: VecDeque::new(),
                refills: Vec::new(),
                refills_from_send: Vec::new(),
            })),
            config: Arc::new(config),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            signer,
            address,
            shutdown: CancellationToken::new(),
        };
        let app = Route::new()
            .at("/v1/calls", post(create_call))
            .at("/status", get(status_route))
            .at("/health", get(health))
            .data(simulator.clone());
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let stop = simulator.shutdown.clone();
        tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    app,
                    stop.cancelled_owned(),
                    Some(Duration::from_secs(1)),
                )
                .await;
        });
        Ok(simulator)
    }

    /// The create-call endpoint: the service's `AI_CALL_API_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/calls", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn status(&self) -> Status {
        let state = self.state.lock().expect("simulator state");
        let mut status = state.status.clone();
        status.active_now = state.active.len();
        status.refill_latency_ms = percentiles(&state.refills);
        status.refill_from_send_ms = percentiles(&state.refills_from_send);
        status
    }

    /// Switches the API's faults (outage, rate limits, slow answers) while running.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().expect("simulator state").faults = faults;
    }

    /// Every Idempotency-Key for which a call was placed, with its callId.
    pub fn placed(&self) -> HashMap<String, String> {
        self.state.lock().expect("simulator state").by_key.clone()
    }

    /// Stops the server; calls under way stop sending webhooks.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    fn answer(&self, key: &str, number: &str, webhook_url: &str) -> (Answer, Option<Duration>) {
        let mut state = self.state.lock().expect("simulator state");
        if let Some(id) = state.by_key.get(key).cloned() {
            state.status.idempotent_repeats += 1;
            return (Answer::Accepted(id), None);
        }
        let config = &self.config;
        let faults = state.faults;
        let draw = state.rng.f64();
        if draw < faults.error_rate {
            state.status.errors_injected += 1;
            return (
                Answer::Refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "simulated outage"}),
                    None,
                ),
                None,
            );
        }
        if draw < faults.error_rate + faults.rate_limit_rate {
            state.status.rate_limited += 1;
            return (
                Answer::Refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "slow down"}),
                    Some(config.retry_after),
                ),
                None,
            );
        }
        let slow = state.rng.f64() < faults.slow_rate;
        if slow {
            state.status.slow_answers += 1;
        }
        state.next_id += 1;
        let id = format!("sim-{}", state.next_id);
        state.by_key.insert(key.to_owned(), id.clone());
        state.status.placed += 1;
        if state.per_number.contains_key(number) && state.status.overlaps.len() < 20 {
            let others: Vec<String> = state
                .active
                .iter()
                .filter(|(_, n)| *n == number)
                .map(|(other, _)| {
                    let key = state
                        .by_key
                        .iter()
                        .find(|(_, v)| *v == other)
                        .map(|(k, _)| k.as_str());
                    format!("{other} ({})", key.unwrap_or("?"))
                })
                .collect();
            let overlap = format!("{number}: {key} while {} active", others.join(", "));
            state.status.overlaps.push(overlap);
        }
        state.active.insert(id.clone(), number.to_owned());
        let on_number = {
            let n = state.per_number.entry(number.to_owned()).or_default();
            *n += 1;
            *n
        };
        state.status.peak_per_number = state.status.peak_per_number.max(on_number);
        state.status.peak_active = state.status.peak_active.max(state.active.len());
        if let Some((sent, acked)) = state.acks.pop_front() {
            state.refills.push(acked.elapsed().as_secs_f64() * 1000.0);
            state
                .refills_from_send
                .push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let span = config.max_duration.saturating_sub(config.min_duration);
        let duration = config.min_duration + span.mul_f64(state.rng.f64());
        let outcome = config.outcomes.pick(state.rng.f64());
        let quirks = Quirks {
            lose: state.rng.f64() < config.drop_webhook_rate,
            twice: state.rng.f64() < config.duplicate_webhook_rate,
            late: state.rng.f64() < config.late_webhook_rate,
            out_of_order: state.rng.f64() < config.out_of_order_rate,
        };
        drop(state);
        let simulator = self.clone();
        let (call_id, url) = (id.clone(), webhook_url.to_owned());
        tokio::spawn(async move {
            simulator
                .play(call_id, url, duration, outcome, quirks)
                .await
        });
        (Answer::Accepted(id), slow.then_some(faults.slow_delay))
    }
}

fn percentiles(samples: &[f64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Latency {
        count: sorted.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(json!({"error": message}).to_string())
}

#[handler]
async fn create_call(req: &Request, body: poem::Body, sim: Data<&Simulator>) -> Response {
    let sim = sim.0;
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key == sim.config.api_key);
    {
        let mut state = sim.state.lock().expect("simulator state");
        state.status.received += 1;
        if !authorized {
            state.status.unauthorized += 1;
            return refuse(StatusCode::UNAUTHORIZED, "missing or wrong bearer key");
        }
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed: Option<Value> = body
        .into_bytes_limit(1024 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let fields = parsed.as_ref().and_then(|body| {
        Some((
            body.get("to")?.as_str()?.to_owned(),
            body.get("scriptId")?.as_str()?.to_owned(),
            body.get("webhookUrl")?.as_str()?.to_owned(),
        ))
    });
    let Some((to, _script, webhook_url)) = fields.filter(|_| !key.is_empty()) else {
        sim.state.lock().expect("simulator state").status.invalid += 1;
        return refuse(
            StatusCode::BAD_REQUEST,
            "expected Idempotency-Key and a JSON body with to, scriptId, webhookUrl",
        );
    };
    let (answer, pause) = sim.answer(&key, &to, &webhook_url);
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    match answer {
        Answer::Accepted(id) => Response::builder()
            .status(StatusCode::ACCEPTED)
            .content_type("application/json")
            .body(json!({"callId": id}).to_string()),
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

#[handler]
fn status_route(sim: Data<&Simulator>) -> Json<Status> {
    Json(sim.0.status())
}

#[handler]
fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
