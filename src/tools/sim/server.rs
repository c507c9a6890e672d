//! The simulator's HTTP server and the life of each simulated call.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{EndpointExt, Server, http::StatusCode, listener::TcpAcceptor};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    Faults, SimConfig,
    dialect::{DialIn, Dialect, SimCall, Stage},
};

mod calls;
mod routes;

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
    /// Dials of a vendor without idempotency keys that repeated an attempt's reference:
    /// each placed a second call to a person (above 0 is a service bug).
    pub duplicate_placements: u64,
    /// Look-ups and listings of calls answered.
    pub look_ups: u64,
    pub unauthorized: u64,
    pub invalid: u64,
    /// 503s answered on purpose.
    pub errors_injected: u64,
    /// 429s answered on purpose (or for `--vendor-concurrency`).
    pub rate_limited: u64,
    /// Dials Retell or Vapi took but ended at once for `--vendor-concurrency`.
    pub throttled: u64,
    pub slow_answers: u64,
    /// Dial requests swallowed: never placed, never answered (`--lose-dial-rate`).
    pub dials_lost: u64,
    pub active_now: usize,
    /// Most calls active at once.
    pub peak_active: usize,
    /// Most calls active at once to one number (above 1 is a service bug).
    pub peak_per_number: usize,
    /// Most calls active at once in each group: the `group` of the dial's metadata (a
    /// campaign's calls tagged by whoever created them), where the dialect carries metadata.
    pub peak_per_group: BTreeMap<String, usize>,
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
    /// Every call placed, by id, for the vendors' look-ups.
    calls: HashMap<String, SimCall>,
    /// The last dial requests received, for the tests to read.
    dials: VecDeque<RecordedDial>,
    /// Where webhooks go when the dial does not say (`--webhook-url`, or set later).
    webhook_url: Option<String>,
    per_number: HashMap<String, usize>,
    /// The group of each active call that has one (see `Status::peak_per_group`).
    groups: HashMap<String, String>,
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

/// A dial request as received.
#[derive(Clone, Debug)]
pub struct RecordedDial {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// How many dial requests [`Simulator::dials`] keeps.
const RECORDED_DIALS: usize = 200;

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
    /// Never placed, never answered: the request hangs until the caller gives up.
    Lost,
    Refused(StatusCode, Value, Option<u64>),
}

