//! The agent bootstrap: the compressed agent source and the remote command that starts it
//! (the transport, `crate::transport`, runs that command).
//!
//! The transport runs `PYTHON -c 'import sys,zlib;GUARD;SOURCE=sys.stdin.buffer.read(N);exec(zlib.decompress(SOURCE))'`
//! and the mux writes exactly `N` bytes of zlib-compressed agent source to its stdin. `GUARD`
//! ([`python_guard`]) makes a Python older than the agent's minimum exit with a message naming
//! the version needed and the one found, in syntax that Python 2 still runs.
//!
//! Debug settings reach the agent the same way as its source, as globals the stub sets before
//! `SOURCE` ([`AgentOptions`]); with none set the stub is exactly the line above. So does
//! `COMPRESS_LINK=1`, when the link is one [`compresses_link`] deflates, and
//! `REMOTE_NAME="..."`, the name the agent gives itself in `ps` ([`remote_name`]).

use std::{io::Write, path::Path, sync::Arc, sync::OnceLock};

use worker_ipc::{TargetSpec, Transport};

use flate2::{write::ZlibEncoder, Compression};

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

/// The oldest Python the agent runs on (mux/agent/ferrogen_agent/agent.py says so too; the agent's tests run it
/// on every Python the machine has from this one on).
const AGENT_MIN_PYTHON: (u32, u32) = (3, 6);

/// The stub's first statement: exit on a Python older than [`AGENT_MIN_PYTHON`], naming both
/// versions (the transport's stderr becomes the connection failure's message).
fn python_guard() -> String {
    let (major, minor) = AGENT_MIN_PYTHON;
    format!(
        "sys.version_info<({major},{minor}) and sys.exit(\"ferrogen: the agent needs Python {major}.{minor} or newer; \
         %s is Python %s\"%(sys.executable,sys.version.split()[0]))"
    )
}

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
    /// The name the agent shows in `ps` after `mitogen:` ([`remote_name`]); `None` leaves the
    /// stub without it.
    remote_name: Option<Arc<str>>,
}

/// What a masked name shows instead of the controller's identity (`mitogen_mask_remote_name`),
/// as Mitogen's.
pub const MASKED_REMOTE_NAME: &str = "ansible";

