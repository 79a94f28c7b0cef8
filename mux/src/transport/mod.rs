//! The transport: the child process that carries the agent link (ssh, or a local shell),
//! started with piped stdio in its own process group, killed with the mux (parent-death
//! signal), its stderr tail kept for error messages and its exit reported as a
//! [`TransportExit`].
//!
//! One file per connection kind says how to build its command line ([`ConnectionKind`]);
//! everything else here is shared. A new kind (docker, kubectl, a delegated hop) is one new
//! file implementing [`ConnectionKind`], one arm in [`kind_of`], and its tests.
//!
//! Targets reach their agents through a [`Connector`]: [`Processes`] starts the transport
//! processes; tests connect in memory instead (`tests/in_process.rs`); [`Routed`] sends a
//! target with a `via` through the hop's agent instead ([`via`]).

mod buildah;
mod docker;
mod jail;
mod kubectl;
mod local;
mod lxc;
mod lxd;
mod machinectl;
mod podman;
mod setns;
mod ssh;
pub mod ssh_prompts;
mod via;

pub use via::{RouteReader, RouteWriter, Routed};

use std::{
    fmt,
    future::Future,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{io::AsRawFd, process::ExitStatusExt},
    },
    pin::Pin,
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    process::{ChildStderr, Command},
    sync::oneshot,
};
use tracing::debug;
use worker_ipc::{ContainerSpec, TargetSpec, Transport, CHUNK_MAX};

use crate::{bootstrap::Bootstrap, process_groups};

/// How much of the transport's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Tool options whose value is a credential: shown as `********` in logs (kubectl's).
const SECRET_OPTIONS: &[&str] = &["--token", "--password"];

/// How long the reaper waits for the stderr reader to drain what the child wrote last.
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// What differs between connection kinds: the command line, and how to talk about it.
pub trait ConnectionKind: Send + Sync {
    /// The argv that runs `remote_command` (the bootstrap stub, a shell command) on the
    /// target described by `spec`.
    fn command_line(&self, spec: &TargetSpec, remote_command: String) -> Vec<String>;

    /// The transport process as messages name it ("ssh").
    fn label(&self) -> &'static str;

    /// Whether the process is a client of a remote end (ssh), so that its ending normally
    /// after `ready` means the far side went away rather than the interpreter itself exited.
    fn is_remote(&self) -> bool;

    /// What the mux types at the process's prompts, for a kind that reads them from its
    /// controlling terminal (ssh with a password); `None`: the process gets no terminal.
    fn prompt_answers(&self, _spec: &TargetSpec) -> Option<ssh_prompts::PromptAnswers> {
        None
    }
}

/// The implementation for `transport`.
pub fn kind_of(transport: Transport) -> &'static dyn ConnectionKind {
    match transport {
        Transport::Ssh => &ssh::Ssh,
        Transport::Local => &local::Local,
        Transport::Docker => &docker::Docker,
        Transport::Podman => &podman::Podman,
        Transport::Buildah => &buildah::Buildah,
        Transport::Lxc => &lxc::Lxc,
        Transport::Lxd => &lxd::LXD,
        Transport::Incus => &lxd::INCUS,
        Transport::Kubectl => &kubectl::Kubectl,
        Transport::Jail => &jail::Jail,
        Transport::Machinectl => &machinectl::Machinectl,
        Transport::Setns => &setns::Setns,
    }
}

/// The container kinds' settings of `spec`, defaults where it has none.
fn container_of(spec: &TargetSpec) -> ContainerSpec {
    spec.container.clone().unwrap_or_default()
}

/// `remote_command` (a shell command) as the argv a container tool execs in the container.
fn shell(remote_command: String) -> [String; 3] {
    ["/bin/sh".into(), "-c".into(), remote_command]
}

/// `argv` with the values of [`SECRET_OPTIONS`] masked, for the log.
fn loggable(argv: &[String]) -> Vec<&str> {
    let mut shown = Vec::with_capacity(argv.len());
    for (index, arg) in argv.iter().enumerate() {
        let secret = index > 0 && SECRET_OPTIONS.contains(&argv[index - 1].as_str());
        let inline = SECRET_OPTIONS
            .iter()
            .any(|option| arg.strip_prefix(option).is_some_and(|v| v.starts_with('=')));
        shown.push(if secret || inline { "********" } else { arg });
    }
    shown
}

