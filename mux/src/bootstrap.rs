//! The agent bootstrap: the compressed agent source and the commands that start it.
//!
//! The transport runs `PYTHON -c 'import sys,zlib;SOURCE=sys.stdin.buffer.read(N);exec(zlib.decompress(SOURCE))'`
//! and the mux writes exactly `N` bytes of zlib-compressed agent source to its stdin.
//!
//! Debug settings reach the agent the same way as its source, as globals the stub sets before
//! `SOURCE` ([`AgentOptions`]); with none set the stub is exactly the line above.

use std::{io::Write, path::Path, sync::Arc};

use flate2::{write::ZlibEncoder, Compression};
use worker_ipc::{TargetSpec, Transport};

/// The agent source embedded at build time (see `src/build.rs`).
const EMBEDDED_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agent.py"));

/// Environment variable naming an agent source file to use instead of the embedded one.
/// Meant for tests of the mux against stand-in agents.
pub const AGENT_SOURCE_ENV: &str = "FERROGEN_AGENT_SOURCE";

/// Interpreters tried in order when the TargetSpec names none: ansible-core's own discovery
/// order (`INTERPRETER_PYTHON_FALLBACK`) first, so that the interpreter is the one Ansible
/// discovers and builds its modules' command lines for.
const PYTHON_CANDIDATES: &str = "python3.13 python3.12 python3.11 python3.10 python3.9 python3.8 \
     /usr/bin/python3 python3 /usr/local/bin/python3 /usr/libexec/platform-python python";

/// Interpreters tried in order when the one the TargetSpec names is missing: any will do,
/// since modules built for the missing one run through the shell; the system's first.
const FALLBACK_CANDIDATES: &str =
    "/usr/bin/python3 python3 /usr/local/bin/python3 /usr/libexec/platform-python python";

/// Settings for the agent, set as globals by the bootstrap stub; the agent reads them with
/// `globals().get(NAME)` (as it reads `SOURCE`) and hands them on to its become children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// `ROUTER_DEBUG=1`: `MITOGEN_ROUTER_DEBUG` is on; every interpreter writes its debug log
    /// to `/tmp/mitogen.<pid>.log` on its host.
    pub router_debug: bool,
    /// `LOG_LEVEL="debug"`: the mux logs at debug somewhere (-vvv, or the debug file), so the
    /// agent forwards its debug records too, not only info and up.
    pub forward_debug: bool,
}

impl AgentOptions {
    /// The options for this mux: `MITOGEN_ROUTER_DEBUG` and the log level in force (call
    /// after the logging set-up).
    pub fn from_env() -> AgentOptions {
        AgentOptions {
            router_debug: crate::logging::router_debug(),
            forward_debug: tracing::level_filters::LevelFilter::current()
                >= tracing::level_filters::LevelFilter::DEBUG,
        }
    }

    /// The stub's assignments for these options, each followed by `;`.
    fn globals(self) -> String {
        let mut out = String::new();
        if self.router_debug {
            out.push_str("ROUTER_DEBUG=1;");
        }
        if self.forward_debug {
            out.push_str("LOG_LEVEL=\"debug\";");
        }
        out
    }
}

/// The compressed agent, shared by every Target.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// zlib-compressed agent source, written verbatim to each transport's stdin; shared
    /// because every connection sends the same bytes.
    compressed: Arc<Vec<u8>>,
    /// Debug settings passed to every agent through the stub.
    options: AgentOptions,
}

impl Bootstrap {
    /// Compresses the embedded agent, or the file named by [`AGENT_SOURCE_ENV`].
    ///
    /// # Errors
    ///
    /// The override file cannot be read.
    pub fn load() -> std::io::Result<Bootstrap> {
        match std::env::var_os(AGENT_SOURCE_ENV) {
            Some(path) => Ok(Bootstrap::from_source(&std::fs::read(Path::new(&path))?)),
            None => Ok(Bootstrap::from_source(EMBEDDED_AGENT)),
        }
    }

