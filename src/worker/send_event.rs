//! One try of one delivery: the body, its Standard Webhooks signature, and the request to
//! the client's endpoint through a client that cannot be turned against the service's own
//! network.
//!
//! The client follows no redirect, uses no proxy, and resolves names through
//! [`GuardedResolver`], which refuses a name if any of its addresses is one events may not
//! go to (`domain::event_url`). Because the check runs on the addresses the connection is
//! then made to, a name that answers a public address when registered and a private one
//! when used (DNS rebinding) is refused at that moment. Literal addresses never reach a
//! resolver, so the URL itself is checked again before each try.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::event_url::{self, Refused};

/// An address the guard refused, carried through reqwest's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves to {refused}")]
struct RefusedName {
    name: String,
    refused: Refused,
}

/// Resolves with the system's resolver, then refuses names with a forbidden address.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(refused) = addrs
                .iter()
                .find_map(|a| event_url::refused(a.ip(), allow_private))
            {
                return Err(Box::new(RefusedName {
                    name: host,
                    refused,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client of the delivery workers: `timeout` per request, no redirects, no
/// proxy, names resolved through the guard.
pub fn client(timeout: Duration, allow_private: bool, per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .pool_max_idle_per_host(per_host)
        .user_agent(concat!(
            "call-orchestrator-events/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .expect("the delivery client's settings are valid")
}

/// How one try went.
#[derive(Debug)]
pub enum Sent {
    /// A 2xx answer.
    Delivered(u16),
    /// Another answer; with the seconds of its `Retry-After`, if it gave them.
    Rejected(u16, Option<u64>),
    /// No answer within the time limit.
    Timeout,
    /// No connection (refused, reset, TLS, DNS).
    Unreachable(String),
    /// The URL or what its name resolves to is not a place events go.
    Refused(String),
    /// Not sent at all: no secret to sign it with, or no body to sign.
    Unsigned(String),
}

impl Sent {
    /// The label of `call_orchestrator_event_delivery_tries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered(_) => "delivered",
            Self::Rejected(..) => "rejected",
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Refused(_) => "refused",
            Self::Unsigned(_) => "not_sent",
        }
    }

    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Delivered(code) | Self::Rejected(code, _) => Some(*code),
            _ => None,
        }
    }

    /// What went wrong, for the delivery's `lastError`.
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Delivered(_) => None,
            Self::Rejected(code, _) if (300..400).contains(code) => Some(format!(
                "answered {code}, a redirect, which is not followed"
            )),
            Self::Rejected(code, _) => Some(format!("answered {code}")),
            Self::Timeout => Some("no answer within the time limit".into()),
            Self::Unreachable(why) => Some(format!("unreachable: {why}")),
            Self::Refused(why) => Some(format!("refused: {why}")),
            Self::Unsigned(why) => Some(format!("not sent: {why}")),
        }
    }
}

/// The labels of `Sent`, for the metrics.
pub const TRY_OUTCOMES: &[&str] = &[
    "delivered",
    "rejected",
    "timeout",
    "unreachable",
    "refused",
    "not_sent",
];

/// A request about to be sent.
pub struct Outgoing<'a> {
    pub url: &'a str,
    /// `webhook-id`: the event's id, the same on every try.
    pub id: &'a str,
    pub body: &'a str,
    /// Signers of every secret in force (a rotated one for a while too).
    pub signers: &'a [standardwebhooks::Webhook],
    pub now: DateTime<Utc>,
}

/// Signs and sends one try.
pub async fn send(client: &reqwest::Client, allow_private: bool, out: Outgoing<'_>) -> Sent {
    if let Err(why) = event_url::check_url(out.url, allow_private) {
        return Sent::Refused(why.trim_start_matches("`url` ").to_owned());
    }
    let timestamp = out.now.timestamp();
    let signatures: Vec<String> = out
        .signers
        .iter()
        .filter_map(|s| s.sign(out.id, timestamp, out.body.as_bytes()).ok())
        .collect();
    let request = client
        .post(out.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", out.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(out.body.to_owned());
    match request.send().await {
        Ok(answer) => {
            let code = answer.status().as_u16();
            if answer.status().is_success() {
                return Sent::Delivered(code);
            }
            let retry_after = answer
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            Sent::Rejected(code, retry_after)
        }
        Err(err) if err.is_timeout() => Sent::Timeout,
        Err(err) => match refused_name(&err) {
            Some(why) => Sent::Refused(why),
            // Bounded: it goes into the delivery's `lastError`.
            None => Sent::Unreachable(
                crate::provider::error_chain(&err)
                    .chars()
                    .take(500)
                    .collect(),
            ),
        },
    }
}

fn refused_name(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<RefusedName>() {
            return Some(refused.to_string());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused_when_connecting() {
        let strict = GuardedResolver {
            allow_private: false,
        };
        let name = || "localhost".parse::<Name>().unwrap();
        let refused = match strict.resolve(name()).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(err) => err.to_string(),
        };
        assert!(refused.contains("loopback or private"), "{refused}");
        let open = GuardedResolver {
            allow_private: true,
        };
        assert!(open.resolve(name()).await.is_ok());
        // Through the client, where the URL check is not made: the resolver alone refuses.
        let client = client(Duration::from_secs(2), false, 1);
        let err = client.post("http://localhost:9/").send().await.unwrap_err();
        assert!(
            refused_name(&err).is_some_and(|why| why.contains("localhost")),
            "{err}"
        );
    }
}
