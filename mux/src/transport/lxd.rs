//! `transport: lxd` and `transport: incus`: the agent runs in an LXD or Incus instance, under
//! `lxc exec` / `incus exec` (the two clients differ only in name and in how they spell
//! non-interactive mode).

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// An `lxc exec` or `incus exec` client process.
pub struct Lxd {
    /// The client's usual name: `lxc` or `incus`.
    client: &'static str,
    /// Its flag for plain pipes rather than a terminal.
    non_interactive: &'static str,
}

/// LXD's client.
pub const LXD: Lxd = Lxd {
    client: "lxc",
    non_interactive: "--mode=noninteractive",
};

/// Incus's client.
pub const INCUS: Lxd = Lxd {
    client: "incus",
    non_interactive: "--mode=non-interactive",
};

impl ConnectionKind for Lxd {
    /// `lxc exec --mode=noninteractive CONTAINER -- sh -c REMOTE`.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| self.client.into())];
        argv.extend(container.tool_args);
        argv.extend(["exec".into(), self.non_interactive.into()]);
        argv.push(spec.host.clone().unwrap_or_default());
        argv.push("--".into());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        self.client
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{ContainerSpec, Transport};

    use super::*;
    use crate::transport::tests::{argv_before_remote, container_spec};

    #[test]
    fn lxd_runs_lxc_exec() {
        let spec = container_spec(Transport::Lxd, None, ContainerSpec::default());
        assert_eq!(
            argv_before_remote(&LXD, &spec),
            [
                "lxc",
                "exec",
                "--mode=noninteractive",
                "c1",
                "--",
                "/bin/sh",
                "-c"
            ]
        );
    }

    #[test]
    fn incus_runs_incus_exec_with_its_path() {
        let container = ContainerSpec {
            tool: Some("/snap/bin/incus".into()),
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Incus, None, container);
        assert_eq!(
            argv_before_remote(&INCUS, &spec),
            [
                "/snap/bin/incus",
                "exec",
                "--mode=non-interactive",
                "c1",
                "--",
                "/bin/sh",
                "-c"
            ]
        );
    }
}
