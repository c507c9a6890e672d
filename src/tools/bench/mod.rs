//! `call-orchestrator bench`: the benchmarks of BENCHMARKS.md, on private processes it starts
//! itself (a PostgreSQL cluster, the provider simulator, `serve` children of this binary),
//! each figure over several runs (min / median / max) beside PostgreSQL's own ceiling measured
//! in the same run. Prints a Markdown table.

mod steps;

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::tools::pg::{ClusterOptions, PgCluster};

/// The benchmarks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Step {
    /// Raw INSERT and UPDATE transactions per second, and a bare SKIP LOCKED claim.
    Ceiling,
    /// POST /api/v1/calls requests per second and latency; the batch route in calls/s.
    Ingest,
    /// Cap 1: from the final webhook's 2xx to the next dial request.
    Refill,
    /// Cap 1000, an instant provider: completed calls per second end to end (and memory).
    Lifecycle,
    /// The claim against queue depth and churn.
    Claim,
    /// Every read route with `--scale-calls` calls stored, against the same with 1,000.
    Scale,
    /// `serve` under steady load for `--soak-minutes`: dead tuples, memory, reads (not run
    /// unless named: it lasts half an hour by default).
    Soak,
}

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Runs of each measurement (min / median / max are over these).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Which benchmarks to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,ingest,refill,lifecycle,claim,scale"
    )]
    pub only: Vec<Step>,
    /// Seconds each throughput measurement lasts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Database connections of the load (and of the service's pool).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub clients: u32,
    /// Concurrent HTTP requests of the ingest load.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Calls through the refill benchmark (cap 1).
    #[arg(long, default_value_t = 600)]
    pub refill_calls: u32,
    /// Calls through the lifecycle benchmark.
    #[arg(long, default_value_t = 20_000)]
    pub lifecycle_calls: u32,
    /// PENDING rows (and as many final ones) for the deep-queue claim, and calls of churn.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(0..=9_000_000))]
    pub claim_rows: u32,
    /// Calls stored for the scale step (its fill takes a few minutes per ten million).
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1_000..=50_000_000))]
    pub scale_calls: u64,
    /// Requests to each read route (and as many with 1,000 calls) per run of the scale step.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scale_requests: u32,
    /// Minutes of the soak.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub soak_minutes: u64,
    /// Creates a second during the soak.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub soak_rate: u32,
    /// Also write the report to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// A setting of the service under test, `NAME=VALUE`, over its defaults (repeatable), to
    /// measure what a setting costs: `--service-env RUST_LOG=error`.
    #[arg(long, value_parser = parse_setting)]
    pub service_env: Vec<(String, String)>,
}

fn parse_setting(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{raw}` is not NAME=VALUE")),
    }
}

/// min / median / max of one figure over the runs.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
    /// What to read it against: the ceiling measured in the same run, or the target.
    pub against: String,
}

impl Figure {
    fn summary(&self) -> (f64, f64, f64) {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        (
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
        )
    }

    pub fn median(&self) -> f64 {
        self.summary().1
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The Markdown report.
pub fn render(figures: &[Figure], args: &BenchArgs, wall: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| benchmark | unit | min | median | max | read against |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- |");
    for figure in figures {
        let (min, median, max) = figure.summary();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            figure.name,
            figure.unit,
            format_value(min),
            format_value(median),
            format_value(max),
            figure.against
        );
    }
    let _ = writeln!(
        out,
        "\n{} runs each, {} s per throughput run, {} database clients, {} concurrent HTTP requests; {} cores; the service in its default configuration{}; whole run {:.0} s.",
        args.runs,
        args.seconds,
        args.clients,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.service_env.is_empty() {
            String::new()
        } else {
            let set: Vec<String> = args
                .service_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(" but {}", set.join(" "))
        },
        wall.as_secs_f64()
    );
    out
}

/// Runs the chosen benchmarks and prints (and optionally writes) the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    steps::set_service_env(args.service_env.clone());
    let cluster = PgCluster::start(ClusterOptions { durable: true }).await?;
    eprintln!(
        "bench: PostgreSQL (fsync on) at 127.0.0.1:{}; {} run(s) each",
        cluster.port(),
        args.runs
    );
    let mut figures = Vec::new();
    let mut ceiling = steps::Ceiling::default();
    for step in &args.only {
        eprintln!("bench: {step:?}…");
        match step {
            Step::Ceiling => {
                let (found, mut measured) = steps::ceiling(&cluster, &args).await?;
                ceiling = found;
                figures.append(&mut measured);
            }
            Step::Ingest => figures.append(&mut steps::ingest(&cluster, &args, &ceiling).await?),
            Step::Refill => figures.append(&mut steps::refill(&cluster, &args).await?),
            Step::Lifecycle => figures.append(&mut steps::lifecycle(&cluster, &args).await?),
            Step::Claim => figures.append(&mut steps::claim(&cluster, &args).await?),
            Step::Scale => figures.append(&mut steps::scale(&cluster, &args).await?),
            Step::Soak => figures.append(&mut steps::soak(&cluster, &args).await?),
        }
    }
    let report = render(&figures, &args, started.elapsed());
    println!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)?;
    }
    Ok(())
}
