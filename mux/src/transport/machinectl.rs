//! `transport: machinectl`: a systemd-nspawn machine, entered as setns enters a container
//! (machinectl's own shell needs a terminal; the agent link is pipes). machinectl only names
//! the machine's leader process.

use worker_ipc::{SetnsKind, TargetSpec};

use super::{container_of, setns, ConnectionKind};

/// A shell that asks machinectl for the leader and execs nsenter.
pub struct Machinectl;

impl ConnectionKind for Machinectl {
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        setns::entering(
            spec,
            SetnsKind::Machinectl,
            container.tool.as_deref(),
            remote_command,
        )
    }

    fn label(&self) -> &'static str {
        "nsenter"
    }

    fn is_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{ContainerSpec, Transport};

    use super::*;
    use crate::transport::tests::container_spec;

    #[test]
    fn machinectl_path_finds_the_leader() {
        let container = ContainerSpec {
            tool: Some("/usr/bin/machinectl".into()),
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Machinectl, None, container);
        let argv = Machinectl.command_line(&spec, "exec python3".into());
        assert!(argv[2]
            .starts_with("pid=$('/usr/bin/machinectl' show --property=Leader --value 'c1') "));
    }
}
