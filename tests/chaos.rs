//! Proof under replicas and faults. Real processes: a PostgreSQL cluster, the provider
//! simulator, and several `call-orchestrator serve` replicas against one database, placing a
//! campaign while the test kills a replica with SIGKILL (and starts it again), restarts
//! PostgreSQL, takes the provider down (5xx, timeouts, 429) and brings it back, and sends
//! SIGTERM to a replica; webhooks come twice, late, out of order, before the provider's 202,
//! or never; and a forger sends unsigned webhooks with guessed callIds and references all
//! along (the replicas run without WEBHOOK_SECRET, as by default: webhooks are proven by the
//! token in their URL). Then it checks the invariants from the simulator's record and from
//! the database, and prints the figures.
//!
//! `chaos` runs it with the generic provider; `chaos_twilio` with the service speaking
//! Twilio's dialect to the simulator playing Twilio: no idempotency key, so every lost
//! answer (the outage's slow answers, the SIGKILL's abandoned dials) is looked up, never
//! sent again, and dropped webhooks are reconciled by look-ups before they could expire.
//!
//! `cargo test --test chaos -- --ignored chaos_soak` runs the same scenario over and over for
//! `CHAOS_SOAK_MINUTES` (default 10), with the same checks at the end.

use std::{
    collections::HashMap,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

mod common;

use call_orchestrator::{
    tools::pg::{ClusterOptions, PgCluster},
    tools::sim::{Dialect, Faults, SimConfig, Simulator, TWILIO_ACCOUNT_SID},
};
use common::{
    binary, free_port,
    receiver::{Answer, Receiver},
    wait_ok,
};
use nix::sys::signal::{Signal, kill};
use serde_json::{Value, json};

const CAP: usize = 8;
/// Two campaigns share the queue with loose calls, each under a cap of its own
/// (invariant 10): the simulator counts each one's calls active at once by the `group` of
/// their metadata.
const CAMPAIGN_CAPS: [(&str, usize); 2] = [("A", 3), ("B", 4)];
const MAX_ATTEMPTS: i32 = 3;
/// Short enough that a dropped webhook's call expires within the test, long enough that an
/// attempt abandoned by the SIGKILL is rescued first (its lease: 3 × PROVIDER_TIMEOUT + 5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct Replica {
    port: u16,
    child: Child,
}

struct Cluster {
    dialect: Dialect,
    pg: PgCluster,
    sim: Simulator,
    /// The client's event endpoint, subscribed to every event, and its secret.
    events: Receiver,
    events_secret: String,
    replicas: Vec<Option<Replica>>,
    client: reqwest::Client,
}