    /// Compresses `source`.
    pub fn from_source(source: &[u8]) -> Bootstrap {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::best());
        // Writing to a Vec cannot fail.
        let _ = enc.write_all(source);
        let compressed = enc.finish().unwrap_or_default();
        Bootstrap {
            compressed: Arc::new(compressed),
            options: AgentOptions::default(),
        }
    }

    /// The same agent, started with `options`.
    pub fn with_options(mut self, options: AgentOptions) -> Bootstrap {
        self.options = options;
        self
    }

    /// The bytes to write to the transport's stdin.
    pub fn payload(&self) -> &[u8] {
        &self.compressed
    }

    /// The Python one-liner that reads and runs the payload. `temp_dirs` go in hex-encoded
    /// JSON (`TEMP_DIRS`), which needs no quoting inside the stub's single quotes.
    fn stub(&self, temp_dirs: &[String]) -> String {
        let temp_dirs = if temp_dirs.is_empty() {
            String::new()
        } else {
            let json = serde_json::to_vec(temp_dirs).unwrap_or_default();
            let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
            format!("TEMP_DIRS=\"{hex}\";")
        };
        format!(
            "import sys,zlib;{}{temp_dirs}SOURCE=sys.stdin.buffer.read({});exec(zlib.decompress(SOURCE))",
            self.options.globals(),
            self.compressed.len()
        )
    }

    /// The shell command run on the target (by ssh's remote shell or `/bin/sh -c`); the shell
    /// `exec`s the interpreter. A named interpreter the target lacks falls back to discovery:
    /// commands, transfers and `raw` work as they do under vanilla Ansible, and modules meant
    /// for the missing interpreter go through the shell, which fails them as vanilla's does.
    /// `temp_dirs` are where the agent puts its temp dir first ([`TargetSpec::temp_dirs`]).
    pub fn remote_command(&self, python: Option<&str>, temp_dirs: &[String]) -> String {
        let stub = self.stub(temp_dirs);
        match python {
            Some(python) => {
                let python = shell_quote(python);
                format!(
                    "command -v {python} >/dev/null 2>&1 && exec {python} -c '{stub}'; {}",
                    discovery(FALLBACK_CANDIDATES, &stub)
                )
            }
            None => discovery(PYTHON_CANDIDATES, &stub),
        }
    }

    /// The argv of the transport process for `spec`.
    pub fn argv(&self, spec: &TargetSpec) -> Vec<String> {
        let remote = self.remote_command(spec.python.as_deref(), &spec.temp_dirs);
        match spec.transport {
            Transport::Local => vec!["/bin/sh".into(), "-c".into(), remote],
            Transport::Ssh => {
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
                argv.push(remote);
                argv
            }
        }
    }
}

/// The shell loop that execs the first of `candidates` that exists and starts. A script (a
/// pyenv shim, which exists for versions that are not selected) is tried first; a binary is
/// not, which would cost a Python start-up.
fn discovery(candidates: &str, stub: &str) -> String {
    format!(
        "for p in {candidates}; do f=$(command -v \"$p\") || continue; \
         case $(head -c2 \"$f\" 2>/dev/null) in '#!') \"$f\" -S -c '' >/dev/null 2>&1 || continue;; esac; \
         exec \"$p\" -c '{stub}'; done; \
         echo \"ferrogen: no python3 found on target\" >&2; exit 127"
    )
}

/// Quotes `s` for a POSIX shell with single quotes.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::ZlibDecoder;

    use super::*;

    #[test]
    fn payload_decompresses_to_source() {
        let boot = Bootstrap::from_source(b"print('hi')\n");
        let mut out = String::new();
        ZlibDecoder::new(boot.payload())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "print('hi')\n");
        let n = boot.payload().len();
        let stub = format!(
            "import sys,zlib;SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))"
        );
        let discovery = discovery(FALLBACK_CANDIDATES, &stub);
        assert!(discovery.starts_with("for p in /usr/bin/python3 python3 "));
        assert_eq!(
            boot.remote_command(Some("/opt/py 3/bin/python3"), &[]),
            format!("command -v '/opt/py 3/bin/python3' >/dev/null 2>&1 && exec '/opt/py 3/bin/python3' -c 'import sys,zlib;SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))'; {discovery}")
        );
    }

    #[test]
    fn options_become_stub_globals() {
        let boot = Bootstrap::from_source(b"x").with_options(AgentOptions {
            router_debug: true,
            forward_debug: true,
        });
        let n = boot.payload().len();
        let stub = format!("import sys,zlib;ROUTER_DEBUG=1;LOG_LEVEL=\"debug\";SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))");
        let discovery = discovery(FALLBACK_CANDIDATES, &stub);
        assert_eq!(
            boot.remote_command(Some("python3"), &[]),
            format!("command -v 'python3' >/dev/null 2>&1 && exec 'python3' -c 'import sys,zlib;ROUTER_DEBUG=1;LOG_LEVEL=\"debug\";SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))'; {discovery}")
        );
    }

    #[test]
    fn discovery_tries_candidates_then_fails() {
        let cmd = Bootstrap::from_source(b"").remote_command(None, &[]);
        assert!(
            cmd.starts_with(
                "for p in python3.13 python3.12 python3.11 python3.10 python3.9 python3.8 /usr/bin/python3 python3 "
            ),
            "{cmd}"
        );
        assert!(
            cmd.ends_with("no python3 found on target\" >&2; exit 127"),
            "{cmd}"
        );
    }

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
        let argv = boot.argv(&spec);
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

    #[test]
    fn temp_dirs_reach_the_stub_as_hex_json() {
        let boot = Bootstrap::from_source(b"x");
        let cmd = boot.remote_command(Some("python3"), &["~/it's".into()]);
        let hex: String = br#"["~/it's"]"#.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            cmd.contains(&format!("TEMP_DIRS=\"{hex}\";SOURCE=")),
            "{cmd}"
        );
        assert!(!boot
            .remote_command(Some("python3"), &[])
            .contains("TEMP_DIRS"));
    }

    #[test]
    fn local_runs_sh() {
        let argv = Bootstrap::from_source(b"x").argv(&TargetSpec::local());
        assert_eq!(&argv[..2], &["/bin/sh", "-c"]);
    }
}
