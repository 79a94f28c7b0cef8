//! `transport: docker`: the agent runs in a running container, under `docker exec`.

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// A `docker exec` client process.
pub struct Docker;

impl ConnectionKind for Docker {
    /// `docker [ansible_docker_extra_args] exec --interactive [--user=U] CONTAINER sh -c REMOTE`:
    /// the extra arguments go before the subcommand, as community.docker's plugin puts them.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "docker".into())];
        argv.extend(container.tool_args);
        argv.extend(["exec".into(), "--interactive".into()]);
        if let Some(user) = &spec.user {
            argv.push(format!("--user={user}"));
        }
        argv.push(spec.host.clone().unwrap_or_default());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "docker"
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
    fn docker_defaults() {
        let spec = container_spec(Transport::Docker, None, ContainerSpec::default());
        assert_eq!(
            argv_before_remote(&Docker, &spec),
            ["docker", "exec", "--interactive", "c1", "/bin/sh", "-c"]
        );
    }

    #[test]
    fn docker_with_path_extra_args_and_user() {
        let container = ContainerSpec {
            tool: Some("/opt/docker".into()),
            tool_args: vec!["--host".into(), "unix:///run/d.sock".into()],
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Docker, Some("app"), container);
        assert_eq!(
            argv_before_remote(&Docker, &spec),
            [
                "/opt/docker",
                "--host",
                "unix:///run/d.sock",
                "exec",
                "--interactive",
                "--user=app",
                "c1",
                "/bin/sh",
                "-c"
            ]
        );
    }
}
