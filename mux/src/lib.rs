//! `ferrogen-mux` as a library: the connection multiplexer's actors, the transports, and the
//! entry points the binary (`src/main.rs`) and the in-process tests call.
//!
//! # Where things are
//!
//! - [`serve`]: `ferrogen-mux serve` (socket checks, signals, stdin EOF) and [`serve::start`],
//!   which starts the actors on a listening socket (also what tests start in-process);
//! - `listener` accepts workers; `worker_session` is one worker; `registry` holds the
//!   targets and the blob store; `target` is one connection, the router of its agent link
//!   (`link_writer` writes to it);
//!   `interpreters` is a target's table of interpreters and calls (`interpreter_lru`
//!   decides which become interpreters to stop); `transfer` is one streamed file transfer;
//! - [`messages`]: every message between those actors;
//! - [`transport`]: how a connection's process is started, one file per connection kind;
//!   [`bootstrap`] is the agent payload and the command that runs it;
//! - [`status_cli`] is `ferrogen-mux status`; `stack_dump` answers `kill -SEGV`;
//! - the wire vocabulary (frames, the worker and agent links, error kinds, status rows) is
//!   the `worker_ipc` crate.

mod blob_store;
pub mod bootstrap;
pub mod config;
mod frame_budget;
mod heartbeat;
mod interpreter_lru;
mod interpreters;
mod link_writer;
mod listener;
pub mod logging;
pub mod messages;
mod process_groups;
pub mod registry;
mod routes;
mod run_watch;
pub mod serve;
mod socket_dir;
mod stack_dump;
pub mod status_cli;
mod target;
mod transfer;
pub mod transport;
mod worker_session;

use std::{fmt, path::PathBuf};

/// The command-line synopsis, shown with usage errors.
pub const USAGE: &str = "usage: ferrogen-mux serve --socket PATH [--watch-pid PID]
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
    pub fn exit_code(&self) -> u8 {
        match self {
            MuxError::Usage(_)
            | MuxError::Config(_)
            | MuxError::InsecureDir { .. }
            | MuxError::UnsafeDir { .. } => 2,
            _ => 1,
        }
    }
}
