//! Runs the processes of a command: the pool, migrations, the HTTP server, and shutdown on
//! SIGTERM or SIGINT.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use poem::{Server, listener::TcpAcceptor};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tokio::task::JoinSet;

use crate::{
    api::{self, ApiState, Writers, listener::GuardedAcceptor},
    config::Config,
    db,
    domain::{WebhookTokens, decide::Retry},
    provider::{self, CallProvider},
    worker::{Deliverer, Dispatcher, EventSettings, Sweeper, Wakeups, Worker, WorkerSettings},
};

/// Opens the pool and applies pending migrations, waiting for a database that is still
/// starting (as in a fresh compose stack) for up to a minute.
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    let pool = db::connect_lazy(config.database_url().expose(), config.db_max_connections)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match db::migrate(&pool).await {
            Ok(()) => return Ok(pool),
            Err(sqlx::migrate::MigrateError::Execute(err))
                if tokio::time::Instant::now() < deadline && db::is_unavailable(&err) =>
            {
                tracing::warn!(error = %err, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err).context("applying database migrations"),
        }
    }
}

/// Cancelled by the first SIGTERM or SIGINT; a second one exits at once.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down; a second signal exits at once");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The webhook tokens' key, shared by the replicas through the database.
pub async fn webhook_tokens(pool: &PgPool) -> anyhow::Result<WebhookTokens> {
    let key = db::webhook_token_key(pool)
        .await
        .context("reading the webhook token key (run `migrate`?)")?;
    Ok(WebhookTokens::new(key))
}

/// Serves the HTTP API on `listener` (and, with `METRICS_PORT`, `/metrics` on a listener of
/// its own) until `shutdown` is cancelled.
pub async fn serve_api(
    config: &Config,
    pool: PgPool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tokens = webhook_tokens(&pool).await?;
    crate::metrics::handle();
    let provider = provider::from_config(config).context("building the provider")?;
    tracing::info!(
        provider = provider.name(),
        route = provider.webhook_path(),
        "webhooks are verified by {}",
        provider.webhook_proof()
    );
    if config.webhook_secret.is_some() && matches!(provider.name(), "twilio" | "retell") {
        tracing::warn!(
            provider = provider.name(),
            "WEBHOOK_SECRET is not used: this vendor signs its webhooks with AI_CALL_API_KEY"
        );
    }
    let writers = api_writers(config, &pool);
    let state = Arc::new(ApiState::new(config, pool, tokens, provider, writers));
    let metrics = match config.metrics_port {
        Some(port) => {
            let address = format!("{}:{port}", config.host);
            let listener = TcpListener::bind(&address)
                .await
                .with_context(|| format!("cannot listen on {address} (METRICS_PORT)"))?;
            tracing::info!(%address, "metrics listening at /metrics");
            let server = serve(
                HttpLimits::of(config),
                listener,
                api::metrics_app(state.clone()),
                shutdown.clone(),
            );
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let served = serve(HttpLimits::of(config), listener, api::app(state), shutdown).await;
    if let Some(metrics) = metrics {
        metrics.await??;
    }
    served
}

/// Starts the API's background writers on the current Tokio runtime: the wake-up of the
/// dispatchers, and the group commit of creates and of webhooks (up to four lanes each,
/// each holding one connection while it writes).
pub fn api_writers(config: &Config, pool: &PgPool) -> Writers {
    let policy = config.retry_policy();
    let lanes = (config.db_max_connections as usize / 3).clamp(1, 4);
    let rules = config.schedule_rules();
    let webhooks = {
        let pool = pool.clone();
        db::Batcher::start("webhook", lanes, 64, move |updates| {
            let pool = pool.clone();
            async move {
                db::apply_webhooks(&pool, &updates, || Retry {
                    policy,
                    jitter: fastrand::f64(),
                    rules,
                })
                .await
            }
        })
    };
    let creates = {
        let pool = pool.clone();
        db::Batcher::start("create", lanes, 128, move |calls| {
            let pool = pool.clone();
            async move { db::create_each(&pool, &calls).await }
        })
    };
    Writers {
        wakeup: db::Wakeup::spawn(pool.clone()),
        creates,
        webhooks,
    }
}

/// `HTTP_MAX_CONNECTIONS` and `HTTP_READ_TIMEOUT`.
#[derive(Clone, Copy)]
struct HttpLimits {
    max_connections: usize,
    read_timeout: Duration,
}

impl HttpLimits {
    fn of(config: &Config) -> Self {
        Self {
            max_connections: config.http_max_connections as usize,
            read_timeout: config.http_read_timeout,
        }
    }
}

/// Runs one HTTP server with the connection bound and the request head deadline of
/// `api::listener`.
async fn serve(
    limits: HttpLimits,
    listener: TcpListener,
    app: impl poem::Endpoint + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = GuardedAcceptor::new(
        TcpAcceptor::from_tokio(listener).context("HTTP listener")?,
        limits.max_connections,
        limits.read_timeout,
    );
    Server::new_with_acceptor(acceptor)
        // A kept-alive connection idle (or stalled in a later request) for this long ends.
        .idle_timeout(limits.read_timeout.max(Duration::from_secs(5)))
        .run_with_graceful_shutdown(
            app,
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(30)),
        )
        .await
        .context("HTTP server failed")
}

/// Binds `HOST:PORT`.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address} (PORT, HOST)"))?;
    tracing::info!(%address, "HTTP API listening; docs at /docs");
    Ok(listener)
}

/// Which parts of the service a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The HTTP API (and the webhook route).
    pub api: bool,
    /// The dispatcher and the sweeper.
    pub worker: bool,
}

