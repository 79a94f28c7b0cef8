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
    ErrorKind, Frame, FrameCodec, FrameError, HelloReply, Op, Request, Response, StatusReport,
    TargetSpec, PROTOCOL_VERSION,
};

use crate::{
    frame_budget::{BudgetedCodec, WORKER_FRAMES},
    messages::{
        CallEvent, CallReply, CallSink, Connect, FromWorker, ResetTarget, Status, StoreBlob,
        Submit, ToWorker,
    },
    registry::Registry,
    transfer::{self, direction_of},
};

/// How long a closing session waits for its last frame to flush before stopping anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Numbers sessions, so a Target can tell whose calls to cancel (worker pids can repeat).
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

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
    transfers: HashMap<u64, Recipient<FromWorker>>,
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
                        self.write_reply(CallReply::error(
                            id,
                            ErrorKind::BadRequest,
                            err.to_string(),
                        ));
                    }
                    ("reset", Some(id), Some(_)) if !self.in_flight.contains_key(&id) => {
                        self.write_reply(CallReply::error(
                            id,
                            ErrorKind::BadRequest,
                            err.to_string(),
                        ));
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
                        ErrorKind::BadRequest,
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
                let (sink, streams) = match direction_of(&Op::from_wire(&call.op)) {
                    Some(direction) => {
                        let name = call
                            .target
                            .name
                            .clone()
                            .unwrap_or_else(|| call.target.key().to_string());
                        let transfer = match transfer::start(
                            call.id,
                            direction,
                            &mut call.args,
                            name,
                            ctx.address().recipient(),
                            ctx.address().recipient(),
                        ) {
                            Ok(transfer) => transfer,
                            Err(err) => {
                                self.in_flight.remove(&call.id);
                                self.write_reply(CallReply::error(call.id, err.kind, err.message));
                                return;
                            }
                        };
                        self.transfers.insert(call.id, transfer.from_worker);
                        let sink = CallSink {
                            events: transfer.events,
                            status: Some(transfer.status),
                        };
                        (sink, true)
                    }
                    None => (CallSink::plain(ctx.address().recipient()), false),
                };
                self.registry.do_send(Submit {
                    call: *call,
                    body: frame.body,
                    session: self.session,
                    sink,
                    streams,
                });
            }
            (Request::Reset(reset), Some(_)) => {
                if self.in_flight.contains_key(&reset.id) {
                    self.write_reply(CallReply::error(
                        reset.id,
                        ErrorKind::BadRequest,
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
                self.registry.do_send(ResetTarget {
                    id: reset.id,
                    target: reset.target,
                    reply_to: ctx.address().recipient(),
                });
            }
            (Request::Connect(connect), Some(_)) => {
                self.registry.do_send(Connect {
                    target: connect.target,
                });
            }
            (Request::Chunk(chunk), Some(_)) => self.to_transfer(chunk.id, FromWorker::Chunk),
            (Request::PutEnd(end), Some(_)) => self.to_transfer(end.id, FromWorker::PutEnd(end)),
            (Request::Ack(ack), Some(_)) => self.to_transfer(ack.id, FromWorker::Ack(ack)),
            (Request::Blob(blob), Some(_)) => {
                self.registry.do_send(StoreBlob {
                    hash: blob.hash,
                    body: frame.body,
                });
            }
            (Request::Status, Some(_)) => {
                self.registry
                    .send(Status)
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

    /// A frame for one of the worker's streamed transfers; one that already ended (failed
    /// early) drops what is still coming.
    fn to_transfer(&self, id: u64, msg: FromWorker) {
        if let Some(transfer) = self.transfers.get(&id) {
            transfer.do_send(msg);
        }
    }

    fn write_reply(&mut self, reply: CallReply) {
        self.write_response(&Response::Reply(reply.reply), reply.body);
    }

    fn write_response(&mut self, msg: &Response, body: Bytes) {
        match Frame::from_message(msg, body) {
            Ok(frame) => self.writer.write(frame),
            Err(err) => error!(worker = ?self.worker_pid, "cannot encode a frame: {err}"),
        }
    }

    /// Acknowledges a detached call at once and sends it on; its reply comes back to
    /// [`WorkerSession::detached_done`].
    fn submit_detached(&mut self, call: worker_ipc::Call, body: Bytes, ctx: &mut Context<Self>) {
        if direction_of(&Op::from_wire(&call.op)).is_some() {
            self.write_reply(CallReply::error(
                call.id,
                ErrorKind::BadRequest,
                format!("{} streams a file and cannot be detached", call.op),
            ));
            return;
        }
        self.detached.insert(call.id, call.op.clone());
        self.write_reply(CallReply::ok(call.id, json!({"detached": true})));
        self.registry.do_send(Submit {
            call,
            body,
            session: self.session,
            sink: CallSink::plain(ctx.address().recipient()),
            streams: false,
        });
    }

    /// The outcome of a detached call: a failure is kept for the next answered call.
    fn detached_done(&mut self, op: String, reply: &CallReply) {
        if reply.is_ok() {
            return;
        }
        let message = reply
            .reply
            .error
            .as_ref()
            .map_or("no message", |error| error.message.as_str());
        warn!(worker = ?self.worker_pid, id = reply.id(), %op, "a detached call failed: {message}");
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
                self.registry.do_send(crate::messages::CancelCalls {
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
        self.on_reply(msg);
    }
}

/// Handler for the events of plain calls: only their replies come here.
impl Handler<CallEvent> for WorkerSession {
    type Result = ();

    fn handle(&mut self, msg: CallEvent, _: &mut Self::Context) {
        if let CallEvent::Reply(reply) = msg {
            self.on_reply(reply);
        }
    }
}

impl WorkerSession {
    /// A call's reply: written, unless it was detached (then kept if it failed).
    fn on_reply(&mut self, msg: CallReply) {
        let id = msg.id();
        if let Some(op) = self.detached.remove(&id) {
            self.detached_done(op, &msg);
            return;
        }
        self.transfers.remove(&id);
        if self.in_flight.remove(&id).is_some() && !self.closing {
            let reply = match self.detached_failure.take() {
                Some(failure) => CallReply::error(id, ErrorKind::DetachedFailed, failure),
                None => msg,
            };
            self.write_reply(reply);
        }
    }
}

/// Handler for the `ack`/`chunk` frames of streamed transfers.
impl Handler<ToWorker> for WorkerSession {
    type Result = ();

    fn handle(&mut self, msg: ToWorker, _: &mut Self::Context) {
        if self.in_flight.contains_key(&msg.id()) && !self.closing {
            let (response, body) = match msg {
                ToWorker::Ack(ack) => (Response::Ack(ack), Bytes::new()),
                ToWorker::Chunk(chunk, body) => (Response::Chunk(chunk), body),
            };
            self.write_response(&response, body);
        }
    }
}

impl actix::io::WriteHandler<FrameError> for WorkerSession {
    fn error(&mut self, err: FrameError, _: &mut Self::Context) -> Running {
        warn!(worker = ?self.worker_pid, "cannot write to worker: {err}");
        Running::Stop
    }
}
