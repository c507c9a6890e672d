//! `call-orchestrator`: one binary, one subcommand per role.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use call_orchestrator::{
    api, app,
    config::{Config, Needs},
    telemetry,
};

/// Places AI phone calls through a provider, with PostgreSQL as the only queue.
#[derive(Parser)]
#[command(name = "call-orchestrator", version, about)]
struct Cli {
    /// A TOML file of settings (lower-case names of the environment variables); the
    /// environment still wins over it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP API, dispatcher and sweeper in one process (the usual deployment unit).
    Serve,
    /// Serve the HTTP API only (no dispatching).
    Api,
    /// The dispatcher and the sweeper only (no HTTP API).
    Worker,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document the server serves (YAML).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", api::openapi_yaml());
        return ExitCode::SUCCESS;
    }
    let needs = match cli.command {
        Command::Serve | Command::Worker => Needs::Provider,
        _ => Needs::Database,
    };
    let config = match Config::load(cli.config.as_deref(), needs) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let _guards = telemetry::init(&config);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => app::run(config, app::Roles::SERVE).await,
            Command::Api => app::run(config, app::Roles::API).await,
            Command::Worker => app::run(config, app::Roles::WORKER).await,
            Command::Migrate => {
                let pool = app::connect_and_migrate(&config).await?;
                tracing::info!("migrations applied");
                pool.close().await;
                Ok(())
            }
            Command::Openapi => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
