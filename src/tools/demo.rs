//! `call-orchestrator demo`: the whole system on one machine with nothing configured — a
//! private PostgreSQL cluster, the provider simulator, the service, a sample campaign, live
//! progress and a final report.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{
    app,
    config::{Config, Secret},
    domain::{PhoneNumber, schedule::Rules},
    tools::{
        pg::{ClusterOptions, PgCluster, PgError},
        sim::{Dialect, OutcomeMix, SimConfig, Simulator, TWILIO_ACCOUNT_SID},
    },
};

/// What the demo runs.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Calls in the sample campaign.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub calls: u32,
    /// Distinct numbers they go to (fewer than calls: some numbers are called more than once).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub numbers: u32,
    /// MAX_CONCURRENT_CALLS.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub cap: u32,
    /// How the simulated calls end, as weights.
    #[arg(
        long,
        default_value = "completed=70,busy=10,no-answer=10,voicemail=5,failed=5"
    )]
    pub outcomes: OutcomeMix,
    /// Shortest simulated call.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub min_duration: Duration,
    /// Longest simulated call.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Share of dial requests the simulator answers 503.
    #[arg(long, default_value_t = 0.03)]
    pub error_rate: f64,
    /// Share of dial requests the simulator answers 429.
    #[arg(long, default_value_t = 0.02)]
    pub rate_limit_rate: f64,
    /// Seed of the simulator's draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The API's port.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Leave the API (and the simulator) running after the report, for curl and Swagger UI,
    /// until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Which provider's API the service speaks, to the simulator playing it: generic,
    /// twilio, retell, vapi or bland.
    #[arg(long, value_enum, default_value_t = Dialect::Generic)]
    pub provider: Dialect,
    /// Use this PostgreSQL instead of a private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Keep the private cluster in this folder (reused by the next run) instead of a
    /// temporary one deleted at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs the demo; `Err` with a `PgError::NotInstalled` inside means "say what to install".
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = app::shutdown_signal();
    let started = Instant::now();
    let (cluster, database_url) = match &args.database_url {
        Some(url) => (None, url.clone()),
        None => {
            let cluster = match &args.data_dir {
                Some(dir) => PgCluster::start_in(dir, ClusterOptions::default()).await?,
                None => PgCluster::start(ClusterOptions::default()).await?,
            };
            eprintln!(
                "PostgreSQL: private cluster on 127.0.0.1:{} in {}",
                cluster.port(),
                cluster.folder().display()
            );
            let url = cluster.url("postgres");
            (Some(cluster), url)
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("port {} is taken; pick another with --port", args.port))?;
    let port = listener.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let random = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        uuid::Uuid::new_v4().as_bytes(),
    );
    // Each dialect signs as its vendor does: the generic one per Standard Webhooks, Vapi
    // and Bland with a secret of their own, Twilio and Retell with the key.
    let secret = match args.provider {
        Dialect::Generic => Some(format!("whsec_{random}")),
        Dialect::Vapi | Dialect::Bland => Some(random),
        Dialect::Twilio | Dialect::Retell => None,
    };
    let simulator = Simulator::start(SimConfig {
        dialect: args.provider,
        // Retell takes its webhook URL from the agent, not from the dial.
        webhook_url: Some(format!("{base}{}", args.provider.webhook_path())),
        port: 0,
        api_key: "demo-key".into(),
        webhook_secret: secret.clone(),
        seed: args.seed,
        min_duration: args.min_duration,
        max_duration: args.max_duration.max(args.min_duration),
        outcomes: args.outcomes.clone(),
        error_rate: args.error_rate.clamp(0.0, 1.0),
        rate_limit_rate: args.rate_limit_rate.clamp(0.0, 1.0),
        ..SimConfig::default()
    })
    .await
    .context("starting the provider simulator")?;
    let config = Config {
        host: "127.0.0.1".into(),
        port,
        database_url: Some(Secret::new(database_url)),
        ai_call_provider: args.provider.name().into(),
        ai_call_api_url: Some(simulator.url()),
        ai_call_api_key: Some(Secret::new("demo-key")),
        ai_call_from_number: Some("+15550000000".into()),
        ai_call_phone_number_id: Some("demo-phone-number".into()),
        twilio_account_sid: Some(TWILIO_ACCOUNT_SID.into()),
        twilio_twiml_url: Some(format!("{base}/demo-twiml")),
        webhook_base_url: Some(base.clone()),
        webhook_secret: secret.map(Secret::new),
        max_concurrent_calls: args.cap,
        retry_base_delay: Duration::from_secs(1),
        retry_max_delay: Duration::from_secs(10),
        call_timeout: Duration::from_secs(60) + args.max_duration,
        reconcile_after: Duration::from_secs(15) + args.max_duration,
        provider_timeout: Duration::from_secs(5),
        db_max_connections: 20,
        ..Config::default()
    };
    let pool = app::connect_and_migrate(&config).await?;
    let service = tokio::spawn({
        let (config, pool, token) = (config.clone(), pool.clone(), shutdown.clone());
        async move { app::run_parts(&config, app::Roles::SERVE, pool, Some(listener), token).await }
    });
    eprintln!(
        "Service: API on {base} (Swagger UI at {base}/docs), cap {}",
        args.cap
    );
    eprintln!(
        "Provider simulator ({}): {}",
        args.provider.name(),
        simulator.url()
    );

    let client = reqwest::Client::new();
    let outcome = async {
        let ids = submit_campaign(&client, &base, &args, &config.schedule_rules()).await?;
        let peak_seen = follow(&client, &base, &args, ids.len(), &shutdown).await?;
        Ok::<_, anyhow::Error>((ids.len(), peak_seen))
    }
    .await;
    match outcome {
        Ok((total, peak_seen)) if !shutdown.is_cancelled() => {
            report(
                &pool,
                &simulator,
                &args,
                total,
                peak_seen,
                started.elapsed(),
            )
            .await?;
            if args.keep_running {
                eprintln!(
                    "\nStill running: try `curl {base}/api/v1/metrics` or open {base}/docs. Ctrl-C to stop."
                );
                shutdown.cancelled().await;
            }
        }
        Ok(_) => eprintln!("interrupted"),
        Err(err) => {
            shutdown.cancel();
            let _ = service.await;
            return Err(err);
        }
    }
    shutdown.cancel();
    service.await.context("the service task")??;
    pool.close().await;
    simulator.stop();
    drop(cluster);
    Ok(())
}

