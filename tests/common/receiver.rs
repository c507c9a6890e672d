//! A client's event endpoint: a real HTTP server on loopback that records every delivery
//! (its Standard Webhooks headers and body) and answers as the test scripts it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Request, Response, Route, Server, http::StatusCode, listener::TcpAcceptor, post,
};
use serde_json::Value;

/// How to answer one delivery.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    /// This status with `Retry-After` seconds.
    RetryAfter(u16, u64),
    /// No answer for this long.
    Hang(Duration),
    /// 307 to this URL.
    Redirect(String),
}

/// One delivery received.
#[derive(Clone, Debug)]
pub struct Got {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    pub at: Instant,
    /// The path it was sent to.
    pub path: String,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }

    /// Whether `secret` (`whsec_…`) verifies it, by the Standard Webhooks crate.
    pub fn verifies_with(&self, secret: &str) -> bool {
        let mut headers = poem::http::HeaderMap::new();
        headers.insert("webhook-id", self.id.parse().unwrap());
        headers.insert("webhook-timestamp", self.timestamp.parse().unwrap());
        headers.insert("webhook-signature", self.signature.parse().unwrap());
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(self.body.as_bytes(), &headers)
            .is_ok()
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    default: Option<Answer>,
    got: Vec<Got>,
    in_flight: usize,
    peak: usize,
}

#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/events`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<Mutex<State>>,
}

struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let receiver = Self {
            url: format!("http://{addr}/events"),
            addr,
            state: Arc::default(),
        };
        let endpoint = {
            let receiver = receiver.clone();
            Route::new().at(
                "/*path",
                post(poem::endpoint::make(move |req: Request| {
                    let receiver = receiver.clone();
                    async move { receiver.handle(req).await }
                })),
            )
        };
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint.map_to_response()));
        receiver
    }

    /// Answers the next deliveries with these, in order, then with the default (200).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn set_default(&self, answer: Answer) {
        self.state.lock().unwrap().default = Some(answer);
    }

    pub fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    /// Most deliveries it was answering at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.lock().unwrap().peak
    }

    /// Waits until `n` deliveries came, or panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Got> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries came within {within:?}: {:?}",
                got.len(),
                got.iter().map(|g| g.body.clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn handle(&self, mut req: Request) -> Response {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let got = Got {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: String::new(),
            at: Instant::now(),
            path: req.uri().path().to_owned(),
        };
        let body = req.take_body().into_string().await.unwrap_or_default();
        let answer = {
            let mut state = self.state.lock().unwrap();
            state.got.push(Got { body, ..got });
            state.in_flight += 1;
            state.peak = state.peak.max(state.in_flight);
            state
                .script
                .pop_front()
                .or_else(|| state.default.clone())
                .unwrap_or(Answer::Status(200))
        };
        let _in_flight = InFlight(self.state.clone());
        match answer {
            Answer::Status(code) => Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body("ok"),
            Answer::RetryAfter(code, secs) => Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("Retry-After", secs.to_string())
                .body("later"),
            Answer::Redirect(to) => Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("Location", to)
                .body("elsewhere"),
            Answer::Hang(pause) => {
                tokio::time::sleep(pause).await;
                Response::builder().status(StatusCode::OK).body("late")
            }
        }
    }
}
