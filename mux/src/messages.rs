//! Every message that crosses from one actor to another, in one place, so the actors depend
//! on this module and not on each other:
//!
//! ```text
//! Listener -> WorkerSession -> Registry -> Target        (calls, resets, cancels, status)
//!                   ^   \                    |
//!                   |    Put/Fetch <---------+           (CallEvent: routed, reply, ack, chunk)
//!                   +-------+                            (CallReply, ToWorker)
//! ```
//!
//! A call carries a [`CallSink`]: the Target reports everything about the call there
//! ([`CallEvent`]), whoever is behind it (the WorkerSession for a plain call, a Put or Fetch for a
//! streamed one), so the Target never names either.

use std::{fs::File, sync::Arc, time::Duration};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use worker_ipc::{
    Ack, BecomeSpec, Call, Chunk, ErrorKind, InterpId, Op, PutEnd, Reply, StatusRow, TargetKey,
    TargetSpec, ToAgent,
};

/// A reply for one of a worker's calls, already carrying the worker's call id.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct CallReply {
    /// The reply, with the worker's id.
    pub reply: Reply,
    /// Its body (output, file data); often empty.
    pub body: Bytes,
}

impl CallReply {
    /// A successful reply raised by the mux itself.
    pub fn ok(id: u64, result: Value) -> CallReply {
        CallReply::from_reply(Reply::ok(id, result))
    }

    /// A failed reply raised by the mux itself.
    pub fn error(id: u64, kind: ErrorKind, message: impl Into<String>) -> CallReply {
        CallReply::from_reply(Reply::error(id, kind, message))
    }

    /// A typed reply with no body.
    pub fn from_reply(reply: Reply) -> CallReply {
        CallReply {
            reply,
            body: Bytes::new(),
        }
    }

    /// The worker's call id.
    pub fn id(&self) -> u64 {
        self.reply.id
    }

    /// Whether the op succeeded.
    pub fn is_ok(&self) -> bool {
        self.reply.ok
    }
}

/// What a Target reports about one call to its [`CallSink`].
#[derive(Message)]
#[rtype(result = "()")]
pub enum CallEvent {
    /// The call went to interpreter `interp` as mux id `mux_id` (sent for streamed calls
    /// only): frames of the call's transfer go to `link` from now on, behind the call frame.
    Routed {
        /// The call's id on the agent link.
        mux_id: u64,
        /// Its interpreter.
        interp: InterpId,
        /// The Target's write path for frames of this call.
        link: Recipient<Relay>,
    },
    /// The call's outcome; nothing follows it.
    Reply(CallReply),
    /// The agent wrote `bytes` of a put.
    Ack(Ack),
    /// File data of a fetch, from the agent.
    Chunk(Chunk, Bytes),
}

/// Where a call's [`CallEvent`]s go, and, for a streamed call, who describes its progress in
/// the status table.
#[derive(Clone)]
pub struct CallSink {
    /// Takes every event of the call.
    pub events: Recipient<CallEvent>,
    /// Answers [`DescribeTransfer`] for a streamed call.
    pub status: Option<Recipient<DescribeTransfer>>,
}

impl CallSink {
    /// A sink for a plain call.
    pub fn plain(events: Recipient<CallEvent>) -> CallSink {
        CallSink {
            events,
            status: None,
        }
    }

    /// Reports `event`.
    pub fn do_send(&self, event: CallEvent) {
        self.events.do_send(event);
    }
}

/// Frames of a streamed transfer for call `mux_id`, written behind that call's frame while it
/// is in flight; dropped once it is over (answered or cancelled).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Relay {
    /// The transfer's mux-side call id.
    pub mux_id: u64,
    /// The frames (`chunk`, `put_end`, `ack`, `cancel`) with their bodies, already addressed.
    pub frames: Vec<(ToAgent, RelayBody)>,
}

/// The body of a transfer's frame.
#[derive(Debug)]
pub enum RelayBody {
    /// Bytes in memory (possibly none).
    Bytes(Bytes),
    /// A put's chunk still in its source file, which the probe found not worth compressing:
    /// the agent link's writer moves it there itself (`link_writer`).
    File(FileRegion),
}

impl RelayBody {
    /// The body's length.
    #[allow(clippy::len_without_is_empty)] // only ever summed
    pub fn len(&self) -> usize {
        match self {
            RelayBody::Bytes(bytes) => bytes.len(),
            RelayBody::File(region) => region.len,
        }
    }
}

/// A frame's body still in a file: a put's chunk, sent as it is.
#[derive(Debug, Clone)]
pub struct FileRegion {
    /// The put's source, shared with the Put that probes its next chunks.
    pub file: Arc<File>,
    /// Where the body starts in the file.
    pub offset: u64,
    /// The body's length, as its frame's prefix says.
    pub len: usize,
}

/// A frame for a worker from one of its streamed transfers (`ack` or `chunk`), already
/// carrying the worker's call id; written only while that call is in flight.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ToWorker {
    /// The agent holds `bytes` of a put.
    Ack(Ack),
    /// File data of a fetch.
    Chunk(Chunk, Bytes),
}

impl ToWorker {
    /// The worker's call id of the transfer.
    pub fn id(&self) -> u64 {
        match self {
            ToWorker::Ack(ack) => ack.id,
            ToWorker::Chunk(chunk, _) => chunk.id,
        }
    }
}

/// A worker's frame for one of its streamed transfers.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum FromWorker {
    /// The worker sent every byte of a put (it reports size and digests).
    PutEnd(PutEnd),
    /// The worker holds `bytes` of a fetch.
    Ack(Ack),
    /// File data, which a put does not take from the worker (the mux reads the file), so it
    /// fails the transfer.
    Chunk,
}