/// How the transport process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportExit {
    /// It could not be started at all.
    NotStarted,
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// Its status could not be had.
    Unknown(String),
}

impl TransportExit {
    fn of(status: ExitStatus) -> TransportExit {
        match (status.code(), status.signal()) {
            (Some(code), _) => TransportExit::Exited(code),
            (None, Some(signal)) => TransportExit::Signalled(signal),
            _ => TransportExit::Unknown(status.to_string()),
        }
    }
}

impl fmt::Display for TransportExit {
    /// "exit status 255" / "killed by signal 9".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportExit::NotStarted => f.write_str("not started"),
            TransportExit::Exited(code) => write!(f, "exit status {code}"),
            TransportExit::Signalled(signal) => write!(f, "killed by signal {signal}"),
            TransportExit::Unknown(why) => write!(f, "exit status unknown ({why})"),
        }
    }
}

/// The last [`STDERR_TAIL`] bytes the transport wrote to stderr, shared with its reader task.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    /// The tail's lines, trimmed, without blank ones, without ssh's note about adding the
    /// host key and without its `-v` debug lines (noise next to the real error; the debug
    /// lines are in the mux's log).
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("Warning: Permanently added")
                    && !is_ssh_debug_line(l)
            })
            .map(str::to_owned)
            .collect()
    }

    /// Keeps `bytes` as the newest part of the tail.
    pub fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock();
        tail.extend_from_slice(bytes);
        if tail.len() > STDERR_TAIL {
            let excess = tail.len() - STDERR_TAIL;
            tail.drain(..excess);
        }
    }
}

/// Whether `line` is one of ssh's `-v` lines (`debug1: ...`, `OpenSSH_9.2p1 ...`).
fn is_ssh_debug_line(line: &str) -> bool {
    let debug_level = line.strip_prefix("debug").and_then(|rest| {
        rest.strip_suffix(':')
            .or_else(|| rest.split_once(": ").map(|(n, _)| n))
    });
    matches!(debug_level, Some("1" | "2" | "3")) || line.starts_with("OpenSSH_")
}

/// The agent link's write side (a transport's stdin).
pub type AgentWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// The agent link's read side (a transport's stdout).
pub type AgentReader = Box<dyn AsyncRead + Unpin + Send>;

/// A started transport, the bootstrap payload written to its stdin.
pub struct Started {
    /// The child's pid (also its process group id); `None` for a link in memory.
    pub pid: Option<u32>,
    /// The agent link's write side.
    pub stdin: AgentWriter,
    /// A second handle on the pipe behind `stdin`, where it is one: put chunks move from
    /// their file into it with splice(2) (`link_writer`). Closed with `stdin`.
    pub stdin_pipe: Option<OwnedFd>,
    /// The agent link's read side, where agent frames arrive.
    pub stdout: AgentReader,
    /// Resolves once the transport has ended (and its last stderr was read).
    pub exit: oneshot::Receiver<TransportExit>,
    /// For a link routed through a hop: the blobs that hop already holds, which it serves
    /// in place of sending their content again.
    pub hop_blobs: Option<crate::routes::RelayedBlobs>,
}

/// What [`Connector::connect`] returns.
pub type Connecting = Pin<Box<dyn Future<Output = Result<Started, String>> + Send>>;

/// What a Target hands its [`Connector`] to start one agent link.
pub struct ConnectRequest {
    /// The target to reach.
    pub spec: TargetSpec,
    /// The agent to send it.
    pub bootstrap: Bootstrap,
    /// Where the transport's stderr is kept, for failure messages.
    pub stderr_tail: StderrTail,
    /// The Target's name, for logs.
    pub name: String,
    /// Bounds writing the bootstrap.
    pub timeout: Duration,
}

/// How a Target reaches its agent.
pub trait Connector: Send + Sync {
    /// Starts the agent link `request` describes.
    fn connect(&self, request: ConnectRequest) -> Connecting;
}

