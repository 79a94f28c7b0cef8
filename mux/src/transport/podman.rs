//! `transport: podman`: the agent runs in a running container, under `podman exec`.

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// A `podman exec` process.
pub struct Podman;

impl ConnectionKind for Podman {
    /// `podman [ansible_podman_extra_args] exec [--user=U] --interactive -- CONTAINER sh -c
    /// REMOTE`.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "podman".into())];
        argv.extend(container.tool_args);
        argv.push("exec".into());
        if let Some(user) = &spec.user {
            argv.push(format!("--user={user}"));
        }
        argv.extend(["--interactive".into(), "--".into()]);
        argv.push(spec.host.clone().unwrap_or_default());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "podman"
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
    fn podman_defaults() {
        let spec = container_spec(Transport::Podman, None, ContainerSpec::default());
        assert_eq!(
            argv_before_remote(&Podman, &spec),
            [
                "podman",
                "exec",
                "--interactive",
                "--",
                "c1",
                "/bin/sh",
                "-c"
            ]
        );
    }

    #[test]
    fn podman_with_executable_extra_args_and_user() {
        let container = ContainerSpec {
            tool: Some("/usr/local/bin/podman".into()),
            tool_args: vec!["--remote".into()],
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Podman, Some("app"), container);
        assert_eq!(
            argv_before_remote(&Podman, &spec),
            [
                "/usr/local/bin/podman",
                "--remote",
                "exec",
                "--user=app",
                "--interactive",
                "--",
                "c1",
                "/bin/sh",
                "-c"
            ]
        );
    }
}
