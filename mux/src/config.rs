//! Settings read from the environment at start, and their errors.

use std::{fmt, time::Duration};

/// Environment variable bounding simultaneous connection set-ups.
pub const POOL_SIZE_ENV: &str = "MITOGEN_POOL_SIZE";

/// Default for [`POOL_SIZE_ENV`], as in Mitogen.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// Environment variable bounding the become interpreters per target.
pub const MAX_INTERPRETERS_ENV: &str = "MITOGEN_MAX_INTERPRETERS";

/// Default for [`MAX_INTERPRETERS_ENV`], as in Mitogen.
pub const DEFAULT_MAX_INTERPRETERS: usize = 20;

/// Environment variable asking for a periodic stack dump into the log, every N seconds.
pub const DUMP_THREAD_STACKS_ENV: &str = "MITOGEN_DUMP_THREAD_STACKS";

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub name: &'static str,
    /// Its value as found.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.name, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// The mux's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// At most this many targets connect (spawn + bootstrap) at once.
    pub pool_size: usize,
    /// At most this many become interpreters per target (the login one not counted).
    pub max_interpreters: usize,
    /// How often to dump thread stacks and the actor table into the log; `None` = never.
    pub dump_interval: Option<Duration>,
    /// Bytes all worker connections may hold in partial frames together
    /// ([`crate::frame_budget`]).
    pub frame_budget: usize,
    /// Seconds between heartbeats to each agent ([`crate::heartbeat`]).
    pub keepalive_interval: Duration,
    /// Heartbeat intervals of silence after which an agent is dead.
    pub keepalive_count: usize,
}

impl Config {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the variable and value that is not usable.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (testable without touching the environment).
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let pool_size = positive_integer(&lookup, POOL_SIZE_ENV, DEFAULT_POOL_SIZE)?;
        let max_interpreters =
            positive_integer(&lookup, MAX_INTERPRETERS_ENV, DEFAULT_MAX_INTERPRETERS)?;
        let dump_interval = match lookup(DUMP_THREAD_STACKS_ENV) {
            None => None,
            Some(value) => match value.trim().parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                    Some(Duration::from_secs_f64(secs))
                }
                _ => {
                    return Err(ConfigError {
                        name: DUMP_THREAD_STACKS_ENV,
                        value,
                        expected: "a positive number of seconds",
                    })
                }
            },
        };
        let frame_budget_mib = positive_integer(
            &lookup,
            crate::frame_budget::FRAME_BUDGET_ENV,
            crate::frame_budget::DEFAULT_FRAME_BUDGET_MIB,
        )?;
        Ok(Config {
            pool_size,
            max_interpreters,
            dump_interval,
            frame_budget: frame_budget_mib.saturating_mul(1 << 20),
            keepalive_interval: match lookup(crate::heartbeat::KEEPALIVE_INTERVAL_ENV) {
                None => crate::heartbeat::DEFAULT_KEEPALIVE_INTERVAL,
                Some(value) => match value.trim().parse::<f64>() {
                    Ok(secs) if (0.001..1e9).contains(&secs) => Duration::from_secs_f64(secs),
                    _ => {
                        return Err(ConfigError {
                            name: crate::heartbeat::KEEPALIVE_INTERVAL_ENV,
                            value,
                            expected: "a positive number of seconds",
                        })
                    }
                },
            },
            keepalive_count: positive_integer(
                &lookup,
                crate::heartbeat::KEEPALIVE_COUNT_ENV,
                crate::heartbeat::DEFAULT_KEEPALIVE_COUNT,
            )?,
        })
    }
}

/// Reads `name` as a positive integer, `default` when unset.
fn positive_integer(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, ConfigError> {
    match lookup(name) {
        None => Ok(default),
        Some(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError {
                name,
                value,
                expected: "a positive integer",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: Option<&str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            if name == POOL_SIZE_ENV {
                value.map(str::to_owned)
            } else {
                None
            }
        })
    }

    fn with_var(name: &str, value: &str) -> Result<Config, ConfigError> {
        Config::from_lookup(|n| (n == name).then(|| value.to_owned()))
    }

    #[test]
    fn max_interpreters_default_override_and_errors() {
        assert_eq!(with(None).unwrap().max_interpreters, 20);
        assert_eq!(
            with_var(MAX_INTERPRETERS_ENV, "5")
                .unwrap()
                .max_interpreters,
            5
        );
        for bad in ["0", "-3", "five", "2.5", ""] {
            let err = with_var(MAX_INTERPRETERS_ENV, bad).unwrap_err();
            assert_eq!(err.name, "MITOGEN_MAX_INTERPRETERS");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn dump_interval_is_a_positive_number() {
        assert_eq!(with(None).unwrap().dump_interval, None);
        assert_eq!(
            with_var(DUMP_THREAD_STACKS_ENV, "0.5")
                .unwrap()
                .dump_interval,
            Some(Duration::from_millis(500))
        );
        for bad in ["0", "-1", "x", "inf", "NaN"] {
            let err = with_var(DUMP_THREAD_STACKS_ENV, bad).unwrap_err();
            assert_eq!(err.name, DUMP_THREAD_STACKS_ENV);
        }
    }

    #[test]
    fn keepalive_defaults_and_overrides() {
        let defaults = with(None).unwrap();
        assert_eq!(defaults.keepalive_interval, Duration::from_secs(30));
        assert_eq!(defaults.keepalive_count, 10);
        let fast = with_var(crate::heartbeat::KEEPALIVE_INTERVAL_ENV, "0.5").unwrap();
        assert_eq!(fast.keepalive_interval, Duration::from_millis(500));
        assert!(with_var(crate::heartbeat::KEEPALIVE_INTERVAL_ENV, "0").is_err());
        assert!(with_var(crate::heartbeat::KEEPALIVE_COUNT_ENV, "0").is_err());
    }

    #[test]
    fn frame_budget_in_mib() {
        assert_eq!(with(None).unwrap().frame_budget, 512 << 20);
        let budget = with_var(crate::frame_budget::FRAME_BUDGET_ENV, "8").unwrap();
        assert_eq!(budget.frame_budget, 8 << 20);
        assert!(with_var(crate::frame_budget::FRAME_BUDGET_ENV, "0").is_err());
    }

    #[test]
    fn pool_size_default_and_override() {
        assert_eq!(with(None).unwrap().pool_size, 32);
        assert_eq!(with(Some("4")).unwrap().pool_size, 4);
    }

    #[test]
    fn pool_size_must_be_positive_integer() {
        for bad in ["0", "-1", "x", ""] {
            let err = with(Some(bad)).unwrap_err();
            assert_eq!(err.name, "MITOGEN_POOL_SIZE");
            assert!(err.to_string().contains("positive integer"), "{err}");
        }
    }
}
