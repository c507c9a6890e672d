//! The life of each simulated call: its progress webhooks, the call itself, and the final
//! webhook, delivered (and retried) as a provider would.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

impl Simulator {
    /// The life of one call: progress webhooks, the call itself, the final webhook (with
    /// the quirks drawn for it).
    pub(super) async fn play(
        &self,
        id: String,
        url: String,
        duration: Duration,
        outcome: &'static str,
        quirks: Quirks,
    ) {
        let progress = self.config.progress_webhooks && !quirks.out_of_order;
        let step = (duration / 4).min(Duration::from_millis(500));
        if progress {
            // Progress webhooks go out on their own: a service slow to take them must not
            // stretch the call itself, which ends on the clock like a real one.
            let (simulator, id, url) = (self.clone(), id.clone(), url.clone());
            tokio::spawn(async move {
                for status in ["QUEUED", "RINGING", "IN_PROGRESS"] {
                    tokio::time::sleep(step).await;
                    if simulator.shutdown.is_cancelled() {
                        return;
                    }
                    simulator
                        .deliver(&url, &json!({"callId": id, "status": status}))
                        .await;
                }
            });
            tokio::time::sleep(step * 3).await;
        }
        tokio::time::sleep(duration).await;
        {
            let mut state = self.state.lock().expect("simulator state");
            if let Some(number) = state.active.remove(&id)
                && let Some(n) = state.per_number.get_mut(&number)
            {
                *n -= 1;
                if *n == 0 {
                    state.per_number.remove(&number);
                }
            }
            *state.status.outcomes.entry(outcome.to_owned()).or_default() += 1;
            if quirks.lose {
                state.status.webhooks_dropped += 1;
                return;
            }
            if quirks.late {
                state.status.webhooks_late += 1;
            }
        }
        if quirks.late {
            tokio::time::sleep(self.config.late_webhook_delay).await;
        }
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut body = json!({
            "callId": id,
            "status": outcome,
            "completedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if outcome == "COMPLETED" {
            body["durationSec"] = duration.as_secs().into();
        } else {
            body["reason"] =
                format!("simulated {}", outcome.to_lowercase().replace('_', " ")).into();
        }
        let sent = Instant::now();
        if self.deliver(&url, &body).await && !quirks.late {
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
            self.deliver(&url, &body).await;
        }
        if quirks.out_of_order && self.config.progress_webhooks {
            self.state
                .lock()
                .expect("simulator state")
                .status
                .webhooks_out_of_order += 1;
            for status in ["RINGING", "IN_PROGRESS"] {
                self.deliver(&url, &json!({"callId": id, "status": status}))
                    .await;
            }
        }
    }

    /// Posts a webhook, retrying while the service cannot take it. True once a 2xx came.
    async fn deliver(&self, url: &str, body: &Value) -> bool {
        let payload = body.to_string();
        let mut pause = Duration::from_millis(100);
        for _ in 0..12 {
            if self.shutdown.is_cancelled() {
                return false;
            }
            let mut request = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(payload.clone());
            if let Some(signer) = &self.signer {
                let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
                let timestamp = chrono::Utc::now().timestamp();
                if let Ok(signature) = signer.sign(&id, timestamp, payload.as_bytes()) {
                    request = request
                        .header("webhook-id", id)
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signature);
                }
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