impl Cluster {
    fn spawn_replica(&self, port: u16) -> Replica {
        let mut command = binary(&["serve"]);
        if self.dialect == Dialect::Twilio {
            command
                .env("AI_CALL_PROVIDER", "twilio")
                .env("TWILIO_ACCOUNT_SID", TWILIO_ACCOUNT_SID)
                .env("TWILIO_TWIML_URL", "https://twiml.example/chaos")
                .env("AI_CALL_FROM_NUMBER", "+15550000000")
                // Dropped webhooks are looked up well before CALL_TIMEOUT.
                .env("RECONCILE_AFTER", "2s");
        }
        let child = command
            .env("DATABASE_URL", self.pg.url("postgres"))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("AI_CALL_API_URL", self.sim.url())
            .env("AI_CALL_API_KEY", "chaos-key")
            .env("WEBHOOK_BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("MAX_CONCURRENT_CALLS", CAP.to_string())
            .env("MAX_RETRY_ATTEMPTS", MAX_ATTEMPTS.to_string())
            .env("RETRY_BASE_DELAY", "200ms")
            .env("RETRY_MAX_DELAY", "2s")
            .env(
                "CALL_TIMEOUT",
                humantime::format_duration(CALL_TIMEOUT).to_string(),
            )
            .env("PROVIDER_TIMEOUT", "1s")
            .env(
                "EVENT_SECRET_KEY",
                "chaos-event-secret-key-0123456789abcdef",
            )
            .env("EVENT_ALLOW_PRIVATE_URLS", "true")
            .env("EVENT_TIMEOUT", "2s")
            .env("EVENT_RETRY_DELAYS", "200ms,500ms,1s,2s,2s,2s,2s,2s,2s,2s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Replica { port, child }
    }

    fn live_port(&self) -> u16 {
        self.replicas
            .iter()
            .flatten()
            .next()
            .expect("a live replica")
            .port
    }

    async fn metrics(&self) -> Option<Value> {
        for replica in self.replicas.iter().flatten() {
            let answer = self
                .client
                .get(format!("http://127.0.0.1:{}/api/v1/metrics", replica.port))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
            {
                return response.json().await.ok();
            }
        }
        None
    }

    async fn ended(&self) -> i64 {
        match self.metrics().await {
            Some(m) => ["COMPLETED", "FAILED", "EXPIRED", "CANCELLED"]
                .iter()
                .map(|s| m["data"][s].as_i64().unwrap_or(0))
                .sum(),
            None => 0,
        }
    }
}

async fn wait_healthy(port: u16) {
    wait_ok(
        &format!("http://127.0.0.1:{port}/health"),
        Duration::from_secs(60),
    )
    .await;
}

/// Waits until `fraction` of `total` calls have ended (or the campaign is over).
async fn until_ended(cluster: &Cluster, total: usize, fraction: f64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while (cluster.ended().await as f64) < total as f64 * fraction {
        if Instant::now() > deadline {
            diagnose(cluster).await;
            panic!("stuck before {fraction} of the campaign");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a person needs to see when the campaign stops moving.
async fn diagnose(cluster: &Cluster) {
    eprintln!("simulator: {:?}", cluster.sim.status());
    for replica in cluster.replicas.iter().flatten() {
        let health = cluster
            .client
            .get(format!("http://127.0.0.1:{}/api/v1/metrics", replica.port))
            .send()
            .await;
        let body = match health {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(err) => format!("unreachable: {err}"),
        };
        eprintln!("replica {}: {body}", replica.port);
    }
    if let Ok(pool) = sqlx::PgPool::connect(&cluster.pg.url("postgres")).await {
        let statuses: Vec<(String, i64)> =
            sqlx::query_as("SELECT status::text, count(*) FROM calls GROUP BY 1")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        eprintln!("calls: {statuses:?}");
        let activity: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' | ', state, wait_event_type, wait_event, left(query, 120))
             FROM pg_stat_activity WHERE datname = 'postgres' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for row in activity {
            eprintln!("backend: {row:?}");
        }
    }
}

fn healthy_faults() -> Faults {
    Faults {
        lose_dial_rate: 0.0,
        error_rate: 0.02,
        rate_limit_rate: 0.02,
        slow_rate: 0.05,
        // Slower than the calls are long, faster than PROVIDER_TIMEOUT: the final webhook
        // often arrives before the provider's 202.
        slow_delay: Duration::from_millis(700),
    }
}

struct Figures {
    calls: usize,
    peak: usize,
    per_number_peak: usize,
    lost: usize,
    double_dials: usize,
    drain: Duration,
    wall: Duration,
}

/// One campaign through every fault; returns the figures after checking the invariants.
async fn campaign(cluster: &mut Cluster, round: usize, calls: usize, numbers: usize) -> Figures {
    let started = Instant::now();
    let port = cluster.live_port();
    let mut campaigns = Vec::new();
    for (group, cap) in CAMPAIGN_CAPS {
        let response = cluster
            .client
            .post(format!("http://127.0.0.1:{port}/api/v1/campaigns"))
            .json(&json!({"name": format!("chaos {group} {round}"), "scriptId": "chaos", "maxConcurrentCalls": cap}))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        campaigns.push(body["data"]["id"].as_str().unwrap().to_owned());
    }
    // A quarter of the calls in each campaign (tagged with its group), half loose.
    let bodies: Vec<Value> = (0..calls)
        .map(|i| {
            let mut body = json!({"to": format!("+1415{:03}{:04}", round % 1000, i % numbers), "scriptId": "chaos", "metadata": {"i": i}});
            if let Some(k) = [0, 1].into_iter().find(|k| i % 4 == *k) {
                body["campaignId"] = json!(campaigns[k]);
                body["metadata"]["group"] = json!(CAMPAIGN_CAPS[k].0);
            }
            body
        })
        .collect();
    for chunk in bodies.chunks(500) {
        let response = cluster
            .client
            .post(format!("http://127.0.0.1:{port}/api/v1/calls/batch"))
            .json(&json!({"calls": chunk}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }
    let target = cluster.ended().await as usize + calls;
    let ended_share = |share: f64| {
        let base = target - calls;
        (base as f64 + calls as f64 * share) / target as f64
    };

    let forger = Forger::start(cluster).await;

    // 1. SIGKILL a replica in the middle of dispatching. So that it surely dies with dial
    // requests under way, the other replicas are paused (SIGSTOP) and every answer is slow
    // until it has claimed some; those attempts are then its own.
    until_ended(cluster, target, ended_share(0.15)).await;
    let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
        .await
        .unwrap();
    let paused_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let others: Vec<nix::unistd::Pid> = cluster.replicas[1..]
        .iter()
        .flatten()
        .map(|r| nix::unistd::Pid::from_raw(r.child.id() as i32))
        .collect();
    for pid in &others {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    cluster.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_delay: Duration::from_secs(3),
        ..healthy_faults()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let orphans: Vec<(uuid::Uuid, i32)> = loop {
        let dialing: Vec<(uuid::Uuid, i32)> = sqlx::query_as(
            "SELECT call_id, attempt FROM call_attempts
             WHERE status = 'DIALING' AND rescues = 0 AND claimed_at > $1",
        )
        .bind(paused_at)
        .fetch_all(&pool)
        .await
        .unwrap();
        if !dialing.is_empty() {
            break dialing;
        }
        assert!(
            Instant::now() < deadline,
            "replica 0 claimed nothing while the others were paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pool.close().await;
    let mut doomed = cluster.replicas[0].take().expect("replica 0");
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    for pid in &others {
        kill(*pid, Signal::SIGCONT).unwrap();
    }
    cluster.sim.set_faults(healthy_faults());
    eprintln!(
        "round {round}: replica 0 killed with SIGKILL, {} attempts abandoned",
        orphans.len()
    );

    // 2. The provider goes down for a while: 5xx, timeouts, 429s; then recovers.
    until_ended(cluster, target, ended_share(0.3)).await;
    cluster.sim.set_faults(Faults {
        lose_dial_rate: 0.0,
        error_rate: 0.4,
        rate_limit_rate: 0.3,
        slow_rate: 0.3,
        slow_delay: Duration::from_millis(1500),
    });
    eprintln!("round {round}: provider outage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.sim.set_faults(healthy_faults());
    eprintln!("round {round}: provider recovered");

    // 3. PostgreSQL restarts while calls are in flight.
    until_ended(cluster, target, ended_share(0.45)).await;
    cluster.pg.restart().await.unwrap();
    eprintln!("round {round}: PostgreSQL restarted");

    // 4. The killed replica comes back.
    until_ended(cluster, target, ended_share(0.6)).await;
    cluster.replicas[0] = Some(cluster.spawn_replica(doomed.port));
    eprintln!("round {round}: replica 0 restarted");

    // 5. SIGTERM: the replica drains and exits by itself.
    until_ended(cluster, target, ended_share(0.75)).await;
    let mut leaving = cluster.replicas[1].take().expect("replica 1");
    kill(
        nix::unistd::Pid::from_raw(leaving.child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let drain_started = Instant::now();
    let status = loop {
        if let Some(status) = leaving.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(30),
            "SIGTERM did not stop the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drain = drain_started.elapsed();
    assert!(
        status.success(),
        "the replica exited {status} after SIGTERM"
    );
    eprintln!("round {round}: replica 1 drained in {drain:?}");
    cluster.replicas[1] = Some(cluster.spawn_replica(leaving.port));
    wait_healthy(leaving.port).await;

    // Every call ends: dropped webhooks expire, late ones record the real outcome.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(m) = cluster.metrics().await
            && m["data"]["PENDING"] == 0
            && m["data"]["IN_PROGRESS"] == 0
        {
            break;
        }
        if Instant::now() > deadline {
            diagnose(cluster).await;
            panic!("calls still open");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let forged = forger.stop().await;
    let figures = check(cluster, calls, drain, started.elapsed()).await;
    let sim = cluster.sim.status();
    for (group, cap) in CAMPAIGN_CAPS {
        // Twilio's dial carries no metadata: there the simulator cannot tell the campaigns.
        if let Some(&peak) = sim.peak_per_group.get(group) {
            assert!(
                peak <= cap,
                "the provider saw {peak} calls of campaign {group} at once, its cap {cap}"
            );
            eprintln!("chaos: campaign {group} peak {peak} (its cap {cap})");
        }
    }
    // Each campaign's counts, kept by the database through it all, match its calls, and it
    // completes (the sweeper mends a completion two transactions raced past).
    let port = cluster.live_port();
    for (k, id) in campaigns.iter().enumerate() {
        let expected = (0..calls).filter(|i| i % 4 == k).count();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body: Value = cluster
                .client
                .get(format!("http://127.0.0.1:{port}/api/v1/campaigns/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let data = &body["data"];
            assert_eq!(data["counts"]["total"], expected, "{data}");
            if data["status"] == "COMPLETED" {
                assert_eq!(data["counts"]["PENDING"], 0, "{data}");
                assert_eq!(data["counts"]["IN_PROGRESS"], 0, "{data}");
                break;
            }
            assert!(Instant::now() < deadline, "campaign not completed: {data}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
        .await
        .unwrap();
    let rescued: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (call_id, attempt)) FROM call_events
         WHERE kind = 'RESCUED' AND (call_id, attempt) IN (SELECT * FROM unnest($1::uuid[], $2::int[]))",
    )
    .bind(orphans.iter().map(|o| o.0).collect::<Vec<_>>())
    .bind(orphans.iter().map(|o| o.1).collect::<Vec<_>>())
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(
        rescued > 0,
        "none of the attempts the SIGKILL abandoned was rescued"
    );
    eprintln!(
        "round {round}: {rescued} abandoned attempts rescued; forger sent {} webhooks, {} taken",
        forged.sent, forged.taken
    );
    assert!(forged.sent > 0, "the forger sent nothing");
    assert_eq!(
        forged.taken, 0,
        "forged webhooks were taken: {:?}",
        forged.examples
    );
    every_final_call_has_its_event(cluster).await;
    figures
}

/// Invariant 11: every final call's final event reached the client's endpoint, through the
/// SIGKILL, the PostgreSQL restart and the provider's outage, signed; an event that came
/// more than once came with one `webhook-id`.
async fn every_final_call_has_its_event(cluster: &Cluster) {
    let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
        .await
        .unwrap();
    let finals: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, 'call.' || lower(status::text) FROM calls \
         WHERE status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELLED')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // (call id, event type, attempts) -> the webhook-ids it came with (a call has one
        // `call.attempt_failed` per attempt that failed and was retried).
        let mut seen: HashMap<(String, String, i64), Vec<String>> = HashMap::new();
        for got in cluster.events.got() {
            let body = got.json();
            let id = body["data"]["id"].as_str().unwrap_or_default().to_owned();
            let kind = body["type"].as_str().unwrap_or_default().to_owned();
            let attempts = body["data"]["attempts"].as_i64().unwrap_or_default();
            seen.entry((id, kind, attempts))
                .or_default()
                .push(got.id.clone());
        }
        let missing: Vec<&(uuid::Uuid, String)> = finals
            .iter()
            .filter(|(id, kind)| {
                !seen
                    .keys()
                    .any(|(i, k, _)| *i == id.to_string() && k == kind)
            })
            .collect();
        if missing.is_empty() {
            for ((id, kind, _), ids) in &seen {
                assert!(
                    ids.iter().all(|i| *i == ids[0]),
                    "{kind} of {id} came with several webhook-ids: {ids:?}"
                );
            }
            let got = cluster.events.got();
            let unsigned = got
                .iter()
                .filter(|g| !g.verifies_with(&cluster.events_secret))
                .count();
            assert_eq!(unsigned, 0, "deliveries that do not verify");
            let repeats = got.len() - seen.len();
            eprintln!(
                "chaos: {} final calls, each with its final event ({} deliveries in all, {repeats} repeated)",
                finals.len(),
                got.len()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} final calls without their final event, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends webhooks nobody handed a URL to, as an attacker would: the simulator's sequential
/// callIds guessed, real call references without a token or with a made-up one. None may
/// be taken (2xx).
struct Forger {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Forged>,
}

#[derive(Debug, Default)]
struct Forged {
    sent: usize,
    taken: usize,
    examples: Vec<String>,
}

impl Forger {
    async fn start(cluster: &Cluster) -> Self {
        let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
            .await
            .unwrap();
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM calls")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        let ports: Vec<u16> = cluster.replicas.iter().flatten().map(|r| r.port).collect();
        let client = cluster.client.clone();
        let dialect = cluster.dialect;
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut forged = Forged::default();
            let mut n = 0u64;
            while !stopped.is_cancelled() {
                n += 1;
                let port = ports[n as usize % ports.len()];
                let id = ids[n as usize % ids.len()];
                let status = ["BUSY", "COMPLETED", "FAILED", "RINGING"][n as usize % 4];
                let query = match n % 3 {
                    0 => String::new(),
                    1 => format!("?ref={id}.1"),
                    _ => format!("?ref={id}.1&token=AAAAAAAAAAAAAAAAAAAAAA"),
                };
                let url = format!("http://127.0.0.1:{port}{}{query}", dialect.webhook_path());
                let request = match dialect {
                    Dialect::Twilio => {
                        let word = ["busy", "completed", "failed", "ringing"][n as usize % 4];
                        let body = format!("CallSid=CA{:032x}&CallStatus={word}", n % 400 + 1);
                        client
                            .post(&url)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .header("x-twilio-signature", "c2lnbmVkIGJ5IG5vYm9keQ==")
                            .body(body)
                    }
                    _ => client
                        .post(&url)
                        .json(&json!({"callId": format!("sim-{}", n % 400 + 1), "status": status})),
                };
                let body = format!("{n}");
                if let Ok(response) = request.send().await {
                    forged.sent += 1;
                    if response.status().is_success() {
                        forged.taken += 1;
                        if forged.examples.len() < 5 {
                            forged.examples.push(format!("{url} {body}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            forged
        });
        Self { stop, task }
    }

    async fn stop(self) -> Forged {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

async fn check(cluster: &Cluster, calls: usize, drain: Duration, wall: Duration) -> Figures {
    let sim = cluster.sim.status();
    assert!(
        sim.peak_active <= CAP,
        "the provider saw {} calls at once (cap {CAP})",
        sim.peak_active
    );
    if sim.peak_per_number > 1 {
        let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
            .await
            .unwrap();
        for overlap in &sim.overlaps {
            eprintln!("overlap: {overlap}");
        }
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' ', e.at, e.call_id, e.attempt, e.kind, e.detail) FROM call_events e
             JOIN calls c ON c.id = e.call_id
             WHERE c.to_number IN (SELECT to_number FROM calls WHERE id::text = split_part($1, ':', 1))
             ORDER BY e.at",
        )
        .bind(sim.overlaps[0].split(": ").nth(1).unwrap_or_default().split_whitespace().next().unwrap_or_default())
        .fetch_all(&pool)
        .await
        .unwrap();
        for event in events {
            eprintln!("{event}");
        }
    }
    assert!(
        sim.peak_per_number <= 1,
        "the provider saw {} calls at once to one number: {:?}",
        sim.peak_per_number,
        sim.overlaps
    );

    let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
        .await
        .unwrap();
    let rows: Vec<(uuid::Uuid, String, i32)> =
        sqlx::query_as("SELECT id, status::text, attempts FROM calls")
            .fetch_all(&pool)
            .await
            .unwrap();
    let lost = rows
        .iter()
        .filter(|(_, status, _)| {
            !matches!(
                status.as_str(),
                "COMPLETED" | "FAILED" | "EXPIRED" | "CANCELLED"
            )
        })
        .count();
    assert_eq!(lost, 0, "calls not in a final status");
    let mut placed_per_call: HashMap<String, Vec<i32>> = HashMap::new();
    // Keys are `{call}:{attempt}` (Idempotency-Key) or `{call}.{attempt}` (a vendor's
    // reference); a vendor without idempotency keys counts its repeats apart.
    assert_eq!(
        sim.duplicate_placements, 0,
        "the vendor placed one attempt twice"
    );
    for key in cluster.sim.placed().keys() {
        let (call, attempt) = key.split_once([':', '.']).unwrap();
        placed_per_call
            .entry(call.to_owned())
            .or_default()
            .push(attempt.parse().unwrap());
    }
    let mut double_dials = 0;
    for (id, _, attempts) in &rows {
        assert!(*attempts <= MAX_ATTEMPTS, "{id}: {attempts} attempts");
        let placed = placed_per_call.remove(&id.to_string()).unwrap_or_default();
        // Each key is placed once by the provider; a double dial would be a second key for
        // an attempt number never recorded, or more calls placed than attempts made.
        if placed.len() > *attempts as usize || placed.iter().any(|a| *a < 1 || *a > *attempts) {
            double_dials += 1;
        }
    }
    assert!(
        placed_per_call.is_empty(),
        "the provider placed calls the database does not know"
    );
    assert_eq!(double_dials, 0, "attempts dialed twice");
    let dialing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_attempts WHERE status IN ('DIALING', 'ACCEPTED')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dialing, 0, "attempts still open with no call in progress");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM call_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        queued, 0,
        "call_queue still holds calls that have all ended"
    );
    pool.close().await;
    Figures {
        calls,
        peak: sim.peak_active,
        per_number_peak: sim.peak_per_number,
        lost,
        double_dials,
        drain,
        wall,
    }
}

async fn start(dialect: Dialect) -> Cluster {
    let pg = PgCluster::start(ClusterOptions::default()).await.unwrap();
    let sim = Simulator::start(SimConfig {
        dialect,
        port: 0,
        api_key: "chaos-key".into(),
        webhook_secret: None,
        seed: 7,
        min_duration: Duration::from_millis(100),
        max_duration: Duration::from_millis(600),
        error_rate: healthy_faults().error_rate,
        rate_limit_rate: healthy_faults().rate_limit_rate,
        slow_rate: healthy_faults().slow_rate,
        slow_delay: healthy_faults().slow_delay,
        drop_webhook_rate: 0.03,
        duplicate_webhook_rate: 0.05,
        late_webhook_rate: 0.03,
        late_webhook_delay: CALL_TIMEOUT + Duration::from_secs(2),
        out_of_order_rate: 0.05,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let events = Receiver::start().await;
    // The client's endpoint fails now and then, so that retries are part of the run.
    events.script((0..20).map(|i| {
        if i % 2 == 0 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    }));
    let mut cluster = Cluster {
        dialect,
        pg,
        sim,
        events,
        events_secret: String::new(),
        replicas: Vec::new(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    for _ in 0..3 {
        let replica = cluster.spawn_replica(free_port());
        cluster.replicas.push(Some(replica));
    }
    for port in cluster
        .replicas
        .iter()
        .flatten()
        .map(|r| r.port)
        .collect::<Vec<_>>()
    {
        wait_healthy(port).await;
    }
    let registered: Value = cluster
        .client
        .post(format!(
            "http://127.0.0.1:{}/api/v1/event-endpoints",
            cluster.live_port()
        ))
        .json(&json!({"url": cluster.events.url, "events": ["*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cluster.events_secret = registered["data"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{registered}"))
        .to_owned();
    cluster
}

fn print(figures: &Figures, label: &str) {
    eprintln!(
        "chaos {label}: calls {} | provider peak {} (cap {CAP}) | peak per number {} | lost {} | double dials {} | SIGTERM drain {:.2?} | wall {:.1?}",
        figures.calls,
        figures.peak,
        figures.per_number_peak,
        figures.lost,
        figures.double_dials,
        figures.drain,
        figures.wall
    );
}

async fn stop(mut cluster: Cluster) {
    for replica in cluster.replicas.iter_mut().flatten() {
        let _ = kill(
            nix::unistd::Pid::from_raw(replica.child.id() as i32),
            Signal::SIGTERM,
        );
    }
    for replica in cluster.replicas.iter_mut().flatten() {
        let _ = replica.child.wait();
    }
    cluster.sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let mut cluster = start(Dialect::Generic).await;
    let figures = campaign(&mut cluster, 0, 300, 80).await;
    let sim = cluster.sim.status();
    every_fault_was_exercised(&cluster).await;
    assert!(
        sim.idempotent_repeats > 0,
        "no request was resent after a timeout: {sim:?}"
    );
    assert!(
        events_of(&cluster, "EXPIRED").await > 0,
        "no call expired, so dropped webhooks went untested"
    );
    print(&figures, "run");
    stop(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twilio() {
    let mut cluster = start(Dialect::Twilio).await;
    let figures = campaign(&mut cluster, 0, 300, 80).await;
    let sim = cluster.sim.status();
    every_fault_was_exercised(&cluster).await;
    assert!(sim.look_ups > 0, "nothing was looked up: {sim:?}");
    assert_eq!(sim.idempotent_repeats, 0, "{sim:?}");
    assert!(
        events_of(&cluster, "RECONCILED").await > 0,
        "no call was reconciled, so dropped webhooks went untested"
    );
    print(&figures, "twilio");
    stop(cluster).await;
}

async fn every_fault_was_exercised(cluster: &Cluster) {
    let sim = cluster.sim.status();
    assert!(
        sim.errors_injected > 0 && sim.rate_limited > 0 && sim.slow_answers > 0,
        "{sim:?}"
    );
    assert!(
        sim.webhooks_dropped > 0 && sim.webhooks_duplicated > 0,
        "{sim:?}"
    );
    assert!(
        sim.webhooks_late > 0 && sim.webhooks_out_of_order > 0,
        "{sim:?}"
    );
}

/// Timeline entries of this kind, over all calls.
async fn events_of(cluster: &Cluster, kind: &str) -> i64 {
    let pool = sqlx::PgPool::connect(&cluster.pg.url("postgres"))
        .await
        .unwrap();
    let count = sqlx::query_scalar("SELECT count(*) FROM call_events WHERE kind = $1")
        .bind(kind)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak for minutes or hours: cargo test --test chaos -- --ignored chaos_soak"]
async fn chaos_soak() {
    let minutes: u64 = std::env::var("CHAOS_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let dialect = match std::env::var("CHAOS_PROVIDER").as_deref() {
        Ok("twilio") => Dialect::Twilio,
        _ => Dialect::Generic,
    };
    let mut cluster = start(dialect).await;
    let mut round = 0;
    let mut total = 0;
    while Instant::now() < until {
        let figures = campaign(&mut cluster, round, 400, 100).await;
        total += figures.calls;
        print(&figures, &format!("soak round {round}"));
        round += 1;
    }
    eprintln!("chaos soak: {round} rounds, {total} calls, every invariant held");
    stop(cluster).await;
}
