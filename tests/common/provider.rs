//! A fake AI call provider: a real HTTP server on loopback that answers dial requests as the
//! test scripts it, honours `Idempotency-Key`, and keeps count of what it saw. With
//! `auto_end`, it also ends each call after a short while and sends the final webhook, like
//! the real thing; otherwise the test sends webhooks itself.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use poem::{
    EndpointExt, Request, Response, Route, Server, http::StatusCode, listener::TcpAcceptor, post,
};
use serde_json::{Value, json};

/// How to answer one dial request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 202 with a new callId (or the same one for a repeated Idempotency-Key).
    Accept,
    /// Like `Accept`, after a pause (the callId is assigned on receipt).
    AcceptAfter(Duration),
    /// This status and body.
    Status(u16, &'static str),
    /// 429, with `Retry-After` seconds when given.
    RateLimit(Option<u64>),
    /// No answer for this long (longer than PROVIDER_TIMEOUT: a timeout for the client).
    Hang(Duration),
    /// 202 with this callId, whatever was asked (a provider that hands out one id twice).
    AcceptAs(&'static str),
    /// 307 to this URL.
    Redirect(String),
    /// 202 with a body of this many bytes.
    Huge(usize),
}

/// One dial request received.
#[derive(Clone, Debug)]
pub struct Received {
    pub key: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub call_id: Option<String>,
}

/// How the provider ends calls by itself.
#[derive(Clone, Debug)]
pub struct AutoEnd {
    pub min: Duration,
    pub max: Duration,
    /// Share of calls that end `COMPLETED`; the rest end `BUSY`.
    pub success_rate: f64,
}

#[derive(Default)]
pub struct Stats {
    pub received: Vec<Received>,
    /// Idempotency-Key -> callId, for every call placed.
    pub placed: HashMap<String, String>,
    /// Requests that repeated a key already placed (answered with the same callId).
    pub repeats: usize,
    /// Calls placed and not yet ended, by callId -> number.
    pub active: HashMap<String, String>,
    pub peak_active: usize,
    pub peak_per_number: usize,
    /// Calls placed and not yet ended, by callId -> the `group` of their metadata (a test's
    /// name for their campaign), and the most active at once in each group.
    pub groups: HashMap<String, String>,
    pub peak_per_group: HashMap<String, usize>,
}

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    stats: Stats,
    next_id: u64,
    auto_end: Option<AutoEnd>,
}

#[derive(Clone)]
pub struct FakeProvider {
    pub url: String,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
}

