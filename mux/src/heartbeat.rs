//! Liveness of the login agent on each target connection: a stopped or wedged target must not
//! hang the run.
//!
//! Once the agent is ready, its Target sends it a `heartbeat` frame every
//! [`KEEPALIVE_INTERVAL_ENV`] seconds (default 30, as `mitogen_ssh_keepalive_interval`); the
//! agent answers at once, whatever tasks it runs. A Target that has heard nothing at all from
//! its agent for the interval times [`KEEPALIVE_COUNT_ENV`] (default 10, as
//! `mitogen_ssh_keepalive_count`) declares it dead: it kills the transport, and the calls in
//! flight fail as `connection_lost` (UNREACHABLE) with the host and how long it was silent; the
//! next call connects afresh (docs/protocol.md, "Heartbeat").

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Environment variable: seconds between heartbeats.
pub const KEEPALIVE_INTERVAL_ENV: &str = "FERROGEN_KEEPALIVE_INTERVAL";

/// Default for [`KEEPALIVE_INTERVAL_ENV`], Mitogen's `mitogen_ssh_keepalive_interval`.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Environment variable: how many intervals of silence make an agent dead.
pub const KEEPALIVE_COUNT_ENV: &str = "FERROGEN_KEEPALIVE_COUNT";

/// Default for [`KEEPALIVE_COUNT_ENV`], Mitogen's `mitogen_ssh_keepalive_count`.
pub const DEFAULT_KEEPALIVE_COUNT: usize = 10;

/// The interval in milliseconds, and the count, for every Target of this process.
static INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_KEEPALIVE_INTERVAL.as_millis() as u64);
static COUNT: AtomicU64 = AtomicU64::new(DEFAULT_KEEPALIVE_COUNT as u64);

/// Sets the interval and count (from the mux's settings, at start).
pub fn configure(interval: Duration, count: usize) {
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    INTERVAL_MS.store(millis, Ordering::Relaxed);
    COUNT.store(count as u64, Ordering::Relaxed);
}

/// How often a Target sends a heartbeat.
pub fn interval() -> Duration {
    Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed))
}

/// How many intervals of silence make an agent dead.
pub fn count() -> u64 {
    COUNT.load(Ordering::Relaxed)
}

/// How long an agent may stay silent before it is declared dead.
pub fn deadline() -> Duration {
    interval().saturating_mul(u32::try_from(count()).unwrap_or(u32::MAX))
}
