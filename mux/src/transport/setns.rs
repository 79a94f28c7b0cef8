//! `transport: setns`: the agent runs in the namespaces of a container's first process,
//! entered with nsenter on the container's host. The container's own tool (docker, lxc-info,
//! lxc, machinectl) only says which process that is; nothing of the link passes through it.
//!
//! The pid is looked up when the connection starts, by the shell that then execs nsenter, so
//! the command line stays a plain argv built from the spec alone.

use worker_ipc::{SetnsKind, TargetSpec};

use super::{container_of, ConnectionKind};
use crate::bootstrap::shell_quote;

/// A shell that finds the pid and execs nsenter.
pub struct Setns;

impl ConnectionKind for Setns {
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let container = container_of(spec);
        let kind = container.setns_kind.unwrap_or(SetnsKind::Docker);
        entering(spec, kind, container.tool.as_deref(), remote_command)
    }

    fn label(&self) -> &'static str {
        "nsenter"
    }

    fn is_remote(&self) -> bool {
        false
    }
}

/// `/bin/sh -c 'pid=$(FINDER) ...; exec nsenter --target "$pid" --all -- INNER'`, where INNER
/// runs `remote_command` under the container's `/bin/sh`, through `su` to `spec.user` when
/// one is given (nsenter itself takes only numeric ids).
pub(super) fn entering(
    spec: &TargetSpec,
    kind: SetnsKind,
    tool: Option<&str>,
    remote_command: String,
) -> Vec<String> {
    let name = spec.host.clone().unwrap_or_default();
    let finder = pid_finder(kind, tool, &name);
    let inner = match &spec.user {
        Some(user) => format!(
            "su -s /bin/sh -c {} {}",
            shell_quote(&remote_command),
            shell_quote(user)
        ),
        None => format!("/bin/sh -c {}", shell_quote(&remote_command)),
    };
    let script = format!(
        "pid=$({finder}) || exit 1; case \"$pid\" in ''|0|*[!0-9]*) \
         echo \"setns: container {} has no running process\" >&2; exit 1;; esac; \
         exec nsenter --target \"$pid\" --all -- {inner}",
        shell_quote(&name)
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The shell command that prints the pid of the container's first process.
fn pid_finder(kind: SetnsKind, tool: Option<&str>, name: &str) -> String {
    let name = shell_quote(name);
    match kind {
        SetnsKind::Docker => format!(
            "{} inspect --format '{{{{.State.Pid}}}}' {name}",
            shell_quote(tool.unwrap_or("docker"))
        ),
        SetnsKind::Lxc => format!(
            "{} -n {name} -p -H",
            shell_quote(tool.unwrap_or("lxc-info"))
        ),
        SetnsKind::Lxd => format!(
            "{} info {name} | sed -n 's/^P[Ii][Dd]: *//p'",
            shell_quote(tool.unwrap_or("lxc"))
        ),
        SetnsKind::Machinectl => format!(
            "{} show --property=Leader --value {name}",
            shell_quote(tool.unwrap_or("/bin/machinectl"))
        ),
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{ContainerSpec, Transport};

    use super::*;
    use crate::transport::tests::container_spec;

    fn script(kind: SetnsKind, tool: Option<&str>, user: Option<&str>) -> String {
        let container = ContainerSpec {
            tool: tool.map(str::to_owned),
            setns_kind: Some(kind),
            ..ContainerSpec::default()
        };
        let spec = container_spec(Transport::Setns, user, container);
        let argv = Setns.command_line(&spec, "exec python3".into());
        assert_eq!(&argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(argv.len(), 3);
        argv[2].clone()
    }

    const CHECK: &str = "|| exit 1; case \"$pid\" in ''|0|*[!0-9]*) \
        echo \"setns: container 'c1' has no running process\" >&2; exit 1;; esac; \
        exec nsenter --target \"$pid\" --all -- ";

    #[test]
    fn docker_pid_from_inspect() {
        assert_eq!(
            script(SetnsKind::Docker, None, None),
            format!(
                "pid=$('docker' inspect --format '{{{{.State.Pid}}}}' 'c1') {CHECK}\
                 /bin/sh -c 'exec python3'"
            )
        );
    }

    #[test]
    fn a_user_is_reached_with_su() {
        assert!(script(SetnsKind::Docker, Some("/opt/docker"), Some("app"))
            .ends_with("-- su -s /bin/sh -c 'exec python3' 'app'"));
    }

    #[test]
    fn the_other_finders() {
        assert!(script(SetnsKind::Lxc, Some("/opt/lxc-info"), None)
            .starts_with("pid=$('/opt/lxc-info' -n 'c1' -p -H) "));
        assert!(script(SetnsKind::Lxd, None, None)
            .starts_with("pid=$('lxc' info 'c1' | sed -n 's/^P[Ii][Dd]: *//p') "));
        assert!(script(SetnsKind::Machinectl, None, None)
            .starts_with("pid=$('/bin/machinectl' show --property=Leader --value 'c1') "));
    }
}