/// The controller's identity as the target's processes show it (`mitogen:USER@HOST:PID`, the
/// mux's user, host name and pid), or [`MASKED_REMOTE_NAME`]. Only characters that need no
/// quoting in the stub are kept; others become `_`.
pub fn remote_name(masked: bool) -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    if masked {
        return MASKED_REMOTE_NAME;
    }
    IDENTITY.get_or_init(|| {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |user| user.name);
        let host = nix::unistd::gethostname()
            .map(|host| host.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{user}@{host}:{}", std::process::id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-@:+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    })
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
            remote_name: None,
        }
    }

    /// The same agent, named in `ps` as `spec` asks ([`remote_name`]).
    pub fn named_for(&self, spec: &TargetSpec) -> Bootstrap {
        Bootstrap {
            remote_name: Some(Arc::from(remote_name(spec.mask_remote_name))),
            ..self.clone()
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
    fn stub(&self, temp_dirs: &[String], compress_link: bool) -> String {
        let temp_dirs = if temp_dirs.is_empty() {
            String::new()
        } else {
            let json = serde_json::to_vec(temp_dirs).unwrap_or_default();
            let hex: String = json.iter().map(|b| format!("{b:02x}")).collect();
            format!("TEMP_DIRS=\"{hex}\";")
        };
        let remote_name = self
            .remote_name
            .as_ref()
            .map(|name| format!("REMOTE_NAME=\"{name}\";"))
            .unwrap_or_default();
        format!(
            "import sys,zlib;{};{}{remote_name}{}{temp_dirs}SOURCE=sys.stdin.buffer.read({});exec(zlib.decompress(SOURCE))",
            python_guard(),
            self.options.globals(),
            if compress_link {
                "COMPRESS_LINK=1;"
            } else {
                ""
            },
            self.compressed.len()
        )
    }

    /// The shell command run on the target (by ssh's remote shell or `/bin/sh -c`); the shell
    /// `exec`s the interpreter. A named interpreter the target lacks falls back to discovery:
    /// commands, transfers and `raw` work as they do under vanilla Ansible, and modules meant
    /// for the missing interpreter go through the shell, which fails them as vanilla's does.
    /// `temp_dirs` are where the agent puts its temp dir first ([`TargetSpec::temp_dirs`]);
    /// `compress_link` as [`compresses_link`] says for its target.
    pub fn remote_command(
        &self,
        python: Option<&str>,
        temp_dirs: &[String],
        compress_link: bool,
    ) -> String {
        let stub = self.stub(temp_dirs, compress_link);
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
}

/// Whether the mux and the agent deflate what they send each other (`AgentLinkCodec`): over
/// ssh, unless ssh compresses the stream itself because the user asked for it (the plugin
/// passes `-C` only then). A local child's pipes are not worth compressing.
pub fn compresses_link(spec: &TargetSpec) -> bool {
    spec.transport == Transport::Ssh && !ssh_compresses(&spec.ssh_args)
}

/// Whether these ssh options turn ssh's stream compression on: `-C`, alone or among other
/// flags that take no argument (`-qC`), or `-o Compression=yes`.
fn ssh_compresses(args: &[String]) -> bool {
    const FLAGS: &str = "46AaCfGgKkMNnqsTtVvXxYy";
    args.iter().enumerate().any(|(index, arg)| {
        let option = match arg.strip_prefix("-o") {
            Some("") => args.get(index + 1).map(String::as_str),
            Some(inline) => Some(inline),
            None => None,
        };
        if let Some((name, value)) = option.and_then(|o| o.split_once('=')) {
            return name.trim().eq_ignore_ascii_case("compression")
                && value.trim().eq_ignore_ascii_case("yes");
        }
        arg.strip_prefix('-').is_some_and(|flags| {
            flags.contains('C') && flags.chars().all(|flag| FLAGS.contains(flag))
        })
    })
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
pub(crate) fn shell_quote(s: &str) -> String {
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
            "import sys,zlib;{};SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))",
            python_guard()
        );
        let discovery = discovery(FALLBACK_CANDIDATES, &stub);
        assert!(discovery.starts_with("for p in /usr/bin/python3 python3 "));
        assert_eq!(
            boot.remote_command(Some("/opt/py 3/bin/python3"), &[], false),
            format!("command -v '/opt/py 3/bin/python3' >/dev/null 2>&1 && exec '/opt/py 3/bin/python3' -c 'import sys,zlib;{};SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))'; {discovery}", python_guard())
        );
    }

    #[test]
    fn options_become_stub_globals() {
        let boot = Bootstrap::from_source(b"x").with_options(AgentOptions {
            router_debug: true,
            forward_debug: true,
        });
        let n = boot.payload().len();
        let stub = format!("import sys,zlib;{};ROUTER_DEBUG=1;LOG_LEVEL=\"debug\";SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))", python_guard());
        let discovery = discovery(FALLBACK_CANDIDATES, &stub);
        assert_eq!(
            boot.remote_command(Some("python3"), &[], false),
            format!("command -v 'python3' >/dev/null 2>&1 && exec 'python3' -c 'import sys,zlib;{};ROUTER_DEBUG=1;LOG_LEVEL=\"debug\";SOURCE=sys.stdin.buffer.read({n});exec(zlib.decompress(SOURCE))'; {discovery}", python_guard())
        );
    }

    #[test]
    fn discovery_tries_candidates_then_fails() {
        let cmd = Bootstrap::from_source(b"").remote_command(None, &[], false);
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
    fn ssh_link_is_compressed_unless_ssh_compresses() {
        let boot = Bootstrap::from_source(b"x");
        let mut spec = TargetSpec::local();
        assert!(!compresses_link(&spec));
        assert!(!boot
            .remote_command(None, &[], false)
            .contains("COMPRESS_LINK"));
        assert!(boot
            .remote_command(Some("python3"), &[], true)
            .contains("COMPRESS_LINK=1;SOURCE="));
        spec.transport = Transport::Ssh;
        spec.host = Some("h".into());
        assert!(compresses_link(&spec));
        for asked in [
            &["-C"][..],
            &["-qC"],
            &["-o", "Compression=yes"],
            &["-oCompression=yes"],
        ] {
            spec.ssh_args = asked.iter().map(|a| a.to_string()).collect();
            assert!(!compresses_link(&spec), "{asked:?}");
        }
        for not_asked in [
            &["-c", "aes128-ctr"][..],
            &["-o", "Compression=no"],
            &["-o", "ControlMaster=no"],
            &["-F", "/dev/null"],
        ] {
            spec.ssh_args = not_asked.iter().map(|a| a.to_string()).collect();
            assert!(compresses_link(&spec), "{not_asked:?}");
        }
    }

    #[test]
    fn the_stub_names_the_controller_or_masks_it() {
        let boot = Bootstrap::from_source(b"x");
        let mut spec = TargetSpec::local();
        assert!(!boot
            .remote_command(None, &[], false)
            .contains("REMOTE_NAME"));
        let named = boot.named_for(&spec).remote_command(None, &[], false);
        let expect = format!("REMOTE_NAME=\"{}\";", remote_name(false));
        assert!(named.contains(&expect), "{named}");
        assert!(remote_name(false).ends_with(&format!(":{}", std::process::id())));
        assert!(remote_name(false).contains('@'));
        spec.mask_remote_name = true;
        let masked = boot.named_for(&spec).remote_command(None, &[], false);
        assert!(masked.contains("REMOTE_NAME=\"ansible\";"), "{masked}");
        assert!(!masked.contains(remote_name(false)));
    }

    #[test]
    fn temp_dirs_reach_the_stub_as_hex_json() {
        let boot = Bootstrap::from_source(b"x");
        let cmd = boot.remote_command(Some("python3"), &["~/it's".into()], false);
        let hex: String = br#"["~/it's"]"#.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            cmd.contains(&format!("TEMP_DIRS=\"{hex}\";SOURCE=")),
            "{cmd}"
        );
        assert!(!boot
            .remote_command(Some("python3"), &[], false)
            .contains("TEMP_DIRS"));
    }
}
