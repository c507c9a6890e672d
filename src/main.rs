//! `call-orchestrator`: one binary, one subcommand per role.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use call_orchestrator::{
    api, app,
    config::{Config, LogFormat, Needs},
    telemetry,
    tools::bench::BenchArgs,
    tools::demo::{self, DemoArgs},
    tools::import::ImportArgs,
    tools::sim::{SimConfig, Simulator},
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
    /// The whole system on this machine with nothing configured: a private PostgreSQL,
    /// the provider simulator, a sample campaign, live progress and a report.
    Demo(DemoArgs),
    /// The provider simulator alone, for development, load tests and demos.
    ProviderSim(SimConfig),
    /// Send a campaign from a CSV (to, scriptId, metadata.*) through the batch route of a
    /// running service; exit status 1 when any row was rejected.
    Import(ImportArgs),
    /// The benchmarks of BENCHMARKS.md, on private processes it starts itself; prints a
    /// Markdown table (build with --release).
    Bench(BenchArgs),
    /// Exit 0 when the service at --url is healthy, else 1 (for container health checks).
    Healthcheck {
        /// The service's base URL (default: http://127.0.0.1:$PORT).
        #[arg(long)]
        url: Option<String>,
    },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Logging for the commands that take no service configuration.
fn quiet_logs(default_level: &str) -> telemetry::Guards {
    telemetry::init(&Config {
        rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.into()),
        log_format: match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        },
        ..Config::default()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let needs = match cli.command {
        Command::Openapi => {
            print!("{}", api::openapi_yaml());
            return ExitCode::SUCCESS;
        }
        Command::Demo(args) => return run_demo(args),
        Command::ProviderSim(config) => return run_simulator(config),
        Command::Healthcheck { url } => return healthcheck(url),
        Command::Import(args) => return run_import(args),
        Command::Bench(args) => {
            let _guards = quiet_logs("error");
            return finish(runtime().block_on(call_orchestrator::tools::bench::run(args)));
        }
        Command::Serve | Command::Worker => Needs::Provider,
        Command::Api => Needs::Api,
        Command::Migrate => Needs::Database,
    };
    let config = match Config::load(cli.config.as_deref(), needs) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let _guards = telemetry::init(&config);
    let result = runtime().block_on(async {
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
            _ => unreachable!("handled above"),
        }
    });
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(args: DemoArgs) -> ExitCode {
    let _guards = quiet_logs("error");
    match runtime().block_on(demo::run(args)) {
        Err(err) if demo::is_not_installed(&err) => {
            eprintln!("{err}");
            ExitCode::from(2)
        }
        other => finish(other),
    }
}

fn run_simulator(config: SimConfig) -> ExitCode {
    if let Err(problem) = config.validate() {
        eprintln!("configuration error: {problem}");
        return ExitCode::from(2);
    }
    let _guards = quiet_logs("info");
    finish(runtime().block_on(async {
        let shutdown = app::shutdown_signal();
        let simulator = Simulator::start(config).await?;
        tracing::info!(url = %simulator.url(), dialect = simulator.dialect().name(), "provider simulator listening; status at /status");
        shutdown.cancelled().await;
        simulator.stop();
        Ok(())
    }))
}

fn run_import(args: ImportArgs) -> ExitCode {
    let _guards = quiet_logs("error");
    match runtime().block_on(call_orchestrator::tools::import::run(args)) {
        Ok(report) if report.rejected.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(url: Option<String>) -> ExitCode {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
        format!("http://127.0.0.1:{port}")
    });
    let healthy = runtime().block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let response = client
            .get(format!("{}/health", url.trim_end_matches('/')))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    });
    match healthy {
        Some(()) => ExitCode::SUCCESS,
        None => {
            eprintln!("unhealthy: {url}/health did not answer 200");
            ExitCode::FAILURE
        }
    }
}