/// Transport processes, one per connection: what the mux runs with.
pub struct Processes;

impl Connector for Processes {
    fn connect(&self, request: ConnectRequest) -> Connecting {
        Box::pin(start(request))
    }
}

/// The transport's command line for `spec`: the same whether the mux runs it or a hop's
/// agent does (`via`).
pub fn argv_for(spec: &TargetSpec, bootstrap: &Bootstrap) -> Vec<String> {
    kind_of(spec.transport).command_line(
        spec,
        bootstrap.named_for(spec).remote_command(
            spec.python.as_deref(),
            &spec.temp_dirs,
            crate::bootstrap::compresses_link(spec),
        ),
    )
}

/// Starts the transport for the request's target and writes the bootstrap payload to it
/// (within its timeout).
///
/// # Errors
///
/// The process cannot be started; the message names the program.
pub async fn start(request: ConnectRequest) -> Result<Started, String> {
    let ConnectRequest {
        spec,
        bootstrap,
        stderr_tail,
        name,
        timeout,
    } = request;
    let (spec, bootstrap, name) = (&spec, &bootstrap, name.as_str());
    let kind = kind_of(spec.transport);
    let argv = argv_for(spec, bootstrap);
    debug!(target = %name, argv = ?loggable(&argv), "connecting");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let answers = kind.prompt_answers(spec);
    let terminal = match answers {
        Some(_) => Some(
            ssh_prompts::Terminal::open()
                .map_err(|err| format!("cannot open a terminal for {}: {err}", kind.label()))?,
        ),
        None => None,
    };
    let slave = terminal.as_ref().map(ssh_prompts::Terminal::slave_fd);
    if slave.is_none() {
        cmd.process_group(0);
    }
    // SAFETY: the closure only calls prctl(2), setsid(2) and ioctl(2), which are
    // async-signal-safe, between fork and exec. A new session is also a new process group
    // (setsid fails in a group leader, hence no process_group then).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(slave) = slave {
                ssh_prompts::make_controlling_terminal(slave)?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|err| format!("cannot run {:?}: {err}", argv[0]))?;
    let pid = child.id().unwrap_or_default();
    process_groups::register(pid);
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("transport child has no stdio pipes".into());
    };
    widen_pipe(&stdin);
    widen_pipe(&stdout);
    let (ended_tx, ended) = oneshot::channel();
    if let (Some(terminal), Some(answers)) = (terminal, answers) {
        tokio::spawn(ssh_prompts::answer_prompts(
            terminal,
            answers,
            stderr_tail.clone(),
            name.to_owned(),
            ended,
        ));
    }
    let stderr_task = tokio::spawn(collect_stderr(stderr, stderr_tail, name.to_owned()));
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => TransportExit::of(status),
            Err(err) => TransportExit::Unknown(err.to_string()),
        };
        let _ = ended_tx.send(());
        let _ = tokio::time::timeout(STDERR_DRAIN, stderr_task).await;
        let _ = exit_tx.send(status);
    });
    match tokio::time::timeout(timeout, stdin.write_all(bootstrap.payload())).await {
        Ok(Ok(())) => {}
        // The child died early (ssh could not connect); its stdout EOF and stderr
        // tell the story, so carry on and let that path report it.
        Ok(Err(err)) => debug!(target = %name, "bootstrap write failed: {err}"),
        Err(_) => debug!(target = %name, "bootstrap write timed out"),
    }
    Ok(Started {
        pid: Some(pid),
        stdin_pipe: stdin.as_fd().try_clone_to_owned().ok(),
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        exit,
        hop_blobs: None,
    })
}

/// Capacity asked of the pipes to and from a transport: a transfer chunk then crosses in one
/// write and one read, rather than in sixteen of the default 64 KiB, each waking the other side.
const PIPE_CAPACITY: usize = CHUNK_MAX;

/// Asks the kernel for a pipe of [`PIPE_CAPACITY`] bytes; best effort (Linux only, and an
/// unprivileged user gets at most `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
fn widen_pipe(pipe: &impl AsRawFd) {
    let _ = nix::fcntl::fcntl(
        pipe.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY as i32),
    );
}

