//! `transport: local`: the agent runs on the controller, under `/bin/sh -c`.

use worker_ipc::TargetSpec;

use super::ConnectionKind;

/// A local child process.
pub struct Local;

impl ConnectionKind for Local {
    fn command_line(&self, _: &TargetSpec, remote_command: String) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), remote_command]
    }

    /// `/bin/sh -c 'exec python ...'`: the child is the interpreter itself.
    fn label(&self) -> &'static str {
        "the local interpreter"
    }

    fn is_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::Bootstrap;

    #[test]
    fn local_runs_sh() {
        let spec = TargetSpec::local();
        let remote =
            Bootstrap::from_source(b"x").remote_command(spec.python.as_deref(), &[], false);
        let argv = Local.command_line(&spec, remote);
        assert_eq!(&argv[..2], &["/bin/sh", "-c"]);
    }
}
