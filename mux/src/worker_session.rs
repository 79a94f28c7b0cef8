//! `WorkerSession`: one connected Ansible worker.
//!
//! Decodes the worker's frames, checks the handshake, forwards calls, blobs and status
//! requests to the [`Registry`], and writes replies back. A malformed frame closes this
//! session only (after an `error` frame), never the mux. When the worker goes away with
//! calls in flight, their targets are told to cancel them.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use actix::{io::FramedWrite, prelude::*};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::FramedRead;
use tracing::{debug, error, warn};
use worker_ipc::{
    Frame, FrameCodec, FrameError, HelloReply, Reply, Request, Response, StatusReport, TargetSpec,
    PROTOCOL_VERSION,
};

use crate::{
    frame_budget::{BudgetedCodec, WORKER_FRAMES},
    registry::{self, Registry},
    transfer::{self, Direction, Transfer},
};

/// How long a closing session waits for its last frame to flush before stopping anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Numbers sessions, so a Target can tell whose calls to cancel (worker pids can repeat).
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A reply for one of this worker's calls, already carrying the worker's call id.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CallReply {
    /// The worker's call id.
    pub id: u64,
    /// The complete `reply` frame to write.
    pub frame: Frame,
}

impl CallReply {
    /// A successful reply raised by the mux itself.
    pub fn ok(id: u64, result: Value) -> CallReply {
        CallReply::from_reply(Reply::ok(id, result))
    }

    /// A failed reply raised by the mux itself.
    pub fn error(id: u64, kind: &str, message: impl Into<String>) -> CallReply {
        CallReply::from_reply(Reply::error(id, kind, message))
    }

    /// Wraps a typed reply.
    pub fn from_reply(reply: Reply) -> CallReply {
        let id = reply.id;
        let frame = Frame::from_message(&Response::Reply(reply), Bytes::new())
            .unwrap_or_else(|_| Frame::new("reply").with("id", id).with("ok", false));
        CallReply { id, frame }
    }
}

/// A frame of one of this worker's streamed transfers (`ack` or `chunk`), already carrying
/// the worker's call id; written only while that call is in flight.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TransferFrame {
    /// The worker's call id of the transfer.
    pub id: u64,
    /// The frame to write.
    pub frame: Frame,
}

/// A call of this worker that has not been answered yet.
#[derive(Debug)]
struct Pending {
    /// The op, for logs.
    op: String,
    /// When the call arrived, for logs.
    since: Instant,
    /// Where it runs, so it can be cancelled there; `None` for a `reset`.
    target: Option<TargetSpec>,
}

/// One worker connection.
pub struct WorkerSession {
    /// This session's number, unique in the mux, sent with each call.
    session: u64,
    /// Where calls, blobs and status requests go.
    registry: Addr<Registry>,
    /// The socket's write half; frames are queued here and flushed by actix.
    writer: FramedWrite<Frame, OwnedWriteHalf, FrameCodec>,
    /// The worker's pid once the handshake is done; `None` before it.
    worker_pid: Option<u32>,
    /// Calls sent on and not yet answered, by the worker's id, so duplicate ids are
    /// refused and the session can say what was lost when the worker goes away.
    in_flight: HashMap<u64, Pending>,
    /// Set once a protocol error was answered: further input is ignored while the
    /// `error` frame flushes.
    closing: bool,
    /// Streamed transfers in flight, by the worker's call id: where its `chunk`, `put_end`
    /// and `ack` frames go. Dropped with the session.
    transfers: HashMap<u64, Addr<Transfer>>,
    /// Detached calls already acknowledged whose outcome is still to come, with their op:
    /// never cancelled when the worker goes, and their replies are not written.
    detached: HashMap<u64, String>,
    /// The first failure of a detached call, given to the worker as the error of its next
    /// answered call (the worker went on as though the step had worked).
    detached_failure: Option<String>,
}

impl WorkerSession {
    /// Starts a session on an accepted (and uid-checked) connection.
    pub fn start(stream: tokio::net::UnixStream, registry: Addr<Registry>) -> Addr<WorkerSession> {
        WorkerSession::create(|ctx| {
            let (read, write) = stream.into_split();
            WorkerSession::add_stream(
                FramedRead::new(read, BudgetedCodec::new(&WORKER_FRAMES)),
                ctx,
            );
            WorkerSession {
                session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
                registry,
                writer: FramedWrite::new(write, FrameCodec::new(), ctx),
                worker_pid: None,
                in_flight: HashMap::new(),
                closing: false,
                transfers: HashMap::new(),
                detached: HashMap::new(),
                detached_failure: None,
            }
        })
    }

