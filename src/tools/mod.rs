//! The tools around the service, apart from its core: the provider simulator, a throwaway
//! PostgreSQL cluster, the benchmarks, the demo and the CSV import. None of the service's
//! own code (api, worker, db, domain, provider) depends on them.

pub mod bench;
pub mod demo;
pub mod import;
pub mod pg;
pub mod sim;

use std::time::Duration;

/// How long to wait before sending again a request the service answered 503 (overloaded, or
/// its database out of reach): its `Retry-After`, else 1 s, at most 10 s. `None` for any
/// other answer.
pub(crate) fn busy_wait(response: &reqwest::Response) -> Option<Duration> {
    (response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then(|| {
        crate::provider::retry_after(response.headers())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(10))
    })
}