impl Roles {
    pub const SERVE: Roles = Roles {
        api: true,
        worker: true,
    };
    pub const API: Roles = Roles {
        api: true,
        worker: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        worker: true,
    };
}

/// The worker's handles, built from the configuration, with its batching of the
/// provider's 2xx answers started on the current Tokio runtime.
pub async fn worker(config: &Config, pool: PgPool) -> anyhow::Result<Worker> {
    crate::metrics::handle();
    let provider: Arc<dyn CallProvider> =
        provider::from_config(config).context("building the provider")?;
    if provider.has_look_up() && config.reconcile_after >= config.call_timeout {
        tracing::warn!(
            reconcile_after = %humantime::format_duration(config.reconcile_after),
            call_timeout = %humantime::format_duration(config.call_timeout),
            "RECONCILE_AFTER is not shorter than CALL_TIMEOUT: calls whose webhook is lost \
             expire before they are looked up"
        );
    }
    let settings = WorkerSettings::from_config(config, webhook_tokens(&pool).await?);
    let accepts = {
        let pool = pool.clone();
        db::Batcher::start("accepted", 2, 256, move |accepted: Vec<db::Accepted>| {
            let pool = pool.clone();
            async move { db::record_accepted_each(&pool, &accepted).await }
        })
    };
    Ok(Worker::new(pool, provider, settings, accepts))
}

/// `serve`, `api`, `worker`: runs the chosen parts until SIGTERM or SIGINT, then lets each
/// finish what it started (the HTTP requests in flight, the provider requests in flight).
pub async fn run(config: Config, roles: Roles) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let pool = connect_and_migrate(&config).await?;
    let listener = if roles.api {
        Some(bind(&config).await?)
    } else {
        None
    };
    let result = run_parts(&config, roles, pool.clone(), listener, shutdown).await;
    pool.close().await;
    tracing::info!("stopped");
    result
}

/// The calling window and time zone policy in force, once at start: what an operator
/// checks first when calls wait or go at an unexpected hour.
fn log_schedule_policy(config: &Config) {
    let rules = config.schedule_rules();
    let policy = config.retry_policy();
    let retried: Vec<&str> = crate::domain::FailedOutcome::ALL
        .into_iter()
        .filter(|o| policy.outcomes.retries(*o))
        .map(|o| o.as_str())
        .collect();
    if rules.window.is_off() {
        tracing::warn!("CALLING_WINDOW is off: calls are dialed at any hour of the callee's day");
    }
    tracing::info!(
        calling_window = %rules.window,
        time_zones = "the call's timezone, else the number's prefix (libphonenumber), else DEFAULT_TIMEZONE",
        default_timezone = %rules.default_zone,
        libphonenumber = crate::domain::schedule::zones::DATA_VERSION.trim(),
        tzdb = chrono_tz::IANA_TZDB_VERSION,
        max_attempts_per_number_per_day = rules.max_attempts_per_number_per_day,
        retry_outcomes = %retried.join(","),
        "calling policy"
    );
}

/// Runs the chosen parts on an open pool (and, for the API, a bound listener) until
/// `shutdown` is cancelled or one part fails, which then stops the others.
pub async fn run_parts(
    config: &Config,
    roles: Roles,
    pool: PgPool,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut parts: JoinSet<anyhow::Result<()>> = JoinSet::new();
    log_schedule_policy(config);
    if let Some(listener) = listener.filter(|_| roles.api) {
        let (config, pool, shutdown) = (config.clone(), pool.clone(), shutdown.clone());
        parts.spawn(async move { serve_api(&config, pool, listener, shutdown).await });
    }
    if roles.worker {
        let worker = worker(config, pool.clone()).await?;
        tracing::info!(
            cap = config.max_concurrent_calls,
            provider = config.ai_call_api_url.as_deref().unwrap_or_default(),
            "dispatcher and sweeper running"
        );
        let token = shutdown.clone();
        let upkeep_pool = worker.pool.clone();
        parts.spawn(async move {
            crate::worker::keep_queue_lean(upkeep_pool, token).await;
            Ok(())
        });
        let (token, fold_pool) = (shutdown.clone(), worker.pool.clone());
        parts.spawn(async move {
            crate::worker::keep_counts_folded(fold_pool, token).await;
            Ok(())
        });
        if let Some(period) = config.retention_period {
            let (token, retention_pool) = (shutdown.clone(), worker.pool.clone());
            parts.spawn(async move {
                crate::worker::keep_retention(retention_pool, period, token).await;
                Ok(())
            });
        }
        let wakeups = Wakeups::spawn(worker.pool.clone(), shutdown.clone());
        let deliverer = Deliverer::new(worker.pool.clone(), EventSettings::from_config(config));
        let (token, wake) = (shutdown.clone(), wakeups.events);
        parts.spawn(async move {
            deliverer.run_woken(token, wake).await;
            Ok(())
        });
        let dispatcher = Dispatcher::new(worker.clone());
        let sweeper = Sweeper::new(worker);
        let (token, wake) = (shutdown.clone(), wakeups.calls);
        parts.spawn(async move {
            dispatcher.run_woken(token, wake).await;
            Ok(())
        });
        let token = shutdown.clone();
        parts.spawn(async move {
            sweeper.run(token).await;
            Ok(())
        });
    }
    let mut failure = None;
    while let Some(ended) = parts.join_next().await {
        let result = ended.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(err) = result {
            // One part failing takes the process down cleanly rather than half-alive.
            shutdown.cancel();
            failure.get_or_insert(err);
        }
    }
    failure.map_or(Ok(()), Err)
}
