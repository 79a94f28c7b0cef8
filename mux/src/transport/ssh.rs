//! `transport: ssh`: the agent runs behind the system's ssh client, with the TargetSpec's
//! options in the documented order. Without a password ssh runs in batch mode (keys or agents
//! only, never a prompt); with one, ssh gets a terminal of its own whose prompts the mux
//! answers ([`super::ssh_prompts`]).

use worker_ipc::TargetSpec;

use super::{ssh_prompts::PromptAnswers, ConnectionKind};
use crate::heartbeat::Keepalive;

/// The most `-v` ssh is given (`-vvv`, its highest debug level).
const MAX_DEBUG_LEVEL: u8 = 3;

/// An ssh client process.
pub struct Ssh;

impl ConnectionKind for Ssh {
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String> {
        let mut argv = vec![spec.ssh_executable.clone()];
        let level = spec.ssh_debug_level.min(MAX_DEBUG_LEVEL);
        if level > 0 {
            argv.push(format!("-{}", "v".repeat(usize::from(level))));
        }
        argv.extend(spec.ssh_args.iter().cloned());
        if spec.password.is_none() {
            argv.extend(["-o".into(), "BatchMode=yes".into()]);
        } else {
            // One answer per authentication method: a second prompt means the password was
            // wrong, and ssh then reports "Permission denied" itself.
            argv.extend(["-o".into(), "NumberOfPasswordPrompts=1".into()]);
        }
        argv.extend([
            "-o".into(),
            format!("ConnectTimeout={}", spec.timeout.ceil().max(1.0) as u64),
        ]);
        let keepalive = Keepalive::of(spec);
        argv.extend([
            "-o".into(),
            format!(
                "ServerAliveInterval={}",
                keepalive.interval.as_secs_f64().ceil().max(1.0) as u64
            ),
            "-o".into(),
            format!("ServerAliveCountMax={}", keepalive.count),
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
            // As Ansible's ssh plugin: an unknown key is accepted and recorded in known_hosts.
            argv.extend(["-o".into(), "StrictHostKeyChecking=no".into()]);
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

    fn prompt_answers(&self, spec: &TargetSpec) -> Option<PromptAnswers> {
        spec.password
            .clone()
            .map(|password| PromptAnswers::new(password, spec.host_key_checking))
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{Secret, Transport};

    use super::*;
    use crate::bootstrap::Bootstrap;

    fn ssh_spec() -> TargetSpec {
        let mut spec = TargetSpec::local();
        spec.transport = Transport::Ssh;
        spec.host = Some("h".into());
        spec.python = Some("python3".into());
        spec
    }

    fn argv(spec: &TargetSpec) -> Vec<String> {
        let boot = Bootstrap::from_source(b"x");
        let mut argv = Ssh.command_line(
            spec,
            boot.remote_command(spec.python.as_deref(), &[], false),
        );
        let remote = argv.pop().unwrap();
        assert!(remote.starts_with("command -v 'python3' >/dev/null 2>&1 && exec 'python3' -c "));
        argv
    }

    /// The value of each `-o NAME=VALUE` in `argv`, first wins as in ssh.
    fn option<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
        argv.windows(2)
            .find(|w| w[0] == "-o" && w[1].starts_with(&format!("{name}=")))
            .map(|w| &w[1][name.len() + 1..])
    }

    #[test]
    fn ssh_argv_in_documented_order() {
        let mut spec = ssh_spec();
        spec.port = Some(2222);
        spec.user = Some("root".into());
        spec.identity_file = Some("/k".into());
        spec.ssh_args = vec!["-o".into(), "ControlMaster=no".into()];
        spec.host_key_checking = false;
        spec.timeout = 7.0;
        let expect = [
            "ssh",
            "-o",
            "ControlMaster=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=7",
            "-o",
            "ServerAliveInterval=30",
            "-o",
            "ServerAliveCountMax=10",
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
            "h",
        ];
        assert_eq!(argv(&spec), expect);
    }

    #[test]
    fn host_key_checking_off_records_keys_as_vanilla_does() {
        let mut spec = ssh_spec();
        spec.host_key_checking = false;
        let args = argv(&spec);
        assert_eq!(option(&args, "StrictHostKeyChecking"), Some("no"));
        assert_eq!(option(&args, "UserKnownHostsFile"), None);
        spec.host_key_checking = true;
        let args = argv(&spec);
        assert_eq!(option(&args, "StrictHostKeyChecking"), None);
    }

    #[test]
    fn a_password_lifts_batch_mode_and_never_reaches_the_command_line() {
        let mut spec = ssh_spec();
        spec.password = Some(Secret::new("hunter2"));
        let args = argv(&spec);
        assert_eq!(option(&args, "BatchMode"), None);
        assert_eq!(option(&args, "NumberOfPasswordPrompts"), Some("1"));
        assert!(args.iter().all(|a| !a.contains("hunter2")));
        assert!(Ssh.prompt_answers(&spec).is_some());
        spec.password = None;
        assert_eq!(option(&argv(&spec), "BatchMode"), Some("yes"));
        assert!(Ssh.prompt_answers(&spec).is_none());
    }

    #[test]
    fn debug_level_gives_v_flags_up_to_three() {
        let mut spec = ssh_spec();
        for (level, flag) in [
            (1, Some("-v")),
            (2, Some("-vv")),
            (3, Some("-vvv")),
            (9, Some("-vvv")),
        ] {
            spec.ssh_debug_level = level;
            assert_eq!(argv(&spec).get(1).map(String::as_str), flag);
        }
        spec.ssh_debug_level = 0;
        assert!(argv(&spec).iter().all(|a| !a.starts_with("-v")));
    }

    #[test]
    fn keepalive_figures_come_from_the_spec() {
        let mut spec = ssh_spec();
        spec.keepalive_interval = Some(2.5);
        spec.keepalive_count = Some(3);
        let args = argv(&spec);
        assert_eq!(option(&args, "ServerAliveInterval"), Some("3"));
        assert_eq!(option(&args, "ServerAliveCountMax"), Some("3"));
    }

    #[test]
    fn user_options_come_first_so_they_win() {
        let mut spec = ssh_spec();
        spec.ssh_args = vec!["-o".into(), "ServerAliveInterval=5".into(), "-C".into()];
        let args = argv(&spec);
        assert_eq!(option(&args, "ServerAliveInterval"), Some("5"));
        assert!(args.contains(&"-C".to_owned()));
    }
}