    /// Answers a protocol error with an `error` frame and closes the connection.
    fn protocol_error(&mut self, message: String, ctx: &mut Context<Self>) {
        error!(worker = ?self.worker_pid, "closing worker connection: {message}");
        self.send_error(message);
        self.writer.close();
        self.closing = true;
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    fn send_error(&mut self, message: String) {
        let msg = Response::Error(worker_ipc::ErrorMessage { message });
        if let Ok(frame) = Frame::from_message(&msg, Bytes::new()) {
            self.writer.write(frame);
        }
    }

    fn handle_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let kind = frame.kind().to_owned();
        let request = match frame.parse::<Request>() {
            Ok(request) => request,
            Err(err) => {
                // A call we can name gets a bad_request reply; anything else is a
                // protocol error.
                let id = frame.header.get("id").and_then(Value::as_u64);
                match (kind.as_str(), id, self.worker_pid) {
                    ("call", Some(id), Some(_)) if !self.in_flight.contains_key(&id) => {
                        self.write_reply(CallReply::error(id, "bad_request", err.to_string()));
                    }
                    ("reset", Some(id), Some(_)) if !self.in_flight.contains_key(&id) => {
                        self.write_reply(CallReply::error(id, "bad_request", err.to_string()));
                    }
                    _ if !matches!(
                        kind.as_str(),
                        "hello"
                            | "call"
                            | "blob"
                            | "status"
                            | "reset"
                            | "connect"
                            | "chunk"
                            | "put_end"
                            | "ack"
                    ) =>
                    {
                        self.protocol_error(format!("unknown frame type {kind:?}"), ctx)
                    }
                    _ => self.protocol_error(err.to_string(), ctx),
                }
                return;
            }
        };
        match (request, self.worker_pid) {
            (Request::Hello(hello), _) => {
                if hello.version != PROTOCOL_VERSION {
                    self.protocol_error(
                        format!(
                            "protocol version {} is not supported (mux speaks {PROTOCOL_VERSION})",
                            hello.version
                        ),
                        ctx,
                    );
                    return;
                }
                debug!(worker = hello.pid, "worker connected");
                self.worker_pid = Some(hello.pid);
                let reply = Response::Hello(HelloReply {
                    version: PROTOCOL_VERSION,
                    mux_pid: std::process::id(),
                });
                if let Ok(frame) = Frame::from_message(&reply, Bytes::new()) {
                    self.writer.write(frame);
                }
            }
            (_, None) => self.protocol_error(format!("expected hello, got {kind:?}"), ctx),
            (Request::Call(mut call), Some(_)) => {
                if self.in_flight.contains_key(&call.id) || self.detached.contains_key(&call.id) {
                    self.write_reply(CallReply::error(
                        call.id,
                        "bad_request",
                        format!("call id {} is already in flight", call.id),
                    ));
                    return;
                }
                if call.detached {
                    self.submit_detached(*call, frame.body, ctx);
                    return;
                }
                self.in_flight.insert(
                    call.id,
                    Pending {
                        op: call.op.clone(),
                        since: Instant::now(),
                        target: Some(call.target.clone()),
                    },
                );
                let (transfer, reply_to) = match Direction::of_op(&call.op) {
                    Some(direction) => {
                        let name = call
                            .target
                            .name
                            .clone()
                            .unwrap_or_else(|| call.target.key().to_string());
                        let transfer = match Transfer::new(
                            call.id,
                            direction,
                            &mut call.args,
                            name,
                            ctx.address().recipient(),
                            ctx.address().recipient(),
                        ) {
                            Ok(transfer) => transfer.start(),
                            Err(err) => {
                                self.in_flight.remove(&call.id);
                                self.write_reply(CallReply::error(call.id, err.kind, err.message));
                                return;
                            }
                        };
                        self.transfers.insert(call.id, transfer.clone());
                        let reply_to = transfer.clone().recipient();
                        (Some(transfer), reply_to)
                    }
                    None => (None, ctx.address().recipient()),
                };
                self.registry.do_send(registry::Submit {
                    call: *call,
                    body: frame.body,
                    session: self.session,
                    reply_to,
                    transfer,
                });
            }
            (Request::Reset(reset), Some(_)) => {
                if self.in_flight.contains_key(&reset.id) {
                    self.write_reply(CallReply::error(
                        reset.id,
                        "bad_request",
                        format!("call id {} is already in flight", reset.id),
                    ));
                    return;
                }
                self.in_flight.insert(
                    reset.id,
                    Pending {
                        op: "reset".into(),
                        since: Instant::now(),
                        target: None,
                    },
                );
                self.registry.do_send(registry::ResetTarget {
                    id: reset.id,
                    target: reset.target,
                    reply_to: ctx.address().recipient(),
                });
            }
            (Request::Connect(connect), Some(_)) => {
                self.registry.do_send(registry::Connect {
                    target: connect.target,
                });
            }
            (Request::Chunk(worker_ipc::Chunk { id, .. }), Some(_))
            | (Request::PutEnd(worker_ipc::PutEnd { id, .. }), Some(_))
            | (Request::Ack(worker_ipc::Ack { id, .. }), Some(_)) => {
                // A transfer that already ended (failed early) drops what is still coming.
                if let Some(transfer) = self.transfers.get(&id) {
                    transfer.do_send(transfer::FromWorker { frame });
                }
            }
            (Request::Blob(blob), Some(_)) => {
                self.registry.do_send(registry::StoreBlob {
                    hash: blob.hash,
                    body: frame.body,
                });
            }
            (Request::Status, Some(_)) => {
                self.registry
                    .send(registry::Status)
                    .into_actor(self)
                    .then(|res, act, _| {
                        let actors = res.unwrap_or_default();
                        let report = Response::Status(StatusReport { actors });
                        if let Ok(frame) = Frame::from_message(&report, Bytes::new()) {
                            act.writer.write(frame);
                        }
                        fut::ready(())
                    })
                    .spawn(ctx);
            }
        }
    }

