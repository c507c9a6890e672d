//! One log line per request: method, path, status and duration, inside a span that the
//! handlers' own lines join. The query string is left out on purpose: the provider's
//! webhook URL carries the attempt's token there, and whoever reads the logs must not be
//! able to send that attempt's webhooks (poem's `Tracing` middleware logs the whole URI).

use std::{sync::Arc, time::Instant};

use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument as _;

/// The middleware, for `EndpointExt::around`.
pub async fn access_log<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        remote_addr = %req.remote_addr(),
    );
    let started = Instant::now();
    let result = next
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let _entered = span.enter();
    let elapsed = started.elapsed();
    match &result {
        Ok(response) => {
            tracing::info!(status = response.status().as_u16(), ?elapsed, "response")
        }
        Err(err) => {
            tracing::info!(status = err.status().as_u16(), error = %err, ?elapsed, "response")
        }
    }
    result
}
