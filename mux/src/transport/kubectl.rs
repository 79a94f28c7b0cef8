//! `transport: kubectl`: the agent runs in a pod's container, under `kubectl exec`.

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// A `kubectl exec` client process.
pub struct Kubectl;

impl ConnectionKind for Kubectl {
    /// `kubectl [options] exec -i POD [-c CONTAINER] -- sh -c REMOTE`, as
    /// kubernetes.core.kubectl builds it: `-i` keeps stdin open without asking for a terminal
    /// (there is none: the link is pipes).
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "kubectl".into())];
        argv.extend(container.tool_args);
        argv.extend(["exec".into(), "-i".into()]);
        argv.push(spec.host.clone().unwrap_or_default());
        if let Some(pod_container) = container.pod_container {
            argv.extend(["-c".into(), pod_container]);
        }
        argv.push("--".into());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "kubectl"
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
    fn kubectl_options_go_before_exec_and_the_container_after_the_pod() {
        let container = ContainerSpec {
            tool: Some("/opt/kubectl".into()),
            tool_args: vec!["-n".into(), "web".into()],
            pod_container: Some("app".into()),
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Kubectl, None, container);
        assert_eq!(
            argv_before_remote(&Kubectl, &spec),
            [
                "/opt/kubectl",
                "-n",
                "web",
                "exec",
                "-i",
                "c1",
                "-c",
                "app",
                "--",
                "/bin/sh",
                "-c"
            ]
        );
    }
}
