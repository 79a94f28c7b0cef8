//! `transport: buildah`: the agent runs in a working container, under `buildah run`.

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// A `buildah run` process.
pub struct Buildah;

impl ConnectionKind for Buildah {
    /// `buildah run [--user=U] -- CONTAINER sh -c REMOTE`.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "buildah".into())];
        argv.extend(container.tool_args);
        argv.push("run".into());
        if let Some(user) = &spec.user {
            argv.push(format!("--user={user}"));
        }
        argv.push("--".into());
        argv.push(spec.host.clone().unwrap_or_default());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "buildah"
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
    fn buildah_runs_in_the_working_container() {
        let spec = container_spec(Transport::Buildah, Some("app"), ContainerSpec::default());
        assert_eq!(
            argv_before_remote(&Buildah, &spec),
            ["buildah", "run", "--user=app", "--", "c1", "/bin/sh", "-c"]
        );
    }
}
