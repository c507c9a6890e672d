//! Runs the processes of a command: the pool, migrations, the HTTP server, and shutdown on
//! SIGTERM or SIGINT.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use poem::{Server, listener::TcpAcceptor};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, ApiState},
    config::Config,
    db,
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
                if tokio::time::Instant::now() < deadline && is_connection_error(&err) =>
            {
                tracing::warn!(error = %err, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err).context("applying database migrations"),
        }
    }
}

fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    )
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

/// Serves the HTTP API on `listener` until `shutdown` is cancelled.
pub async fn serve_api(
    config: &Config,
    pool: PgPool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = Arc::new(ApiState {
        pool,
        max_concurrent_calls: config.max_concurrent_calls,
    });
    let acceptor = TcpAcceptor::from_tokio(listener).context("HTTP listener")?;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            api::app(state),
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

/// `call-orchestrator api`: the HTTP API alone.
pub async fn run_api(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let pool = connect_and_migrate(&config).await?;
    let listener = bind(&config).await?;
    serve_api(&config, pool.clone(), listener, shutdown).await?;
    pool.close().await;
    Ok(())
}