    fn write_reply(&mut self, reply: CallReply) {
        self.writer.write(reply.frame);
    }

    /// Acknowledges a detached call at once and sends it on; its reply comes back to
    /// [`WorkerSession::detached_done`].
    fn submit_detached(&mut self, call: worker_ipc::Call, body: Bytes, ctx: &mut Context<Self>) {
        if Direction::of_op(&call.op).is_some() {
            self.write_reply(CallReply::error(
                call.id,
                "bad_request",
                format!("{} streams a file and cannot be detached", call.op),
            ));
            return;
        }
        self.detached.insert(call.id, call.op.clone());
        self.write_reply(CallReply::ok(call.id, json!({"detached": true})));
        self.registry.do_send(registry::Submit {
            call,
            body,
            session: self.session,
            reply_to: ctx.address().recipient(),
            transfer: None,
        });
    }

    /// The outcome of a detached call: a failure is kept for the next answered call.
    fn detached_done(&mut self, op: String, reply: &CallReply) {
        if reply.frame.header.get("ok") == Some(&Value::Bool(true)) {
            return;
        }
        let message = reply
            .frame
            .header
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("no message");
        warn!(worker = ?self.worker_pid, id = reply.id, %op, "a detached call failed: {message}");
        self.detached_failure
            .get_or_insert_with(|| format!("an earlier {op} of this task failed: {message}"));
    }
}

impl Actor for WorkerSession {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if !self.in_flight.is_empty() {
            let calls: Vec<Value> = self
                .in_flight
                .iter()
                .map(|(id, p)| json!({"id": id, "op": p.op, "secs": p.since.elapsed().as_secs_f64()}))
                .collect();
            warn!(worker = ?self.worker_pid, ?calls, "worker went away with calls in flight; cancelling them");
            let mut by_target: Vec<(TargetSpec, Vec<u64>)> = Vec::new();
            for (id, pending) in self.in_flight.drain() {
                let Some(target) = pending.target else {
                    continue;
                };
                match by_target.iter_mut().find(|(t, _)| t.key() == target.key()) {
                    Some((_, ids)) => ids.push(id),
                    None => by_target.push((target, vec![id])),
                }
            }
            if !by_target.is_empty() {
                self.registry.do_send(registry::CancelCalls {
                    session: self.session,
                    calls: by_target,
                });
            }
        } else {
            debug!(worker = ?self.worker_pid, "worker disconnected");
        }
    }
}

/// Handler for frames from the worker.
impl StreamHandler<Result<Frame, FrameError>> for WorkerSession {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        match item {
            Ok(frame) => self.handle_frame(frame, ctx),
            Err(FrameError::Io(err)) => {
                debug!(worker = ?self.worker_pid, "worker connection failed: {err}");
                ctx.stop();
            }
            Err(err) => self.protocol_error(err.to_string(), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.closing {
            ctx.stop();
        }
    }
}

/// Handler for replies routed back from targets (or raised by the registry).
impl Handler<CallReply> for WorkerSession {
    type Result = ();

    fn handle(&mut self, msg: CallReply, _: &mut Self::Context) {
        if let Some(op) = self.detached.remove(&msg.id) {
            self.detached_done(op, &msg);
            return;
        }
        self.transfers.remove(&msg.id);
        if self.in_flight.remove(&msg.id).is_some() && !self.closing {
            let reply = match self.detached_failure.take() {
                Some(failure) => CallReply::error(msg.id, "detached_failed", failure),
                None => msg,
            };
            self.write_reply(reply);
        }
    }
}

/// Handler for the `ack`/`chunk` frames of streamed transfers.
impl Handler<TransferFrame> for WorkerSession {
    type Result = ();

    fn handle(&mut self, msg: TransferFrame, _: &mut Self::Context) {
        if self.in_flight.contains_key(&msg.id) && !self.closing {
            self.writer.write(msg.frame);
        }
    }
}

impl actix::io::WriteHandler<FrameError> for WorkerSession {
    fn error(&mut self, err: FrameError, _: &mut Self::Context) -> Running {
        warn!(worker = ?self.worker_pid, "cannot write to worker: {err}");
        Running::Stop
    }
}
