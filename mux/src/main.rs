//! `ferrogen-mux`: the ferrogen connection multiplexer.
//!
//! ```text
//! ferrogen-mux serve --socket PATH    serve workers on PATH until stdin reaches EOF
//! ferrogen-mux status --socket PATH   print a running mux's actors
//! ferrogen-mux --version
//! ```
//!
//! # Layout
//!
//! One file per actor: [`listener`] (accepts workers), [`worker_session`] (one per worker),
//! [`registry`] (targets and blobs), [`target`] (one transport + agent), [`interpreter`]
//! (one remote interpreter; [`interpreter_lru`] decides which become interpreters to stop),
//! [`transfer`] (one streamed file transfer).
//! [`bootstrap`] builds the transport commands; [`stack_dump`] answers `kill -SEGV`; errors
//! become exit codes only in [`main`].

mod blob_store;
mod bootstrap;
mod config;
mod frame_budget;
mod heartbeat;
mod interpreter;
mod interpreter_lru;
mod listener;
mod logging;
mod process_groups;
mod registry;
mod socket_dir;
mod stack_dump;
mod status_cli;
mod target;
mod transfer;
mod worker_session;

use std::{
    fmt,
    io::{Read, Write},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use tracing::{error, info};

use crate::{bootstrap::Bootstrap, config::Config, listener::Listener, registry::Registry};

const USAGE: &str = "usage: ferrogen-mux serve --socket PATH
       ferrogen-mux status --socket PATH
       ferrogen-mux --version";

/// Everything that ends the mux (or the status command) with a non-zero exit code.
#[derive(Debug)]
pub enum MuxError {
    /// Bad command line.
    Usage(String),
    /// Bad environment setting.
    Config(config::ConfigError),
    /// The socket's directory is reachable by other users.
    InsecureDir {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket's directory is not a directory of this user's (see `socket_dir::check`).
    UnsafeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// An I/O operation failed; the string says which.
    Io(String, std::io::Error),
    /// The peer broke the worker protocol.
    Protocol(worker_ipc::FrameError),
    /// The mux answered with an error frame.
    Remote(String),
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::Usage(msg) => write!(f, "{msg}\n{USAGE}"),
            MuxError::Config(err) => err.fmt(f),
            MuxError::InsecureDir { dir, mode } => write!(
                f,
                "refusing to serve: socket directory {} has mode {mode:04o}; it must not be \
                 accessible by group or others (use 0700)",
                dir.display()
            ),
            MuxError::UnsafeDir { dir, why } => write!(
                f,
                "refusing to serve: socket directory {}: {why}; it must be a directory of the \
                 mux's own user with mode 0700",
                dir.display()
            ),
            MuxError::Io(what, err) => write!(f, "{what}: {err}"),
            MuxError::Protocol(err) => write!(f, "protocol error: {err}"),
            MuxError::Remote(msg) => write!(f, "mux error: {msg}"),
        }
    }
}

impl std::error::Error for MuxError {}

impl MuxError {
    /// The process exit code for this error: 2 for usage and configuration mistakes,
    /// 1 for everything else.
    fn exit_code(&self) -> u8 {
        match self {
            MuxError::Usage(_)
            | MuxError::Config(_)
            | MuxError::InsecureDir { .. }
            | MuxError::UnsafeDir { .. } => 2,
            _ => 1,
        }
    }
}

/// The parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Run the multiplexer.
    Serve {
        /// Where to listen.
        socket: PathBuf,
    },
    /// Print a running mux's status.
    Status {
        /// Where the mux listens.
        socket: PathBuf,
    },
    /// Print the version.
    Version,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, MuxError> {
    let mut args = args.into_iter();
    let sub = args
        .next()
        .ok_or_else(|| MuxError::Usage("missing command".into()))?;
    if sub == "--version" || sub == "-V" {
        return Ok(Command::Version);
    }
    let mut socket = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => {
                let value = args
                    .next()
                    .ok_or_else(|| MuxError::Usage("--socket needs a path".into()))?;
                socket = Some(PathBuf::from(value));
            }
            _ => match arg.strip_prefix("--socket=") {
                Some(value) => socket = Some(PathBuf::from(value)),
                None => return Err(MuxError::Usage(format!("unexpected argument {arg:?}"))),
            },
        }
    }
    let socket = || {
        socket
            .clone()
            .ok_or_else(|| MuxError::Usage("--socket is required".into()))
    };
    match sub.as_str() {
        "serve" => Ok(Command::Serve { socket: socket()? }),
        "status" => Ok(Command::Status { socket: socket()? }),
        other => Err(MuxError::Usage(format!("unknown command {other:?}"))),
    }
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|command| match command {
        Command::Version => {
            println!("ferrogen-mux {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Status { socket } => status_cli::run(&socket, &mut std::io::stdout().lock()),
        Command::Serve { socket } => serve(&socket),
    });
    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            error!("{err}");
            eprintln!("ferrogen-mux: {err}");
            err.exit_code()
        }
    };
    // Exit without waiting for the runtime's blocking threads (the stdin watcher may still
    // be parked in read(2)); every child was killed by now.
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code))
}