/// True when the error means the PostgreSQL server binaries are missing.
pub fn is_not_installed(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<PgError>(), Some(PgError::NotInstalled))
}

/// Prefixes of one time zone each, spread round the world: at any hour, the callee's
/// window (08:00-21:00) is open in at least one of them, and closed in another.
const DEMO_PREFIXES: &[&str] = &[
    "+1415", "+1212", "+4420", "+4930", "+9714", "+9122", "+65", "+813", "+612", "+649",
];

/// The demo's numbers: the prefix whose calling window stays open longest from now (so the
/// demo finishes at any hour), and one whose window is closed now (those calls wait for it).
fn demo_prefixes(rules: &Rules) -> (&'static str, Option<&'static str>) {
    let now = chrono::Utc::now();
    let zones = |prefix: &str| {
        let number = PhoneNumber::parse(&format!("{prefix}2000000")).expect("a valid prefix");
        rules.zones(&number, None).into_owned()
    };
    // How long each prefix's window stays open from now, in minutes (0: closed now).
    let open_for = |prefix: &str| {
        let zones = zones(prefix);
        (0..=13 * 60)
            .take_while(|m| {
                rules
                    .window
                    .is_open(&zones, now + chrono::Duration::minutes(*m))
            })
            .count()
    };
    let open = DEMO_PREFIXES
        .iter()
        .copied()
        .max_by_key(|p| open_for(p))
        .expect("prefixes");
    let closed = DEMO_PREFIXES.iter().copied().find(|p| open_for(p) == 0);
    (open, closed)
}

