//! call-orchestrator: places AI phone calls through a provider, with PostgreSQL as the only
//! source of truth and the only queue.

pub mod api;
pub mod app;
pub mod bench;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod import;
pub mod metrics;
pub mod pg;
pub mod provider;
pub mod sim;
pub mod telemetry;
pub mod worker;
