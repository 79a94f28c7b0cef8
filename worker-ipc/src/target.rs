//! [`TargetSpec`]: how to reach a target, and [`TargetKey`]: when two calls share a
//! connection.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// How the mux reaches a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `ssh [options] host REMOTE_CMD`.
    Ssh,
    /// `/bin/sh -c REMOTE_CMD` on the controller.
    Local,
    /// `docker [extra args] exec --interactive [--user=U] CONTAINER REMOTE`.
    Docker,
    /// `podman [extra args] exec [--user=U] --interactive -- CONTAINER REMOTE`.
    Podman,
    /// `buildah run [--user=U] -- CONTAINER REMOTE`.
    Buildah,
    /// LXC classic: `lxc-attach --clear-env --name CONTAINER -- REMOTE`.
    Lxc,
    /// LXD: `lxc exec --mode=noninteractive CONTAINER -- REMOTE`.
    Lxd,
    /// Incus: `incus exec --mode=non-interactive CONTAINER -- REMOTE`.
    Incus,
    /// `kubectl [options] exec -i POD [-c CONTAINER] -- REMOTE`.
    Kubectl,
    /// FreeBSD jail: `jexec [-U USER] JAIL REMOTE`.
    Jail,
    /// A systemd-nspawn machine, entered as `setns` enters it (the leader found by machinectl).
    Machinectl,
    /// The namespaces of a container's first process, found with the container's own tool
    /// and entered with nsenter.
    Setns,
}

/// The tool `setns` asks for the pid of the container's first process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetnsKind {
    /// `docker inspect`.
    Docker,
    /// LXC classic's `lxc-info`.
    Lxc,
    /// LXD's `lxc info`.
    Lxd,
    /// `machinectl show`.
    Machinectl,
}

/// What the container kinds need beyond `host` (the container, pod or jail) and `user` (the
/// account inside it). Part of the sharing key: a task with other tool arguments reaches the
/// container another way, so it gets its own connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The program to run (`mitogen_docker_path`, `ansible_podman_executable`,
    /// `mitogen_lxc_attach_path`, ...; for setns the tool that finds the pid); `None` runs
    /// the kind's usual program from PATH.
    #[serde(default)]
    pub tool: Option<String>,
    /// Arguments for the tool before its subcommand, already split, in order
    /// (`ansible_docker_extra_args`, kubectl's `--namespace` and friends).
    #[serde(default)]
    pub tool_args: Vec<String>,
    /// kubectl: the container of the pod to enter (`-c`); `None` leaves it to kubectl.
    #[serde(default)]
    pub pod_container: Option<String>,
    /// setns: which tool `tool` is; required by setns, ignored by the other kinds.
    #[serde(default)]
    pub setns_kind: Option<SetnsKind>,
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
    /// The container kinds' own settings; `None` for ssh and local, and left out then, so
    /// their specs encode as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// Inventory name, for logs only: not part of the key.
    #[serde(default)]
    pub name: Option<String>,
    // ssh, complete (issue 17) and per-host keepalive (issue 20). Each is left out when unset,
    // so a spec without them encodes as it always did.
    /// The login password (`ansible_password`), typed by the mux at ssh's prompts on a
    /// terminal of its own (`transport::ssh_prompts`); redacted in `Debug` and when encoded,
    /// and in the key only as a keyed digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// How many `-v` ssh gets (`mitogen_ssh_debug_level`, the ssh plugin's `verbosity`; 0-3):
    /// its debug lines go to the mux's log, shown at -vvv.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ssh_debug_level: u8,
    /// Seconds between keepalives (`mitogen_ssh_keepalive_interval`): the mux's heartbeat
    /// to the agent and ssh's `ServerAliveInterval`; `None` = the mux's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<f64>,
    /// Keepalives missed before the target is dead (`mitogen_ssh_keepalive_count`): the
    /// heartbeat's and ssh's `ServerAliveCountMax`; `None` = the mux's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_count: Option<u32>,
    /// `mitogen_mask_remote_name`: the target's processes are named without the controller's
    /// user, host and pid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_remote_name: bool,
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