/// Binds the listening socket, replacing a stale socket file left by a dead mux.
fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener, MuxError> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(socket);
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|err| MuxError::Io(format!("binding {}", socket.display()), err))?;
    listener
        .set_nonblocking(true)
        .map_err(|err| MuxError::Io("configuring the socket".into(), err))?;
    Ok(listener)
}

/// Resolves when stdin reaches EOF: the parent ansible-playbook holds the write end, so
/// this is how the mux learns its parent is gone. A plain thread, because a blocking read
/// must not hold up the runtime.
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 512];
            loop {
                match stdin.read(&mut buf) {
                    Ok(n) if n > 0 => {}
                    // A signal (the stack dumper's SIGUSR2) is not the parent going away.
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            let _ = tx.send(());
        })
        .map(|_| rx)
        .unwrap_or_else(|_| {
            // No thread, no watcher: never resolve, PDEATHSIG still applies.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::mem::forget(tx);
            rx
        })
}

/// `ferrogen-mux serve`.
fn serve(socket: &Path) -> Result<(), MuxError> {
    // If ansible-playbook dies without closing our stdin (SIGKILL of a process holding a
    // copy), the kernel still tells us.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|err| MuxError::Io("prctl(PR_SET_PDEATHSIG)".into(), err.into()))?;
    let config = Config::from_env().map_err(MuxError::Config)?;
    frame_budget::WORKER_FRAMES.set_limit(config.frame_budget);
    heartbeat::configure(config.keepalive_interval, config.keepalive_count);
    let debug_log = logging::init();
    let socket_dir = socket_dir::SocketDir::claim(socket)?;
    let bootstrap = Bootstrap::load()
        .map_err(|err| MuxError::Io(format!("reading ${}", bootstrap::AGENT_SOURCE_ENV), err))?
        .with_options(bootstrap::AgentOptions::from_env());
    let std_listener = bind(socket)?;
    let stdin_eof = stdin_closed();

    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(|err| MuxError::Io("registering the socket".into(), err))?;
        let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let registry = actix::Actor::start(Registry::new(
            bootstrap,
            config.pool_size,
            config.max_interpreters,
            blob_store::DEFAULT_CAPACITY,
        ));
        let _listener = Listener::start(listener, registry.clone());
        stack_dump::install(registry.clone(), config.dump_interval)
            .map_err(|err| MuxError::Io("installing the stack dump handlers".into(), err))?;
        info!(
            socket = %socket.display(),
            pool_size = config.pool_size,
            max_interpreters = config.max_interpreters,
            ?debug_log,
            "serving"
        );
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY {}", std::process::id())
                .and_then(|()| out.flush())
                .map_err(|err| MuxError::Io("writing READY".into(), err))?;
        }
        let why = tokio::select! {
            _ = stdin_eof => "stdin closed",
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!("exiting: {why}");
        let _ = registry.send(registry::Shutdown).await;
        Ok(())
    });
    process_groups::kill_all();
    socket_dir.remove(socket);
    result
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, MuxError> {
    tokio::signal::unix::signal(kind)
        .map_err(|err| MuxError::Io("installing a signal handler".into(), err))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn args(list: &[&str]) -> Result<Command, MuxError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            args(&["serve", "--socket", "/x/s"]).unwrap(),
            Command::Serve {
                socket: "/x/s".into()
            }
        );
        assert_eq!(
            args(&["status", "--socket=/x/s"]).unwrap(),
            Command::Status {
                socket: "/x/s".into()
            }
        );
        assert_eq!(args(&["--version"]).unwrap(), Command::Version);
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            &[][..],
            &["serve"],
            &["serve", "--socket"],
            &["frob", "--socket", "x"],
        ] {
            assert_eq!(args(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn socket_dir_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = socket_dir::check(dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        socket_dir::check(dir.path()).unwrap();
    }
}
