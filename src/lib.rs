//! call-orchestrator: places AI phone calls through a provider, with PostgreSQL as the only
//! source of truth and the only queue.

pub mod api;
pub mod app;
pub mod config;
pub mod db;
pub mod domain;
pub mod metrics;
pub mod provider;
pub mod telemetry;
pub mod tools;
pub mod worker;
