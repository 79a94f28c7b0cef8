//! `transport: lxc`: the agent runs in a classic LXC container, under `lxc-attach` (never the
//! LXC Python bindings).

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// An `lxc-attach` process.
pub struct Lxc;

impl ConnectionKind for Lxc {
    /// `lxc-attach --clear-env --name CONTAINER -- sh -c REMOTE`: a clean environment, as the
    /// container's own login would have.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "lxc-attach".into())];
        argv.extend(container.tool_args);
        argv.extend(["--clear-env".into(), "--name".into()]);
        argv.push(spec.host.clone().unwrap_or_default());
        argv.push("--".into());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "lxc-attach"
    }

    fn is_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{ContainerSpec, Transport};

    use super::*;
    use crate::transport::tests::{argv_before_remote, container_spec};

    #[test]
    fn lxc_attach_with_its_path() {
        let container = ContainerSpec {
            tool: Some("/opt/lxc/bin/lxc-attach".into()),
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Lxc, None, container);
        assert_eq!(
            argv_before_remote(&Lxc, &spec),
            [
                "/opt/lxc/bin/lxc-attach",
                "--clear-env",
                "--name",
                "c1",
                "--",
                "/bin/sh",
                "-c"
            ]
        );
    }
}