fn is_zero(level: &u8) -> bool {
    *level == 0
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
            container: None,
            name: None,
            password: None,
            ssh_debug_level: 0,
            keepalive_interval: None,
            keepalive_count: None,
            mask_remote_name: false,
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
            password_digest: self.password.as_ref().map(Secret::keyed_digest),
            ssh_debug_level: self.ssh_debug_level,
            keepalive_interval_bits: self.keepalive_interval.map(f64::to_bits),
            keepalive_count: self.keepalive_count,
            mask_remote_name: self.mask_remote_name,
            container: self.container.clone(),
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
    /// [`Secret::keyed_digest`] of [`TargetSpec::password`]: specs with different passwords
    /// get different connections, and the key holds no password.
    pub password_digest: Option<String>,
    /// See [`TargetSpec::ssh_debug_level`].
    pub ssh_debug_level: u8,
    /// `f64::to_bits` of [`TargetSpec::keepalive_interval`].
    pub keepalive_interval_bits: Option<u64>,
    /// See [`TargetSpec::keepalive_count`].
    pub keepalive_count: Option<u32>,
    /// See [`TargetSpec::mask_remote_name`].
    pub mask_remote_name: bool,
    /// See [`TargetSpec::container`].
    pub container: Option<ContainerSpec>,
    /// The key of [`TargetSpec::via`].
    pub via: Option<Box<TargetKey>>,
    /// The account of [`TargetSpec::via_become`].
    pub via_become: Option<crate::BecomeKey>,
}

/// A short human summary: `user@host:port`, `host`, `local`, or `docker:user@container`.
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
            container => {
                write!(f, "{}:", container.name())?;
                if let Some(user) = &self.user {
                    write!(f, "{user}@")?;
                }
                f.write_str(self.host.as_deref().unwrap_or("?"))?;
            }
        }
        if let Some(via) = &self.via {
            write!(f, " via {via}")?;
        }
        Ok(())
    }
}

impl Transport {
    /// Every transport, for the checks that the Python side names the same ones.
    pub const ALL: [Transport; 12] = [
        Transport::Ssh,
        Transport::Local,
        Transport::Docker,
        Transport::Podman,
        Transport::Buildah,
        Transport::Lxc,
        Transport::Lxd,
        Transport::Incus,
        Transport::Kubectl,
        Transport::Jail,
        Transport::Machinectl,
        Transport::Setns,
    ];

    /// The name the TargetSpec gives it ("docker").
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ssh => "ssh",
            Transport::Local => "local",
            Transport::Docker => "docker",
            Transport::Podman => "podman",
            Transport::Buildah => "buildah",
            Transport::Lxc => "lxc",
            Transport::Lxd => "lxd",
            Transport::Incus => "incus",
            Transport::Kubectl => "kubectl",
            Transport::Jail => "jail",
            Transport::Machinectl => "machinectl",
            Transport::Setns => "setns",
        }
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
    fn passwords_are_keyed_by_digest_and_never_shown() {
        let a = spec(json!({"transport": "ssh", "host": "h", "password": "hunter2"}));
        let b = spec(json!({"transport": "ssh", "host": "h", "password": "other"}));
        let c = spec(json!({"transport": "ssh", "host": "h", "password": "hunter2"}));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), c.key());
        for shown in [
            format!("{a:?}"),
            format!("{:?}", a.key()),
            serde_json::to_string(&a).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn ssh_settings_are_optional_and_part_of_the_key() {
        let plain = spec(json!({"transport": "ssh", "host": "h"}));
        assert_eq!(plain.keepalive_interval, None);
        assert_eq!(plain.ssh_debug_level, 0);
        assert!(!plain.mask_remote_name);
        assert_eq!(
            serde_json::to_value(&plain).unwrap().get("password"),
            None,
            "unset fields are left out"
        );
        for changed in [
            json!({"transport": "ssh", "host": "h", "ssh_debug_level": 2}),
            json!({"transport": "ssh", "host": "h", "keepalive_interval": 2}),
            json!({"transport": "ssh", "host": "h", "keepalive_count": 3}),
            json!({"transport": "ssh", "host": "h", "mask_remote_name": true}),
        ] {
            assert_ne!(spec(changed).key(), plain.key());
        }
    }

    #[test]
    fn container_settings_are_part_of_the_key() {
        let a = spec(json!({"transport": "docker", "host": "c1", "user": "app"}));
        let b = spec(json!({"transport": "docker", "host": "c1", "user": "app",
                            "container": {"tool_args": ["--tls"]}}));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().to_string(), "docker:app@c1");
        let s = spec(json!({"transport": "setns", "host": "c1",
                            "container": {"setns_kind": "lxd", "tool": "/opt/lxc"}}));
        let container = s.container.unwrap();
        assert_eq!(container.setns_kind, Some(SetnsKind::Lxd));
        assert_eq!(container.tool.as_deref(), Some("/opt/lxc"));
    }

    #[test]
    fn transport_names_are_their_wire_names() {
        for transport in Transport::ALL {
            assert_eq!(serde_json::to_value(transport).unwrap(), transport.name());
        }
    }

    #[test]
    fn a_spec_without_container_settings_encodes_as_before() {
        let encoded = serde_json::to_value(TargetSpec::local()).unwrap();
        assert!(encoded.get("container").is_none());
    }

    #[test]
    fn unknown_transport_is_rejected() {
        assert!(serde_json::from_value::<TargetSpec>(json!({"transport": "telnet"})).is_err());
    }
}
