//! The bench command runs end to end (tiny sizes; the figures themselves are for
//! BENCHMARKS.md, never for assertions).

use std::process::Command;

/// Runs `bench` with `args` on a clean environment; its report (stdout).
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_call-orchestrator"))
        .arg("bench")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_bench_command_measures_every_step() {
    let stdout = bench(&[
        "--runs",
        "1",
        "--seconds",
        "1",
        "--refill-calls",
        "20",
        "--lifecycle-calls",
        "200",
        "--claim-rows",
        "2000",
        "--concurrency",
        "4",
        "--scale-calls",
        "3000",
        "--scale-requests",
        "3",
    ]);
    for row in [
        "ceiling: single-row INSERT transactions",
        "ceiling: UPDATE-by-key transactions",
        "ceiling: bare SKIP LOCKED claim",
        "ingest: POST /api/v1/calls, 4 concurrent",
        "ingest: batch route",
        "refill latency p50",
        "refill latency p99",
        "refill from the final webhook's send, p50",
        "lifecycle: completed calls",
        "lifecycle with events: completed calls",
        "events: last one delivered, after the last call ended",
        "events: change to delivery, p99",
        "memory: one serve replica, idle",
        "memory: one serve replica, peak under lifecycle",
        "claim of 10 calls, 1,000 PENDING",
        "claim of 10 calls, right after 2000 calls of churn",
        "scale: filling 3,000 calls",
        "scale: retention, old final calls deleted",
        "scale: GET /api/v1/metrics p50, 3,000 calls",
        "scale: GET /metrics p99, 3,000 calls",
        "scale: GET /api/v1/calls?after= (half-way down) p50, 3,000 calls",
        "scale: GET /api/v1/calls/{id}/events p50, 3,000 calls",
        "scale: GET /api/v1/campaigns/{id} p99, 3,000 calls",
        "the service in its default configuration",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
}

#[test]
fn the_soak_reports_dead_tuples_memory_and_reads_at_start_and_end() {
    let stdout = bench(&["--only", "soak", "--soak-minutes", "1", "--soak-rate", "20"]);
    for row in [
        "soak: creates over 1 min",
        "soak: dead tuples, every table, at the start",
        "soak: dead tuples, every table, at the end",
        "soak: serve replica memory, end",
        "soak: GET /metrics p50, end",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
}