/// Keeps the tail of the transport's stderr and logs each piece.
async fn collect_stderr(mut stderr: ChildStderr, tail: StderrTail, name: String) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                debug!(target = %name, "transport stderr: {}", String::from_utf8_lossy(&buf[..n]).trim_end());
                tail.push(&buf[..n]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_transport_pipe_holds_a_whole_chunk() {
        let (read_end, _write_end) = nix::unistd::pipe().unwrap();
        widen_pipe(&read_end);
        let capacity = nix::fcntl::fcntl(read_end.as_raw_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ);
        assert_eq!(capacity.unwrap(), CHUNK_MAX as i32);
    }

    /// A spec for container `c1` of `transport`.
    pub(crate) fn container_spec(
        transport: Transport,
        user: Option<&str>,
        container: ContainerSpec,
    ) -> TargetSpec {
        let mut spec = TargetSpec::local();
        spec.transport = transport;
        spec.host = Some("c1".into());
        spec.user = user.map(str::to_owned);
        spec.container = Some(container);
        spec.python = Some("python3".into());
        spec
    }

    /// The argv `kind` builds for `spec`, without the bootstrap command itself (its last
    /// word), which is checked to be the bootstrap.
    pub(crate) fn argv_before_remote(kind: &dyn ConnectionKind, spec: &TargetSpec) -> Vec<String> {
        let remote =
            Bootstrap::from_source(b"x").remote_command(spec.python.as_deref(), &[], false);
        let mut argv = kind.command_line(spec, remote.clone());
        assert_eq!(argv.pop(), Some(remote));
        argv
    }

    #[test]
    fn credentials_are_masked_in_the_log() {
        let argv: Vec<String> = ["kubectl", "--token", "s3cret", "--password=pw", "exec"]
            .map(str::to_owned)
            .into();
        assert_eq!(
            loggable(&argv),
            ["kubectl", "--token", "********", "********", "exec"]
        );
    }

    #[test]
    fn exits_are_worded_as_before() {
        assert_eq!(TransportExit::Exited(255).to_string(), "exit status 255");
        assert_eq!(
            TransportExit::Signalled(9).to_string(),
            "killed by signal 9"
        );
        assert_eq!(TransportExit::NotStarted.to_string(), "not started");
    }

    #[test]
    fn the_stderr_tail_leaves_ssh_debug_lines_to_the_log() {
        let tail = StderrTail::default();
        tail.push(b"OpenSSH_9.2p1 Debian-2, OpenSSL 3.0\ndebug1: Reading configuration data\n");
        tail.push(b"debug3: kex names ok\nferropw@h: Permission denied (password).\n");
        assert_eq!(
            tail.lines(),
            vec!["ferropw@h: Permission denied (password).".to_owned()]
        );
    }

    #[test]
    fn the_stderr_tail_keeps_the_last_bytes_and_drops_host_key_notes() {
        let tail = StderrTail::default();
        tail.push(b"Warning: Permanently added 'h' to the list of known hosts.\n");
        tail.push(&vec![b'x'; STDERR_TAIL]);
        tail.push(b"\nPermission denied\n");
        let lines = tail.lines();
        assert_eq!(lines.last().unwrap(), "Permission denied");
        assert!(lines.iter().all(|l| !l.starts_with("Warning")));
        assert!(tail.0.lock().len() <= STDERR_TAIL);
    }

    #[actix::test]
    async fn a_local_transport_runs_the_bootstrap_and_reports_its_exit() {
        let bootstrap =
            Bootstrap::from_source(b"import sys; sys.stderr.write('bye\\n'); sys.exit(3)\n");
        let tail = StderrTail::default();
        let mut spec = TargetSpec::local();
        spec.python = Some("python3".into());
        let started = start(ConnectRequest {
            spec,
            bootstrap,
            stderr_tail: tail.clone(),
            name: "t".into(),
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        assert_eq!(started.exit.await.unwrap(), TransportExit::Exited(3));
        assert_eq!(tail.lines(), vec!["bye".to_owned()]);
        process_groups::kill(started.pid.unwrap());
    }
}