impl FakeProvider {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(auto_end: Option<AutoEnd>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/calls", listener.local_addr().unwrap());
        let provider = Self {
            url,
            state: Arc::new(Mutex::new(State {
                script: VecDeque::new(),
                default: Reply::Accept,
                stats: Stats::default(),
                next_id: 0,
                auto_end,
            })),
            client: reqwest::Client::new(),
        };
        let endpoint = {
            let provider = provider.clone();
            Route::new().at(
                "/v1/calls",
                post(poem::endpoint::make(move |req: Request| {
                    let provider = provider.clone();
                    async move { provider.handle(req).await }
                })),
            )
        };
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint.map_to_response()));
        provider
    }

    /// Answers the next requests with these replies, in order, then with the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    pub fn with_stats<T>(&self, f: impl FnOnce(&Stats) -> T) -> T {
        f(&self.state.lock().unwrap().stats)
    }

    pub fn received(&self) -> Vec<Received> {
        self.with_stats(|s| s.received.clone())
    }

    /// The provider ends a call: it stops counting it as active.
    pub fn end(&self, call_id: &str) {
        let stats = &mut self.state.lock().unwrap().stats;
        stats.active.remove(call_id);
        stats.groups.remove(call_id);
    }

    async fn handle(&self, mut req: Request) -> Response {
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = req.take_body().into_json().await.unwrap_or(Value::Null);
        let reply = {
            let mut state = self.state.lock().unwrap();
            let reply = state
                .script
                .pop_front()
                .unwrap_or_else(|| state.default.clone());
            let call_id = match reply {
                Reply::Accept | Reply::AcceptAfter(_) => Some(self.place(&mut state, &key, &body)),
                _ => None,
            };
            state.stats.received.push(Received {
                key: key.clone(),
                body: body.clone(),
                authorization,
                call_id: call_id.clone(),
            });
            (reply, call_id)
        };
        match reply {
            (Reply::Accept, Some(id)) => accepted(&id),
            (Reply::AcceptAfter(pause), Some(id)) => {
                tokio::time::sleep(pause).await;
                accepted(&id)
            }
            (Reply::Status(status, text), _) => Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .body(text),
            (Reply::RateLimit(after), _) => {
                let mut response = Response::builder().status(StatusCode::TOO_MANY_REQUESTS);
                if let Some(after) = after {
                    response = response.header("retry-after", after.to_string());
                }
                response.body("slow down")
            }
            (Reply::Hang(pause), _) => {
                tokio::time::sleep(pause).await;
                Response::builder()
                    .status(StatusCode::GATEWAY_TIMEOUT)
                    .finish()
            }
            (Reply::AcceptAs(id), _) => accepted(id),
            (Reply::Redirect(to), _) => Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", to)
                .finish(),
            (Reply::Huge(bytes), _) => Response::builder()
                .status(StatusCode::ACCEPTED)
                .content_type("application/json")
                .body(format!(
                    "{{\"callId\": \"p-huge\", \"pad\": \"{}\"}}",
                    "x".repeat(bytes)
                )),
            _ => unreachable!(),
        }
    }

    /// Places the call for `key`, or finds the one already placed.
    fn place(&self, state: &mut State, key: &str, body: &Value) -> String {
        if let Some(id) = state.stats.placed.get(key) {
            state.stats.repeats += 1;
            return id.clone();
        }
        state.next_id += 1;
        let id = format!("p-{}", state.next_id);
        let number = body["to"].as_str().unwrap_or_default().to_owned();
        let stats = &mut state.stats;
        stats.placed.insert(key.to_owned(), id.clone());
        if stats.active.values().any(|n| *n == number) {
            stats.peak_per_number = stats.peak_per_number.max(2);
        } else {
            stats.peak_per_number = stats.peak_per_number.max(1);
        }
        stats.active.insert(id.clone(), number);
        stats.peak_active = stats.peak_active.max(stats.active.len());
        if let Some(group) = body["metadata"]["group"].as_str() {
            stats.groups.insert(id.clone(), group.to_owned());
            let now = stats.groups.values().filter(|g| *g == group).count();
            let peak = stats.peak_per_group.entry(group.to_owned()).or_default();
            *peak = (*peak).max(now);
        }
        if let Some(auto) = state.auto_end.clone() {
            let webhook_url = body["webhookUrl"].as_str().unwrap_or_default().to_owned();
            let provider = self.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let span = auto.max.saturating_sub(auto.min).as_secs_f64();
                tokio::time::sleep(auto.min + Duration::from_secs_f64(span * fastrand::f64()))
                    .await;
                let status = if fastrand::f64() < auto.success_rate {
                    "COMPLETED"
                } else {
                    "BUSY"
                };
                provider.end(&id);
                provider
                    .send_webhook(
                        &webhook_url,
                        &json!({"callId": id, "status": status, "durationSec": 3}),
                    )
                    .await;
            });
        }
        id
    }

    /// Posts a webhook, retrying while the service is unreachable or failing.
    pub async fn send_webhook(&self, url: &str, body: &Value) {
        for _ in 0..50 {
            match self.client.post(url).json(body).send().await {
                Ok(response)
                    if response.status().is_success() || response.status().is_client_error() =>
                {
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

fn accepted(id: &str) -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .content_type("application/json")
        .body(json!({"callId": id}).to_string())
}
