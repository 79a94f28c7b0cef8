//! The routes a Target's agent carries for targets behind it (connection delegation,
//! `mitogen_via`): the next hop's transport runs on this Target's host, its stdio relayed as
//! route frames. Each open route is the routed Target's link: bytes from the agent go to its
//! [`RouteReader`], its exit to the `exit` it waits on, its stderr to its tail.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use worker_ipc::{InterpId, RouteClosed};

use crate::{
    messages::OpenRoute,
    transport::{RouteReader, Started, StderrTail, TransportExit},
};

/// One open route.
struct Route {
    /// Where the route's output goes: the routed Target's reader.
    output: mpsc::UnboundedSender<Bytes>,
    /// Told how the route's process ended.
    exit: oneshot::Sender<TransportExit>,
    /// The routed Target's stderr tail, for what the process (or this hop) said.
    stderr: StderrTail,
    /// The interpreter that runs it, so a become interpreter that cannot start ends it.
    interp: InterpId,
}

/// The blobs a hop's agent holds because it relayed their content on one of its routes: it
/// keeps every blob it sees go by and serves it to the later targets behind it, so module code
/// crosses the hop once. Each interpreter on the hop keeps its own (a route through a become
/// account runs in that account's interpreter). Shared by the hop's Target and the routed
/// Targets it carries, each of which decides, as it sends a blob, whether the content must
/// still cross.
#[derive(Clone)]
pub struct RelayedBlobs {
    /// Hashes whose content went into one of the hop's routes, by the interpreter that runs it.
    held: Arc<Mutex<HashSet<(InterpId, String)>>>,
    /// The interpreter on the hop that runs this route.
    interp: InterpId,
}

impl RelayedBlobs {
    /// Whether `hash`'s content must be sent (the first time it goes through this hop);
    /// after this call the hop counts as holding it. A target behind it that names it before
    /// the content got there waits on the hop, which has it in flight.
    pub fn must_send(&self, hash: &str) -> bool {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.insert((self.interp, hash.to_owned()))
    }
}

/// A Target's routes.
#[derive(Default)]
pub struct Routes {
    /// Open routes by number.
    open: HashMap<u64, Route>,
    /// Routes asked for before the agent was ready, in order.
    waiting: Vec<OpenRoute>,
    /// The number the next route gets.
    next: u64,
    /// The blobs this Target's interpreters kept while relaying them on its routes.
    relayed: Arc<Mutex<HashSet<(InterpId, String)>>>,
}

impl Routes {
    /// Keeps `request` until the agent is ready.
    pub fn wait(&mut self, request: OpenRoute) {
        self.waiting.push(request);
    }

    /// The routes asked for before the agent was ready.
    pub fn take_waiting(&mut self) -> Vec<OpenRoute> {
        std::mem::take(&mut self.waiting)
    }

    /// Enters a new route for `request`: its number, and the routed link to answer it with
    /// once the writer (which needs the number) is made.
    pub fn open(
        &mut self,
        interp: InterpId,
        stderr: StderrTail,
    ) -> (u64, RouteReader, oneshot::Receiver<TransportExit>) {
        let route = self.next;
        self.next += 1;
        let (output, incoming) = mpsc::unbounded_channel();
        let (exit, exited) = oneshot::channel();
        self.open.insert(
            route,
            Route {
                output,
                exit,
                stderr,
                interp,
            },
        );
        (route, RouteReader::new(incoming), exited)
    }

    /// The blobs interpreter `interp` of this hop holds, for the routed Targets it carries.
    pub fn relayed(&self, interp: InterpId) -> RelayedBlobs {
        RelayedBlobs {
            held: self.relayed.clone(),
            interp,
        }
    }

    /// Whether `route` is open.
    pub fn is_open(&self, route: u64) -> bool {
        self.open.contains_key(&route)
    }

    /// Output of `route`, for its reader.
    pub fn deliver(&self, route: u64, body: Bytes) -> bool {
        self.open
            .get(&route)
            .is_some_and(|open| open.output.send(body).is_ok())
    }

