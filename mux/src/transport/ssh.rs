//! `transport: ssh`: the agent runs behind the system's ssh client, in batch mode (no
//! prompts: keys or agents only), with the TargetSpec's options in the documented order.

use worker_ipc::TargetSpec;

use super::ConnectionKind;

/// An ssh client process.
pub struct Ssh;

impl ConnectionKind for Ssh {
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let mut argv = vec![spec.ssh_executable.clone()];
        argv.extend(spec.ssh_args.iter().cloned());
        argv.extend(["-o".into(), "BatchMode=yes".into()]);
        argv.extend([
            "-o".into(),
            format!("ConnectTimeout={}", spec.timeout.ceil().max(1.0) as u64),
        ]);
        if let Some(port) = spec.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        if let Some(user) = &spec.user {
            argv.extend(["-l".into(), user.clone()]);
        }
        if let Some(identity) = &spec.identity_file {
            argv.extend(["-i".into(), identity.clone()]);
            argv.extend(["-o".into(), "IdentitiesOnly=yes".into()]);
        }
        if !spec.host_key_checking {
            argv.extend(["-o".into(), "StrictHostKeyChecking=no".into()]);
            argv.extend(["-o".into(), "UserKnownHostsFile=/dev/null".into()]);
        }
        argv.push(spec.host.clone().unwrap_or_default());
        argv.push(remote_command);
        argv
    }

    fn label(&self) -> &'static str {
        "ssh"
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::Transport;

    use super::*;
    use crate::bootstrap::Bootstrap;

    #[test]
    fn ssh_argv_in_documented_order() {
        let boot = Bootstrap::from_source(b"x");
        let mut spec = TargetSpec::local();
        spec.transport = Transport::Ssh;
        spec.host = Some("h".into());
        spec.port = Some(2222);
        spec.user = Some("root".into());
        spec.identity_file = Some("/k".into());
        spec.ssh_args = vec!["-o".into(), "ControlMaster=no".into()];
        spec.host_key_checking = false;
        spec.timeout = 7.0;
        spec.python = Some("python3".into());
        let argv = Ssh.command_line(
            &spec,
            boot.remote_command(spec.python.as_deref(), &[], false),
        );
        let expect = [
            "ssh",
            "-o",
            "ControlMaster=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=7",
            "-p",
            "2222",
            "-l",
            "root",
            "-i",
            "/k",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "h",
        ];
        assert_eq!(&argv[..expect.len()], &expect);
        assert_eq!(argv.len(), expect.len() + 1);
        assert!(argv[expect.len()]
            .starts_with("command -v 'python3' >/dev/null 2>&1 && exec 'python3' -c "));
    }
}
