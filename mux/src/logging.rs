//! Logging set-up: `tracing` to stderr, plus a debug file when asked.

use std::{fs::File, io::IsTerminal, path::PathBuf, sync::Mutex};

use tracing_subscriber::{
    filter::LevelFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

/// Filter for stderr logs (`tracing_subscriber::EnvFilter` syntax; default `warn`).
pub const LOG_ENV: &str = "FERROGEN_LOG";

/// When set to anything but `0` or empty, debug logs also go to `/tmp/mitogen.<pid>.log`.
pub const ROUTER_DEBUG_ENV: &str = "MITOGEN_ROUTER_DEBUG";

/// Whether [`ROUTER_DEBUG_ENV`] asks for per-process debug log files.
pub fn router_debug() -> bool {
    std::env::var(ROUTER_DEBUG_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Installs the global subscriber. Returns the debug log path when one was opened.
///
/// # Errors
///
/// The debug log file cannot be created.
pub fn init() -> std::io::Result<Option<PathBuf>> {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);

    let (file_layer, path) = if router_debug() {
        let path = PathBuf::from(format!("/tmp/mitogen.{}.log", std::process::id()));
        let file = File::create(&path)?;
        let layer = fmt::layer()
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .with_filter(LevelFilter::DEBUG);
        (Some(layer), Some(path))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .init();
    Ok(path)
}