/// Sends the campaign through the batch route, as a client would. Most calls go to numbers
/// whose calling window is open now; one in twenty to numbers where it is night, with a
/// deadline a few seconds away: they wait for their window and expire at their deadline,
/// never dialed; one in twenty asks not to be called for a few seconds (`notBefore`).
async fn submit_campaign(
    client: &reqwest::Client,
    base: &str,
    args: &DemoArgs,
    rules: &Rules,
) -> anyhow::Result<Vec<String>> {
    let (open, closed) = demo_prefixes(rules);
    let soon = chrono::Utc::now() + chrono::Duration::seconds(5);
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(15);
    let calls: Vec<Value> = (0..args.calls)
        .map(|i| {
            let number = i % args.numbers.max(1);
            let mut call = json!({
                "to": format!("{open}{:07}", 2_000_000 + number),
                "scriptId": "welcomeFlow",
                "metadata": {"customerName": format!("Customer {i}"), "row": i},
            });
            match (i % 20, closed) {
                (7, Some(closed)) => {
                    call["to"] = json!(format!("{closed}{:07}", 2_000_000 + number));
                    call["notAfter"] = json!(deadline.to_rfc3339());
                }
                (13, _) => call["notBefore"] = json!(soon.to_rfc3339()),
                _ => {}
            }
            call
        })
        .collect();
    let mut ids = Vec::with_capacity(calls.len());
    for chunk in calls.chunks(crate::api::MAX_BATCH) {
        let response = client
            .post(format!("{base}/api/v1/calls/batch"))
            .json(&json!({"calls": chunk}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "the batch was refused: {body}");
        ids.extend(
            body["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str().map(str::to_owned)),
        );
    }
    eprintln!(
        "Campaign: {} calls to {} numbers submitted in one batch per 1000",
        ids.len(),
        args.numbers.min(args.calls)
    );
    eprintln!(
        "Calling window {}: calls to {open}… go now{}; one in twenty waits 5 s for its notBefore",
        rules.window,
        closed.map_or(String::new(), |c| format!(
            ", one in twenty to {c}… waits for its window and expires at its deadline"
        )),
    );
    Ok(ids)
}

/// Shows progress until every call is final; returns the most calls seen in progress.
async fn follow(
    client: &reqwest::Client,
    base: &str,
    args: &DemoArgs,
    total: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<i64> {
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:40.cyan/blue}] {pos:>6}/{len:<6} {msg}")
            .expect("static template")
            .progress_chars("=> ");
    let done = bars.add(
        ProgressBar::new(total as u64)
            .with_style(style.clone())
            .with_prefix("calls ended"),
    );
    let slots = bars.add(
        ProgressBar::new(u64::from(args.cap))
            .with_style(style)
            .with_prefix("slots in use"),
    );
    let mut peak = 0;
    let mut last_line = Instant::now();
    loop {
        let metrics: Value = client
            .get(format!("{base}/api/v1/metrics"))
            .send()
            .await?
            .json()
            .await?;
        let n = |status: &str| metrics["data"][status].as_i64().unwrap_or(0);
        let ended = n("COMPLETED") + n("FAILED") + n("EXPIRED") + n("CANCELLED");
        let in_progress = n("IN_PROGRESS");
        peak = peak.max(in_progress);
        done.set_position(ended as u64);
        done.set_message(format!(
            "completed {} · failed {} · expired {} · pending {}",
            n("COMPLETED"),
            n("FAILED"),
            n("EXPIRED"),
            n("PENDING")
        ));
        slots.set_position(in_progress as u64);
        slots.set_message(format!("cap {} · peak {peak}", args.cap));
        if bars.is_hidden() && last_line.elapsed() > Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!(
                "{ended}/{total} calls ended, {in_progress} in progress (cap {})",
                args.cap
            );
        }
        if ended as usize >= total {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    done.finish();
    slots.finish();
    Ok(peak)
}

async fn report(
    pool: &sqlx::PgPool,
    simulator: &Simulator,
    args: &DemoArgs,
    total: usize,
    peak_seen: i64,
    wall: Duration,
) -> anyhow::Result<()> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM calls GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?;
    let (dials, retried): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(attempts), 0)::bigint, count(*) FILTER (WHERE attempts > 1) FROM calls",
    )
    .fetch_one(pool)
    .await?;
    let (waited_window, waited_start, expired_undialed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT call_id) FILTER (WHERE detail->>'reason' IN ('CALLING_WINDOW', 'DEADLINE')),
                count(DISTINCT call_id) FILTER (WHERE detail->>'reason' = 'NOT_BEFORE'),
                (SELECT count(*) FROM calls WHERE status = 'EXPIRED' AND attempts = 0)
         FROM call_events WHERE kind = 'WAITING'",
    )
    .fetch_one(pool)
    .await?;
    let sim = simulator.status();
    let held = |ok: bool| if ok { "held" } else { "BROKEN" };
    println!();
    println!(
        "call-orchestrator demo: {total} calls to {} numbers, cap {}",
        args.numbers.min(args.calls),
        args.cap
    );
    println!();
    println!("  {:<28} {:>10}", "final status", "calls");
    for (status, count) in &by_status {
        println!("  {status:<28} {count:>10}");
    }
    println!();
    println!("  {:<28} {:>10}", "dial attempts", dials);
    println!("  {:<28} {:>10}", "waited for their window", waited_window);
    println!(
        "  {:<28} {:>10}",
        "waited for their notBefore", waited_start
    );
    println!(
        "  {:<28} {:>10}   never dialed",
        "expired at their deadline", expired_undialed
    );
    println!("  {:<28} {:>10}", "calls retried", retried);
    println!(
        "  {:<28} {:>10}",
        "429s and 503s from provider",
        sim.rate_limited + sim.errors_injected
    );
    if args.provider == Dialect::Generic {
        println!(
            "  {:<28} {:>10}",
            "idempotent repeats", sim.idempotent_repeats
        );
    } else {
        // A vendor without idempotency keys: a lost answer is looked up, never resent.
        println!(
            "  {:<28} {:>10}   {}",
            "attempts placed twice",
            sim.duplicate_placements,
            if sim.duplicate_placements == 0 {
                "no attempt dialed twice"
            } else {
                "ATTEMPTS DIALED TWICE"
            }
        );
        println!("  {:<28} {:>10}", "look-ups at the provider", sim.look_ups);
    }
    println!(
        "  {:<28} {:>10}   cap {} {}",
        "peak concurrency (provider)",
        sim.peak_active,
        args.cap,
        held(sim.peak_active <= args.cap as usize)
    );
    println!("  {:<28} {:>10}", "peak in progress (API)", peak_seen);
    println!(
        "  {:<28} {:>10}   one call per number {}",
        "peak calls to one number",
        sim.peak_per_number,
        held(sim.peak_per_number <= 1)
    );
    let refill = &sim.refill_latency_ms;
    println!(
        "  {:<28} {:>10}   p95 {:.1} ms over {} refills",
        "slot refill latency p50",
        format!("{:.1} ms", refill.p50),
        refill.p95,
        refill.count
    );
    println!(
        "  {:<28} {:>10}",
        "wall time",
        format!("{:.1} s", wall.as_secs_f64())
    );
    Ok(())
}
