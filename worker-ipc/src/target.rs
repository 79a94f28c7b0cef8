//! [`TargetSpec`]: how to reach a target, and [`TargetKey`]: when two calls share a
//! connection.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the mux reaches a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `ssh [options] host REMOTE_CMD`.
    Ssh,
    /// `/bin/sh -c REMOTE_CMD` on the controller.
    Local,
}

/// The target of a call, as sent by the worker (see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// The transport to start.
    pub transport: Transport,
    /// Host to connect to (ssh only).
    #[serde(default)]
    pub host: Option<String>,
    /// ssh port; `None` leaves it to ssh's configuration.
    #[serde(default)]
    pub port: Option<u16>,
    /// Remote user; `None` leaves it to ssh's configuration.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key passed with `-i`.
    #[serde(default)]
    pub identity_file: Option<String>,
    /// The ssh client to run.
    #[serde(default = "default_ssh_executable")]
    pub ssh_executable: String,
    /// Extra ssh arguments, already split, in order.
    #[serde(default)]
    pub ssh_args: Vec<String>,
    /// When false, ssh is told not to check or record host keys.
    #[serde(default = "default_true")]
    pub host_key_checking: bool,
    /// Seconds allowed for connect plus agent bootstrap.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Python interpreter on the target; `None` means discover one.
    #[serde(default)]
    pub python: Option<String>,
    /// Where the interpreter's private temp dir may go, tried first and in order (`remote_tmp`,
    /// then `system_tmpdirs`; `~` and `$VAR` expanded on the target, as the account that
    /// runs there); the agent's own fallbacks follow. Left out when empty, so a spec without
    /// it encodes as it always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temp_dirs: Vec<String>,
    /// Inventory name, for logs only: not part of the key.
    #[serde(default)]
    pub name: Option<String>,
    // -- connection delegation (mitogen_via) --
    /// The hop this target is reached through: its transport is started by that hop's
    /// agent, not by the mux (`mitogen_via`). Part of the key, so a target reached two ways
    /// is two connections, and every target behind one hop shares that hop's connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Box<TargetSpec>>,
    /// The account on the `via` hop that starts this target's transport
    /// (`mitogen_via=user@host`): a become interpreter of the hop's one connection runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_become: Option<crate::BecomeSpec>,
}

fn default_ssh_executable() -> String {
    "ssh".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> f64 {
    10.0
}

impl TargetSpec {
    /// A spec for the local transport with every other field at its default.
    pub fn local() -> TargetSpec {
        TargetSpec {
            transport: Transport::Local,
            host: None,
            port: None,
            user: None,
            identity_file: None,
            ssh_executable: default_ssh_executable(),
            ssh_args: Vec::new(),
            host_key_checking: true,
            timeout: default_timeout(),
            python: None,
            temp_dirs: Vec::new(),
            name: None,
            via: None,
            via_become: None,
        }
    }

    /// The sharing key: every field but `name`. Two calls share a connection exactly when
    /// their keys are equal.
    pub fn key(&self) -> TargetKey {
        TargetKey {
            transport: self.transport,
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            identity_file: self.identity_file.clone(),
            ssh_executable: self.ssh_executable.clone(),
            ssh_args: self.ssh_args.clone(),
            host_key_checking: self.host_key_checking,
            timeout_bits: self.timeout.to_bits(),
            python: self.python.clone(),
            temp_dirs: self.temp_dirs.clone(),
            via: self.via.as_ref().map(|via| Box::new(via.key())),
            via_become: self.via_become.as_ref().map(crate::BecomeSpec::key),
        }
    }

    /// The hops from the controller to this target, nearest first, this target last.
    pub fn route(&self) -> Vec<&TargetSpec> {
        let mut hops = match &self.via {
            Some(via) => via.route(),
            None => Vec::new(),
        };
        hops.push(self);
        hops
    }
}

/// A [`TargetSpec`] without its `name`, usable as a map key (the float `timeout` is kept
/// as its bit pattern so the key can be `Eq + Hash`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    /// See [`TargetSpec::transport`].
    pub transport: Transport,
    /// See [`TargetSpec::host`].
    pub host: Option<String>,
    /// See [`TargetSpec::port`].
    pub port: Option<u16>,
    /// See [`TargetSpec::user`].
    pub user: Option<String>,
    /// See [`TargetSpec::identity_file`].
    pub identity_file: Option<String>,
    /// See [`TargetSpec::ssh_executable`].
    pub ssh_executable: String,
    /// See [`TargetSpec::ssh_args`].
    pub ssh_args: Vec<String>,
    /// See [`TargetSpec::host_key_checking`].
    pub host_key_checking: bool,
    /// `f64::to_bits` of [`TargetSpec::timeout`].
    pub timeout_bits: u64,
    /// See [`TargetSpec::python`].
    pub python: Option<String>,
    /// See [`TargetSpec::temp_dirs`].
    pub temp_dirs: Vec<String>,
    /// The key of [`TargetSpec::via`].
    pub via: Option<Box<TargetKey>>,
    /// The account of [`TargetSpec::via_become`].
    pub via_become: Option<crate::BecomeKey>,
}

/// A short human summary: `user@host:port`, `host`, or `local`.
impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Local => f.write_str("local")?,
            Transport::Ssh => {
                if let Some(user) = &self.user {
                    write!(f, "{user}@")?;
                }
                f.write_str(self.host.as_deref().unwrap_or("?"))?;
                if let Some(port) = self.port {
                    write!(f, ":{port}")?;
                }
            }
        }
        if let Some(via) = &self.via {
            write!(f, " via {via}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> TargetSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn key_ignores_name_only() {
        let a = spec(json!({"transport": "ssh", "host": "h", "port": 22, "name": "web1"}));
        let b = spec(json!({"transport": "ssh", "host": "h", "port": 22, "name": "web2"}));
        let c = spec(json!({"transport": "ssh", "host": "h", "port": 2222, "name": "web1"}));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn defaults_and_summary() {
        let s = spec(json!({"transport": "ssh", "host": "10.0.0.1"}));
        assert_eq!(s.ssh_executable, "ssh");
        assert!(s.host_key_checking);
        assert_eq!(s.timeout, 10.0);
        assert_eq!(s.key().to_string(), "10.0.0.1");
        let s = spec(
            json!({"transport": "ssh", "host": "h", "user": "root", "port": 2222,
                            "timeout": 5}),
        );
        assert_eq!(s.key().to_string(), "root@h:2222");
        assert_eq!(TargetSpec::local().key().to_string(), "local");
    }

    #[test]
    fn unknown_transport_is_rejected() {
        assert!(serde_json::from_value::<TargetSpec>(json!({"transport": "telnet"})).is_err());
    }
}
