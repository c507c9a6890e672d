//! Logging: human-readable or JSON lines on stdout, and with `LOG_DIR` also `combined.log`
//! and `error.log` there, rotated daily.

use std::io::IsTerminal as _;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{Config, LogFormat};

/// Keeps the background log writers alive; drop it last, at exit, to flush them.
pub struct Guards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(config: &Config) -> Guards {
    let filter = || EnvFilter::try_new(&config.rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = config.log_format == LogFormat::Json;
    // Lines are written by a thread of their own, so a request never waits for a write to
    // stdout (a pipe or a file the container runtime drains); never dropped: when the
    // reader falls 128k lines behind, logging waits for it.
    let terminal = std::io::stdout().is_terminal();
    let (stdout_writer, stdout_guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("log-writer")
            .finish(std::io::stdout());
    let stdout = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(stdout_writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(terminal)
            .with_writer(stdout_writer)
            .boxed()
    };
    let mut layers = vec![stdout.with_filter(filter()).boxed()];
    let mut guards = vec![stdout_guard];
    if let Some(dir) = &config.log_dir {
        // Log lines name calls, numbers and errors: files for the service's user and its
        // group only (0640), including the ones the daily rotation makes later, which
        // tracing-appender creates with the process's umask.
        let umask = nix::sys::stat::Mode::from_bits_truncate(0o027);
        let old = nix::sys::stat::umask(umask);
        nix::sys::stat::umask(old | umask);
        for (name, level) in [
            ("combined.log", None),
            ("error.log", Some(LevelFilter::ERROR)),
        ] {
            let (writer, guard) =
                tracing_appender::non_blocking(tracing_appender::rolling::daily(dir, name));
            guards.push(guard);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_ansi(false)
                .with_writer(writer);
            layers.push(match level {
                Some(level) => layer.with_filter(level).boxed(),
                None => layer.with_filter(filter()).boxed(),
            });
        }
    }
    tracing_subscriber::registry().with(layers).init();
    Guards(guards)
}
