//! `ferrogen-mux serve`: checks the socket's directory, binds it, starts the actors
//! ([`start`]), announces `READY <pid>` and runs until stdin reaches EOF or a signal comes.

use std::{
    io::{Read, Write},
    os::unix::fs::FileTypeExt,
    path::Path,
    sync::Arc,
};

use actix::{Actor, Addr};
use tracing::info;

use crate::{
    blob_store,
    bootstrap::{self, Bootstrap},
    config::Config,
    listener::Listener,
    logging, messages, process_groups,
    registry::Registry,
    stack_dump,
    transport::{Connector, Processes},
    MuxError,
};

/// What [`start`] needs besides its socket.
pub struct MuxOptions {
    /// The agent payload for new connections.
    pub bootstrap: Bootstrap,
    /// `MITOGEN_POOL_SIZE`: connections set up at once.
    pub pool_size: usize,
    /// `MITOGEN_MAX_INTERPRETERS`: become interpreters per target.
    pub max_interpreters: usize,
    /// Bytes of uploaded blobs kept.
    pub blob_capacity: usize,
    /// How connections reach their agents: transport processes, or (in tests) in memory.
    pub connector: Arc<dyn Connector>,
}

impl MuxOptions {
    /// The options `serve` runs with.
    pub fn new(bootstrap: Bootstrap, config: &Config) -> MuxOptions {
        MuxOptions {
            bootstrap,
            pool_size: config.pool_size,
            max_interpreters: config.max_interpreters,
            blob_capacity: blob_store::DEFAULT_CAPACITY,
            connector: Arc::new(Processes),
        }
    }
}

/// Starts the mux's actors on `listener` (inside a running actix system): the Registry and
/// the Listener that gives each worker its session. Returns the Registry, which
/// [`messages::ShutdownAll`] closes.
pub fn start(listener: tokio::net::UnixListener, options: MuxOptions) -> Addr<Registry> {
    let registry = Registry::new(
        options.bootstrap,
        options.pool_size,
        options.max_interpreters,
        options.blob_capacity,
        options.connector,
    )
    .start();
    Listener::start(listener, registry.clone());
    registry
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
///
/// # Errors
///
/// Bad settings, an unsafe or unusable socket path, or a failed set-up step.
pub fn serve(socket: &Path, watch_pid: Option<u32>) -> Result<(), MuxError> {
    // If ansible-playbook dies without closing our stdin (SIGKILL of a process holding a
    // copy), the kernel still tells us.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|err| MuxError::Io("prctl(PR_SET_PDEATHSIG)".into(), err.into()))?;
    let config = Config::from_env().map_err(MuxError::Config)?;
    crate::frame_budget::WORKER_FRAMES.set_limit(config.frame_budget);
    crate::heartbeat::configure(config.keepalive_interval, config.keepalive_count);
    let debug_log = logging::init();
    let socket_dir = crate::socket_dir::SocketDir::claim(socket)?;
    let bootstrap = Bootstrap::load()
        .map_err(|err| MuxError::Io(format!("reading ${}", bootstrap::AGENT_SOURCE_ENV), err))?
        .with_options(bootstrap::AgentOptions::from_env());
    let std_listener = bind(socket)?;
    let (lifeline, lifeline_ended) = match watch_pid {
        Some(pid) => (crate::run_watch::exited(pid), "the watched process exited"),
        None => (stdin_closed(), "stdin closed"),
    };

    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(|err| MuxError::Io("registering the socket".into(), err))?;
        let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let registry = start(listener, MuxOptions::new(bootstrap, &config));
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
            _ = lifeline => lifeline_ended,
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!("exiting: {why}");
        let _ = registry.send(messages::ShutdownAll).await;
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

    use crate::socket_dir;

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
