//! `Listener`: accepts workers on the mux's UNIX socket.
//!
//! Only peers running as the mux's own uid (checked with `SO_PEERCRED`) are served; each
//! gets a [`WorkerSession`].

use actix::prelude::*;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{debug, error, warn};

use crate::{registry::Registry, worker_session::WorkerSession};

/// Why a connection was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The peer runs as another user.
    OtherUser {
        /// The peer's uid, from `SO_PEERCRED`.
        peer_uid: u32,
    },
    /// `SO_PEERCRED` could not be read.
    NoCredentials(std::io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::OtherUser { peer_uid } => write!(f, "peer runs as uid {peer_uid}"),
            Refusal::NoCredentials(err) => write!(f, "cannot read peer credentials: {err}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks the peer's uid (`SO_PEERCRED`, recorded by the kernel at `connect`) against
/// `uid`. Returns the peer's pid, for logs.
///
/// # Errors
///
/// [`Refusal`] when the peer is another user or its credentials cannot be read.
pub fn check_peer(stream: &UnixStream, uid: u32) -> Result<Option<i32>, Refusal> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == uid => Ok(cred.pid()),
        Ok(cred) => Err(Refusal::OtherUser {
            peer_uid: cred.uid(),
        }),
        Err(err) => Err(Refusal::NoCredentials(err)),
    }
}

/// The accepting side of the socket.
pub struct Listener {
    /// Handed to every session so it can submit calls.
    registry: Addr<Registry>,
    /// The uid peers must have: the mux's effective uid.
    uid: u32,
}

impl Listener {
    /// Starts accepting on `listener`.
    pub fn start(listener: UnixListener, registry: Addr<Registry>) -> Addr<Listener> {
        Listener::create(|ctx| {
            ctx.add_stream(UnixListenerStream::new(listener));
            Listener {
                registry,
                uid: nix::unistd::geteuid().as_raw(),
            }
        })
    }
}

impl Actor for Listener {
    type Context = Context<Self>;
}

/// Handler for accepted connections.
impl StreamHandler<std::io::Result<UnixStream>> for Listener {
    fn handle(&mut self, item: std::io::Result<UnixStream>, _: &mut Self::Context) {
        let stream = match item {
            Ok(stream) => stream,
            Err(err) => {
                // EMFILE and friends: this connection is lost, the listener goes on.
                error!(cause = %err, "failed to accept a worker connection");
                return;
            }
        };
        match check_peer(&stream, self.uid) {
            Ok(pid) => {
                debug!(?pid, "accepted worker connection");
                WorkerSession::start(stream, self.registry.clone());
            }
            Err(refusal) => warn!(uid = self.uid, "refused connection: {refusal}"),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        error!("listening socket closed; no new workers can connect");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn same_user_is_accepted_other_uid_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(check_peer(&a, me).unwrap(), Some(std::process::id() as i32));
        match check_peer(&a, me + 1) {
            Err(Refusal::OtherUser { peer_uid }) => assert_eq!(peer_uid, me),
            other => panic!("{other:?}"),
        }
    }

    /// A real connection from another uid (needs root to start a process as `nobody`).
    #[tokio::test]
    async fn connection_from_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to connect as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut child = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time; s=socket.socket(socket.AF_UNIX); \
                 s.connect(sys.argv[1]); time.sleep(2)",
            ])
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stream, _) =
            tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
                .await
                .unwrap()
                .unwrap();
        match check_peer(&stream, 0) {
            Err(Refusal::OtherUser { peer_uid: 65534 }) => {}
            other => panic!("{other:?}"),
        }
        let _ = child.kill().await;
    }
}