impl Simulator {
    /// Binds `host:port` and serves until [`Simulator::stop`].
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
        let address = listener.local_addr()?;
        let signer = match &config.webhook_secret {
            Some(secret) if config.dialect == Dialect::Generic => {
                Some(Arc::new(standardwebhooks::Webhook::new(secret)?))
            }
            _ => None,
        };
        let simulator = Self {
            state: Arc::new(Mutex::new(State {
                rng: fastrand::Rng::with_seed(config.seed),
                faults: config.faults(),
                next_id: 0,
                by_key: HashMap::new(),
                active: HashMap::new(),
                calls: HashMap::new(),
                dials: VecDeque::new(),
                webhook_url: config.webhook_url.clone(),
                per_number: HashMap::new(),
                groups: HashMap::new(),
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
        let app = routes::app(simulator.config.dialect).data(simulator.clone());
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

    /// What the service's `AI_CALL_API_URL` is set to: the create-call endpoint of the
    /// generic dialect, the API's base URL of a vendor's.
    pub fn url(&self) -> String {
        match self.config.dialect {
            Dialect::Generic => format!("http://{}/v1/calls", self.address),
            _ => format!("http://{}", self.address),
        }
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        self.config.dialect
    }

    /// The last dial requests received (at most 200), oldest first.
    pub fn dials(&self) -> Vec<RecordedDial> {
        let state = self.state.lock().expect("simulator state");
        state.dials.iter().cloned().collect()
    }

    /// Sends the webhooks of dials that name no webhook URL (Retell's) to `url` from now on:
    /// for a service started after the simulator, on a port it chose.
    pub fn set_webhook_url(&self, url: &str) {
        self.state.lock().expect("simulator state").webhook_url = Some(url.to_owned());
    }

    /// A call placed, as the vendor's look-up would answer it.
    pub fn call(&self, id: &str) -> Option<SimCall> {
        self.state
            .lock()
            .expect("simulator state")
            .calls
            .get(id)
            .cloned()
    }

    fn record(&self, dial: RecordedDial) {
        let mut state = self.state.lock().expect("simulator state");
        if state.dials.len() == RECORDED_DIALS {
            state.dials.pop_front();
        }
        state.dials.push_back(dial);
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

    fn answer(&self, dial: DialIn) -> (Answer, Option<Duration>) {
        let DialIn {
            number,
            key,
            webhook_url,
            metadata,
            headers,
        } = dial;
        let (key, number) = (key.as_str(), number.as_str());
        let dialect = self.config.dialect;
        let mut state = self.state.lock().expect("simulator state");
        let fallback = state.webhook_url.clone();
        let repeat = match state.by_key.get(key).cloned() {
            Some(id) if dialect.idempotent() => {
                state.status.idempotent_repeats += 1;
                return (Answer::Accepted(id), None);
            }
            other => other.is_some(),
        };
        let config = &self.config;
        let faults = state.faults;
        let draw = state.rng.f64();
        if draw < faults.error_rate {
            state.status.errors_injected += 1;
            return (
                Answer::Refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    dialect.refusal(StatusCode::SERVICE_UNAVAILABLE, "simulated outage"),
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
                    dialect.refusal(StatusCode::TOO_MANY_REQUESTS, "slow down"),
                    Some(config.retry_after),
                ),
                None,
            );
        }
        if faults.lose_dial_rate > 0.0 && state.rng.f64() < faults.lose_dial_rate {
            state.status.dials_lost += 1;
            return (Answer::Lost, None);
        }
        // The vendor's own limit on calls at once: Twilio and Bland refuse the dial (429);
        // Retell and Vapi take it and end it at once, unplaced, with their reason for it.
        let at_limit =
            config.vendor_concurrency > 0 && state.active.len() >= config.vendor_concurrency;
        if at_limit && matches!(dialect, Dialect::Generic | Dialect::Twilio | Dialect::Bland) {
            state.status.rate_limited += 1;
            return (
                Answer::Refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    dialect.refusal(StatusCode::TOO_MANY_REQUESTS, "concurrency limit reached"),
                    None,
                ),
                None,
            );
        }
        let slow = state.rng.f64() < faults.slow_rate;
        if slow {
            state.status.slow_answers += 1;
        }
        if repeat {
            // A vendor without idempotency keys places the same attempt again: a person
            // dialed twice.
            state.status.duplicate_placements += 1;
        }
        state.next_id += 1;
        let id = dialect.new_id(state.next_id);
        state.by_key.insert(key.to_owned(), id.clone());
        state.calls.insert(
            id.clone(),
            SimCall {
                id: id.clone(),
                number: number.to_owned(),
                reference: (!dialect.idempotent()).then(|| key.to_owned()),
                metadata,
                created_at: chrono::Utc::now(),
                stage: Stage::Queued,
                headers,
            },
        );
        if at_limit {
            state.status.throttled += 1;
            drop(state);
            let (simulator, call_id) = (self.clone(), id.clone());
            let url = webhook_url.or_else(|| fallback.clone());
            let quirks = Quirks {
                lose: false,
                twice: false,
                late: false,
                out_of_order: true,
            };
            tokio::spawn(async move {
                simulator
                    .play(call_id, url, Duration::ZERO, "THROTTLED", quirks)
                    .await
            });
            return (Answer::Accepted(id), None);
        }
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
        if let Some(group) = state
            .calls
            .get(&id)
            .and_then(|c| c.metadata.get("group"))
            .and_then(|g| g.as_str())
            .map(str::to_owned)
        {
            state.groups.insert(id.clone(), group.clone());
            let now = state.groups.values().filter(|g| **g == group).count();
            let peak = state.status.peak_per_group.entry(group).or_default();
            *peak = (*peak).max(now);
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
        let call_id = id.clone();
        let url = webhook_url.or_else(|| fallback.clone());
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