    /// The agent says the route's process ended: its reader reaches the end, its stderr
    /// and status go to the routed Target.
    pub fn closed(&mut self, closed: RouteClosed) -> bool {
        let Some(route) = self.open.remove(&closed.route) else {
            return false;
        };
        route.stderr.push(closed.stderr.as_bytes());
        let exit = match (closed.status, closed.signal, closed.error) {
            (_, _, Some(error)) => {
                route.stderr.push(format!("\n{error}\n").as_bytes());
                TransportExit::NotStarted
            }
            (Some(code), _, None) => TransportExit::Exited(code),
            (None, Some(signal), None) => TransportExit::Signalled(signal),
            (None, None, None) => TransportExit::Unknown("the hop did not say".into()),
        };
        let _ = route.exit.send(exit);
        true
    }

    /// The interpreter `interp` could not be started: the routes it was to run end with `why`.
    pub fn fail_interp(&mut self, interp: InterpId, why: &str) {
        let failed: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, route)| route.interp == interp)
            .map(|(&number, _)| number)
            .collect();
        for number in failed {
            if let Some(route) = self.open.remove(&number) {
                route.stderr.push(format!("\n{why}\n").as_bytes());
                let _ = route.exit.send(TransportExit::NotStarted);
            }
        }
    }

    /// This Target is gone: every route ends with `why` (which names the hop) in its
    /// stderr, and every waiting request is refused with it.
    pub fn fail_all(&mut self, why: &str) {
        for request in self.take_waiting() {
            let _ = request.reply.send(Err(why.to_owned()));
        }
        for (_, route) in self.open.drain() {
            route.stderr.push(format!("\n{why}\n").as_bytes());
            let _ = route
                .exit
                .send(TransportExit::Unknown("its hop went away".into()));
        }
    }
}

/// The routed link to answer an [`OpenRoute`] with.
pub fn started(
    writer: crate::transport::RouteWriter,
    reader: RouteReader,
    exit: oneshot::Receiver<TransportExit>,
    relayed: RelayedBlobs,
) -> Started {
    Started {
        pid: None,
        stdin: Box::new(writer),
        stdin_pipe: None,
        stdout: Box::new(reader),
        exit,
        hop_blobs: Some(relayed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_route_reports_its_status_and_stderr() {
        let mut routes = Routes::default();
        let tail = StderrTail::default();
        let (route, _reader, mut exit) = routes.open(0, tail.clone());
        assert!(routes.deliver(route, Bytes::from_static(b"x")));
        assert!(routes.closed(RouteClosed {
            route,
            status: Some(255),
            signal: None,
            error: None,
            stderr: "ssh: connect to host 10.1.2.3 port 22: No route to host\n".into(),
        }));
        assert_eq!(exit.try_recv().unwrap(), TransportExit::Exited(255));
        assert_eq!(
            tail.lines(),
            vec!["ssh: connect to host 10.1.2.3 port 22: No route to host"]
        );
        assert!(!routes.is_open(route));
    }

    #[test]
    fn a_blob_crosses_a_hop_once_for_every_target_behind_it() {
        let routes = Routes::default();
        let (first, second) = (routes.relayed(0), routes.relayed(0));
        assert!(first.must_send("ab"));
        assert!(!second.must_send("ab"));
        assert!(second.must_send("cd"));
        // A become interpreter on the hop keeps its own; another hop holds nothing yet.
        assert!(routes.relayed(1).must_send("ab"));
        assert!(Routes::default().relayed(0).must_send("ab"));
    }

    #[test]
    fn a_dead_hop_ends_every_route_naming_itself() {
        let mut routes = Routes::default();
        let tail = StderrTail::default();
        let (_, _reader, mut exit) = routes.open(0, tail.clone());
        routes.fail_all("via hop1: connection to hop1 lost");
        assert!(matches!(exit.try_recv(), Ok(TransportExit::Unknown(_))));
        assert_eq!(tail.lines(), vec!["via hop1: connection to hop1 lost"]);
        assert!(routes.open.is_empty());
    }

    #[test]
    fn a_become_interpreter_that_cannot_start_ends_its_routes_only() {
        let mut routes = Routes::default();
        let (as_login, _r1, _e1) = routes.open(0, StderrTail::default());
        let tail = StderrTail::default();
        let (as_root, _r2, mut exit) = routes.open(1, tail.clone());
        routes.fail_interp(
            1,
            "via hop1: become sudo:root on hop1: a password is required",
        );
        assert_eq!(exit.try_recv().unwrap(), TransportExit::NotStarted);
        assert!(routes.is_open(as_login) && !routes.is_open(as_root));
        assert_eq!(tail.lines().len(), 1);
    }
}
