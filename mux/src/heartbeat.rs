//! Liveness of the login agent on each target connection: a stopped or wedged target must not
//! hang the run.
//!
//! Once the agent is ready, its Target sends it a `heartbeat` frame every interval: the host's
//! `mitogen_ssh_keepalive_interval` (the TargetSpec's `keepalive_interval`), else
//! [`KEEPALIVE_INTERVAL_ENV`] seconds (default 30); the agent answers at once, whatever tasks
//! it runs. A Target that has heard nothing at all from its agent for the interval times the
//! count (`mitogen_ssh_keepalive_count`, else [`KEEPALIVE_COUNT_ENV`], default 10) declares it
//! dead: it kills the transport, and the calls in flight fail as `connection_lost`
//! (UNREACHABLE) with the host and how long it was silent; the next call connects afresh
//! (docs/protocol.md, "Heartbeat"). ssh is given the same figures as `ServerAliveInterval`
//! and `ServerAliveCountMax`, so a dead network path is noticed by both ends of the link.
//!
//! Each become interpreter that is up gets a heartbeat of its own with the same figures,
//! relayed by the login agent (which writes to its children without ever waiting on one). One
//! silent for the deadline while the login agent answers is declared dead alone: its calls
//! fail as `connection_lost` naming the account, the host and the silence, the login agent
//! kills it, and the account's next call spawns a new one.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use worker_ipc::TargetSpec;

/// Environment variable: seconds between heartbeats.
pub const KEEPALIVE_INTERVAL_ENV: &str = "FERROGEN_KEEPALIVE_INTERVAL";

/// Default for [`KEEPALIVE_INTERVAL_ENV`], Mitogen's `mitogen_ssh_keepalive_interval`.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Environment variable: how many intervals of silence make an agent dead.
pub const KEEPALIVE_COUNT_ENV: &str = "FERROGEN_KEEPALIVE_COUNT";

/// Default for [`KEEPALIVE_COUNT_ENV`], Mitogen's `mitogen_ssh_keepalive_count`.
pub const DEFAULT_KEEPALIVE_COUNT: usize = 10;

/// The interval in milliseconds, and the count, for every Target whose spec sets neither.
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

/// The shortest interval a spec may ask for: a smaller one would have the Target do little
/// but send heartbeats.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// One target's keepalive figures: its spec's, else this process's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keepalive {
    /// How often the Target sends a heartbeat.
    pub interval: Duration,
    /// How many intervals of silence make its agent dead.
    pub count: u32,
}

impl Keepalive {
    /// The figures for `spec`.
    pub fn of(spec: &TargetSpec) -> Keepalive {
        let interval = match spec.keepalive_interval {
            Some(secs) if secs.is_finite() && secs > 0.0 => {
                Duration::from_secs_f64(secs.min(86_400.0)).max(MIN_INTERVAL)
            }
            _ => Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed)),
        };
        let count = match spec.keepalive_count {
            Some(count) if count > 0 => count,
            _ => u32::try_from(COUNT.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
        };
        Keepalive { interval, count }
    }

    /// How long an agent may stay silent before it is declared dead.
    pub fn deadline(self) -> Duration {
        self.interval.saturating_mul(self.count)
    }

    /// "answered nothing for 3.1s (3 heartbeats of 1.0s missed)": why an agent silent for
    /// `silent` is declared dead, for the messages of the calls that fail.
    pub fn silence(self, silent: Duration) -> String {
        format!(
            "answered nothing for {:.1}s ({} heartbeats of {:.1}s missed)",
            silent.as_secs_f64(),
            self.count,
            self.interval.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_sets_its_own_figures_and_others_keep_the_defaults() {
        let mut spec = TargetSpec::local();
        let default = Keepalive::of(&spec);
        spec.keepalive_interval = Some(0.5);
        spec.keepalive_count = Some(3);
        let own = Keepalive::of(&spec);
        assert_eq!(own.interval, Duration::from_millis(500));
        assert_eq!(own.deadline(), Duration::from_millis(1500));
        spec.keepalive_interval = Some(0.0);
        spec.keepalive_count = Some(0);
        assert_eq!(Keepalive::of(&spec), default);
    }
}