/// A worker's call, to be routed to its target.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit {
    /// The call as the worker sent it.
    pub call: Call,
    /// The call frame's body (stdin, file data).
    pub body: Bytes,
    /// The submitting WorkerSession's number, for cancellation.
    pub session: u64,
    /// Where the call's events go.
    pub sink: CallSink,
    /// Whether the call streams a file (`put_begin`/`fetch_begin`).
    pub streams: bool,
}

/// A worker's `reset`: close the target's connection and interpreters, then reply ok.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResetTarget {
    /// The worker's request id, echoed in the reply.
    pub id: u64,
    /// The target to close.
    pub target: TargetSpec,
    /// Where the reply goes.
    pub reply_to: Recipient<CallReply>,
}

/// A worker's `connect`: start the target's connection now, if it has none.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The target to connect to.
    pub target: TargetSpec,
}

/// A worker went away with calls in flight: cancel them on their targets.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelCalls {
    /// The WorkerSession's number.
    pub session: u64,
    /// Per target, the worker's ids of the calls it had there.
    pub calls: Vec<(TargetSpec, Vec<u64>)>,
}

/// Blob content uploaded by a worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StoreBlob {
    /// The SHA-1 the worker names it by.
    pub hash: String,
    /// The content.
    pub body: Bytes,
}

/// Asks for every status row, targets in the order they were created.
#[derive(Message)]
#[rtype(result = "Vec<StatusRow>")]
pub struct Status;

/// Asks for the status rows on behalf of the stack dumper, a plain thread: the answer goes
/// through a std channel it can wait on with a deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DumpStatus {
    /// Where the rows go; the dumper may have stopped waiting, so sending can fail.
    pub respond_to: std::sync::mpsc::Sender<Vec<StatusRow>>,
}

/// Closes every target (sending agents `shutdown`) before the mux exits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownAll;

/// Sent by a Target that is going away, so the next call starts a new one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TargetGone {
    /// The key it was registered under.
    pub key: TargetKey,
    /// Its serial number, so a newer Target under the same key is left alone.
    pub serial: u64,
}

/// A call that reached a Target after it began dying, to be sent to a fresh one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Redispatch {
    /// The dying Target's spec.
    pub spec: TargetSpec,
    /// The call, untouched.
    pub call: Dispatch,
}

/// A call to run on a target, its blobs resolved.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// The worker's call id, restored in the reply.
    pub worker_id: u64,
    /// The agent op.
    pub op: Op,
    /// The op's arguments.
    pub args: Value,
    /// The call's body.
    pub body: Bytes,
    /// Blobs the call needs, by hash.
    pub blobs: Vec<(String, Bytes)>,
    /// The account to run as; `None` = the login interpreter.
    pub become_spec: Option<BecomeSpec>,
    /// The WorkerSession that sent the call, so [`Cancel`] can find its calls.
    pub session: u64,
    /// Where the call's events go.
    pub sink: CallSink,
    /// Whether the call streams a file: its sink is told where it went
    /// ([`CallEvent::Routed`]) and gets the agent's `ack`/`chunk` frames for it.
    pub streams: bool,
    /// The Ansible task the call belongs to, for the actor table.
    pub task: Option<String>,
}

/// A worker went away: its calls on this target are no longer wanted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel {
    /// The WorkerSession's number ([`Dispatch::session`]).
    pub session: u64,
    /// The worker's ids of the calls to cancel.
    pub worker_ids: Vec<u64>,
}

/// Asks a target for its status rows (itself, its interpreters, its transfers).
#[derive(Message)]
#[rtype(result = "Vec<StatusRow>")]
pub struct DescribeTarget;

/// Asks a transfer for its status row.
#[derive(Message)]
#[rtype(result = "StatusRow")]
pub struct DescribeTransfer;

/// Asks a Target to send its agent `shutdown` and stop, answering when the transport is gone
/// (or after `grace`). Used for the mux's exit and for a worker's `reset`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownTarget {
    /// Why, for the messages of calls that were still running.
    pub reason: &'static str,
    /// How long to wait for the transport to be gone before answering anyway.
    pub grace: Duration,
}

/// Asks the Registry, and through it the Target of `via`, to start the next hop's transport
/// on that hop's host and relay its stdio (connection delegation, `mitogen_via`). Answered on
/// `reply` with the routed link, or why the hop could not carry it (naming the hop).
#[derive(Message)]
#[rtype(result = "()")]
pub struct OpenRoute {
    /// The hop the transport runs on.
    pub via: TargetSpec,
    /// The next hop's command line, as the mux would run it itself.
    pub argv: Vec<String>,
    /// What the hop's agent answers at the transport's prompts (ssh with a password).
    pub prompts: Option<worker_ipc::RoutePrompts>,
    /// Written to the route's stdin first: the next hop's bootstrap payload.
    pub payload: Bytes,
    /// Where the route's stderr goes, for the routed Target's messages.
    pub stderr_tail: crate::transport::StderrTail,
    /// The routed target's name, for logs.
    pub name: String,
    /// The account on the hop that starts the transport (`mitogen_via=user@host`).
    pub become_spec: Option<BecomeSpec>,
    /// Gets the routed link.
    pub reply: tokio::sync::oneshot::Sender<Result<crate::transport::Started, String>>,
}

/// Bytes for a route's stdin, or its end (`None`), from the routed Target's writer to the
/// Target that carries the route.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct RouteInput {
    /// The route's number on the carrying connection.
    pub route: u64,
    /// The interpreter that runs it.
    pub interp: InterpId,
    /// The bytes; `None` closes the route.
    pub data: Option<Bytes>,
}
