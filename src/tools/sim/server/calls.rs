//! The life of each simulated call: its progress webhooks, the call itself, and the final
//! webhook, delivered (and retried) as a provider would, in the simulator's dialect.

use std::time::Duration;

use super::*;

impl Simulator {
    /// The life of one call: progress webhooks, the call itself, the final webhook (with
    /// the quirks drawn for it). `url`: where its webhooks go (none: they are lost).
    pub(super) async fn play(
        &self,
        id: String,
        url: Option<String>,
        duration: Duration,
        outcome: &'static str,
        quirks: Quirks,
    ) {
        let progress = self.config.progress_webhooks && !quirks.out_of_order;
        let step = (duration / 4).min(Duration::from_millis(500));
        let mut sequence = 0;
        if progress {
            // Progress webhooks go out on their own: a service slow to take them must not
            // stretch the call itself, which ends on the clock like a real one.
            let (simulator, id, url) = (self.clone(), id.clone(), url.clone());
            tokio::spawn(async move {
                for (n, stage) in [Stage::Queued, Stage::Ringing, Stage::InProgress]
                    .into_iter()
                    .enumerate()
                {
                    tokio::time::sleep(step).await;
                    if simulator.shutdown.is_cancelled() {
                        return;
                    }
                    if let Some(body) = simulator.advance(&id, stage, n as u32)
                        && let Some(url) = &url
                    {
                        simulator.deliver(&id, url, body).await;
                    }
                }
            });
            tokio::time::sleep(step * 3).await;
            sequence = 3;
        } else {
            self.advance(&id, Stage::InProgress, 0);
        }
        tokio::time::sleep(duration).await;
        let ended = Stage::Ended {
            outcome,
            duration_sec: duration.as_secs(),
        };
        let body = self.advance(&id, ended, sequence);
        {
            let mut state = self.state.lock().expect("simulator state");
            state.groups.remove(&id);
            if let Some(number) = state.active.remove(&id)
                && let Some(n) = state.per_number.get_mut(&number)
            {
                *n -= 1;
                if *n == 0 {
                    state.per_number.remove(&number);
                }
            }
            *state.status.outcomes.entry(outcome.to_owned()).or_default() += 1;
            if quirks.lose || url.is_none() {
                state.status.webhooks_dropped += 1;
                return;
            }
            if quirks.late {
                state.status.webhooks_late += 1;
            }
        }
        let (Some(url), Some(body)) = (url, body) else {
            return;
        };
        if quirks.late {
            tokio::time::sleep(self.config.late_webhook_delay).await;
        }
        if self.shutdown.is_cancelled() {
            return;
        }
        let sent = Instant::now();
        if self.deliver(&id, &url, body.clone()).await && !quirks.late {
            self.state
                .lock()
                .expect("simulator state")
                .acks
                .push_back((sent, Instant::now()));
        }
        if quirks.twice {
            self.state
                .lock()
                .expect("simulator state")
                .status
                .webhooks_duplicated += 1;
            self.deliver(&id, &url, body).await;
        }
        if quirks.out_of_order && self.config.progress_webhooks && outcome != "THROTTLED" {
            self.state
                .lock()
                .expect("simulator state")
                .status
                .webhooks_out_of_order += 1;
            let call = self.call(&id);
            for stage in [Stage::Ringing, Stage::InProgress] {
                let Some(mut call) = call.clone() else {
                    break;
                };
                call.stage = stage;
                if let Some(body) = self.config.dialect.webhook(&call, sequence + 1) {
                    self.deliver(&id, &url, body).await;
                }
            }
        }
    }

    /// Moves a call to `stage` (never back from its end) and renders the webhook for it.
    fn advance(&self, id: &str, stage: Stage, sequence: u32) -> Option<(&'static str, Vec<u8>)> {
        let mut state = self.state.lock().expect("simulator state");
        let call = state.calls.get_mut(id)?;
        if matches!(call.stage, Stage::Ended { .. }) {
            return None;
        }
        call.stage = stage;
        self.config.dialect.webhook(call, sequence)
    }

    /// Posts a webhook, signed as the dialect signs, retrying while the service cannot
    /// take it. True once a 2xx came.
    async fn deliver(
        &self,
        id: &str,
        url: &str,
        (content_type, payload): (&'static str, Vec<u8>),
    ) -> bool {
        let headers = self.call(id).map(|call| call.headers).unwrap_or_default();
        let mut pause = Duration::from_millis(100);
        for _ in 0..12 {
            if self.shutdown.is_cancelled() {
                return false;
            }
            let mut request = self
                .client
                .post(url)
                .header("content-type", content_type)
                .body(payload.clone());
            if let Some(signer) = &self.signer {
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                let timestamp = chrono::Utc::now().timestamp();
                if let Ok(signature) = signer.sign(&id, timestamp, &payload) {
                    request = request
                        .header("webhook-id", id)
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signature);
                }
            }
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            for (name, value) in self.config.dialect.sign(
                &self.config.api_key,
                self.config.webhook_secret.as_deref(),
                url,
                &payload,
            ) {
                request = request.header(name, value);
            }
            let sent = request.send().await;
            let done = {
                let mut state = self.state.lock().expect("simulator state");
                match sent {
                    Ok(response) if response.status().is_success() => {
                        state.status.webhooks_sent += 1;
                        Some(true)
                    }
                    // The service refused it for good (unknown call, bad signature): give up.
                    Ok(response) if response.status().is_client_error() => {
                        state.status.webhook_failures += 1;
                        Some(false)
                    }
                    _ => {
                        state.status.webhook_failures += 1;
                        None
                    }
                }
            };
            if let Some(delivered) = done {
                return delivered;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(3));
        }
        false
    }
}
