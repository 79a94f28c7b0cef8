//! `transport: jail`: the agent runs in a FreeBSD jail, under `jexec`.

use worker_ipc::TargetSpec;

use super::{container_of, ConnectionKind};

/// A `jexec` process.
pub struct Jail;

impl ConnectionKind for Jail {
    /// `jexec [-U USER] JAIL sh -c REMOTE`: `-U` runs as the jail's own account of that name.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let mut argv = vec![container.tool.unwrap_or_else(|| "/usr/sbin/jexec".into())];
        argv.extend(container.tool_args);
        if let Some(user) = &spec.user {
            argv.extend(["-U".into(), user.clone()]);
        }
        argv.push(spec.host.clone().unwrap_or_default());
        argv.extend(super::shell(remote_command));
        argv
    }

    fn label(&self) -> &'static str {
        "jexec"
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
    fn jexec_as_the_jails_account() {
        let spec = container_spec(Transport::Jail, Some("www"), ContainerSpec::default());
        assert_eq!(
            argv_before_remote(&Jail, &spec),
            ["/usr/sbin/jexec", "-U", "www", "c1", "/bin/sh", "-c"]
        );
    }
}
