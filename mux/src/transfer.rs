//! `Transfer`: one streamed file transfer (`put_begin` or `fetch_begin`, docs/protocol.md
//! "File transfer") between a worker and one remote interpreter.
//!
//! The WorkerSession starts a Transfer for each `put_begin`/`fetch_begin` call and dispatches
//! the call like any other (same Target, same become interpreter), with the Transfer as the
//! reply's destination. When the Target has handed the call frame to its [`Interpreter`] it
//! says so ([`Attached`]); from then on the Transfer relays the worker's `chunk`, `put_end`
//! and `ack` frames to the interpreter (through the Interpreter actor, so they follow the
//! call frame on the link) and the agent's `ack` and `chunk` frames back to the worker. The
//! call's reply ends it.
//!
//! Flow control is end to end: the sender (the worker for a put, the agent for a fetch)
//! keeps at most [`TRANSFER_WINDOW`] bytes unacknowledged by the receiver, so the mux holds
//! at most one window per transfer. The Transfer checks that bound on what it buffers and
//! fails a transfer that breaks it instead of growing.
//!
//! [`Interpreter`]: crate::interpreter::Interpreter

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};
use tracing::{debug, info, warn};
use worker_ipc::{Frame, CHUNK_MAX, TRANSFER_WINDOW};

use crate::{
    interpreter::Relay,
    worker_session::{CallReply, TransferFrame},
};

/// Transfers at least this large are logged at info level when they end.
const LOG_SIZE: u64 = 16 * 1024 * 1024;

/// How far a sender may run past the window before the Transfer gives up on it: one chunk
/// (a sender checks the window before sending a chunk, not after).
const WINDOW_SLACK: u64 = CHUNK_MAX as u64;

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Controller to target (`put_begin`).
    Put,
    /// Target to controller (`fetch_begin`).
    Fetch,
}

impl Direction {
    /// The direction of a streaming op, or `None` for any other op.
    pub fn of_op(op: &str) -> Option<Direction> {
        match op {
            "put_begin" => Some(Direction::Put),
            "fetch_begin" => Some(Direction::Fetch),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::Put => "put",
            Direction::Fetch => "fetch",
        }
    }
}

/// A `chunk`, `put_end` or `ack` frame from the worker for this transfer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FromWorker {
    /// The frame as the worker sent it (worker-side id).
    pub frame: Frame,
}

/// An `ack` or `chunk` frame from the agent for this transfer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct FromAgent {
    /// The frame as the agent sent it (mux-side id).
    pub frame: Frame,
}

/// Sent by the Target once the transfer's call frame went to its interpreter.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attached {
    /// The mux-side call id: the transfer's id on the agent link.
    pub mux_id: u64,
    /// The interpreter running it.
    pub interp: u32,
    /// That interpreter's actor, which writes frames behind the call frame.
    pub link: Recipient<Relay>,
}

/// Asks for this transfer's status row.
#[derive(Message)]
#[rtype(result = "Value")]
pub struct Describe;

/// Where the transfer's frames go on the agent link.
struct Route {
    /// The mux-side call id.
    mux_id: u64,
    /// The interpreter id.
    interp: u32,
    /// The Interpreter actor.
    link: Recipient<Relay>,
}

/// One streamed file transfer.
pub struct Transfer {
    /// The worker's call id.
    worker_id: u64,
    /// Put or fetch.
    direction: Direction,
    /// The path on the target.
    path: String,
    /// The target's name, for logs and status.
    target_name: String,
    /// The file's size, when known (the put's `size` argument, the fetch's first chunk).
    total: Option<u64>,
    /// Bytes the sender passed through the mux.
    sent: u64,
    /// Bytes the receiver acknowledged.
    acked: u64,
    /// When the call arrived.
    started: Instant,
    /// Set by [`Attached`].
    route: Option<Route>,
    /// Worker frames received before [`Attached`], in order; at most one window of data.
    pending: Vec<Frame>,
    /// The worker's session, for `ack`/`chunk` frames.
    session: Recipient<TransferFrame>,
    /// The worker's session, for the final reply.
    reply_to: Recipient<CallReply>,
    /// Set once the final reply went to the worker.
    done: bool,
}

impl Transfer {
    /// A transfer for the worker's call `worker_id` of `op` with `args`.
    pub fn new(
        worker_id: u64,
        direction: Direction,
        args: &Value,
        target_name: String,
        session: Recipient<TransferFrame>,
        reply_to: Recipient<CallReply>,
    ) -> Transfer {
        Transfer {
            worker_id,
            direction,
            path: args
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            target_name,
            total: args.get("size").and_then(Value::as_u64),
            sent: 0,
            acked: 0,
            started: Instant::now(),
            route: None,
            pending: Vec::new(),
            session,
            reply_to,
            done: false,
        }
    }

    /// Bytes per second so far.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        self.acked as f64 / secs
    }

    /// Ends the transfer with an error of the mux's own: tells the worker, and the agent
    /// (which removes its temp file and answers the call, an answer then dropped).
    fn fail(&mut self, kind: &str, message: String, ctx: &mut Context<Self>) {
        if self.done {
            return;
        }
        warn!(target = %self.target_name, path = %self.path, "{} failed: {message}", self.direction.as_str());
        if let Some(route) = &self.route {
            let cancel = Frame::new("cancel")
                .with("id", route.mux_id)
                .with("interp", route.interp);
            route.link.do_send(Relay {
                mux_id: route.mux_id,
                frames: vec![cancel],
            });
        }
        self.reply_to
            .do_send(CallReply::error(self.worker_id, kind, message));
        self.done = true;
        ctx.stop();
    }

    /// Rewrites a worker frame for the agent link and sends it.
    fn relay(&self, route: &Route, mut frame: Frame) {
        frame.header.insert("id".into(), route.mux_id.into());
        frame.header.insert("interp".into(), route.interp.into());
        route.link.do_send(Relay {
            mux_id: route.mux_id,
            frames: vec![frame],
        });
    }

    /// Books a worker frame's bytes; `Err` if the sender broke the protocol.
    fn account_worker_frame(&mut self, frame: &Frame) -> Result<(), String> {
        match (self.direction, frame.kind()) {
            (Direction::Put, "chunk") => {
                if frame.body.len() > CHUNK_MAX {
                    return Err(format!(
                        "chunk of {} bytes (at most {CHUNK_MAX})",
                        frame.body.len()
                    ));
                }
                self.sent += frame.body.len() as u64;
                if self.sent.saturating_sub(self.acked) > TRANSFER_WINDOW + WINDOW_SLACK {
                    return Err(format!(
                        "{} bytes unacknowledged (window {TRANSFER_WINDOW})",
                        self.sent - self.acked
                    ));
                }
                Ok(())
            }
            (Direction::Put, "put_end") => Ok(()),
            (Direction::Fetch, "ack") => {
                let bytes = frame.header.get("bytes").and_then(Value::as_u64);
                self.acked = self.acked.max(bytes.unwrap_or(0));
                Ok(())
            }
            (direction, kind) => Err(format!(
                "{kind:?} frame in a {} transfer",
                direction.as_str()
            )),
        }
    }
}

impl Actor for Transfer {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        debug!(target = %self.target_name, id = self.worker_id, path = %self.path,
               total = ?self.total, "{} starting", self.direction.as_str());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if !self.done {
            debug!(target = %self.target_name, path = %self.path, acked = self.acked,
                   "{} abandoned", self.direction.as_str());
        }
    }
}

/// Handler for FromWorker: relay now, or keep until attached.
impl Handler<FromWorker> for Transfer {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, ctx: &mut Self::Context) {
        if self.done {
            return;
        }
        if let Err(err) = self.account_worker_frame(&msg.frame) {
            self.fail(
                "bad_request",
                format!("transfer of {}: {err}", self.path),
                ctx,
            );
            return;
        }
        match &self.route {
            Some(route) => self.relay(route, msg.frame),
            None => self.pending.push(msg.frame),
        }
    }
}

/// Handler for Attached: flush what the worker sent meanwhile.
impl Handler<Attached> for Transfer {
    type Result = ();

    fn handle(&mut self, msg: Attached, _: &mut Self::Context) {
        let route = Route {
            mux_id: msg.mux_id,
            interp: msg.interp,
            link: msg.link,
        };
        for frame in std::mem::take(&mut self.pending) {
            self.relay(&route, frame);
        }
        self.route = Some(route);
    }
}

/// Handler for FromAgent: book progress, pass on to the worker with its id.
impl Handler<FromAgent> for Transfer {
    type Result = ();

    fn handle(&mut self, msg: FromAgent, ctx: &mut Self::Context) {
        if self.done {
            return;
        }
        let mut frame = msg.frame;
        match (self.direction, frame.kind()) {
            (Direction::Put, "ack") => {
                let bytes = frame.header.get("bytes").and_then(Value::as_u64);
                self.acked = self.acked.max(bytes.unwrap_or(0));
            }
            (Direction::Fetch, "chunk") => {
                if let Some(size) = frame.header.get("size").and_then(Value::as_u64) {
                    self.total = Some(size);
                }
                self.sent += frame.body.len() as u64;
                if self.sent.saturating_sub(self.acked) > TRANSFER_WINDOW + WINDOW_SLACK {
                    let unacked = self.sent - self.acked;
                    self.fail(
                        "agent_error",
                        format!("the agent sent {unacked} bytes unacknowledged"),
                        ctx,
                    );
                    return;
                }
            }
            (_, kind) => {
                debug!(target = %self.target_name, "ignoring agent {kind:?} frame for a transfer");
                return;
            }
        }
        frame.header.insert("id".into(), self.worker_id.into());
        frame.header.remove("interp");
        self.session.do_send(TransferFrame {
            id: self.worker_id,
            frame,
        });
    }
}

/// Handler for the call's reply: pass it on; the transfer is over.
impl Handler<CallReply> for Transfer {
    type Result = ();

    fn handle(&mut self, msg: CallReply, ctx: &mut Self::Context) {
        if self.done {
            return;
        }
        self.done = true;
        let ok = msg.frame.header.get("ok") == Some(&Value::Bool(true));
        let bytes = self.acked.max(self.sent);
        let secs = self.started.elapsed().as_secs_f64();
        let mb_s = bytes as f64 / secs.max(1e-6) / 1e6;
        if ok && bytes >= LOG_SIZE {
            info!(target = %self.target_name, path = %self.path, bytes, secs, mb_s,
                  "{} done", self.direction.as_str());
        } else {
            debug!(target = %self.target_name, path = %self.path, bytes, secs, mb_s, ok,
                   "{} finished", self.direction.as_str());
        }
        self.reply_to.do_send(msg);
        // Let frames already queued for the worker go out first (same mailbox, in order).
        ctx.run_later(Duration::ZERO, |_, ctx| ctx.stop());
    }
}

/// Handler for Describe.
impl Handler<Describe> for Transfer {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _: Describe, _: &mut Self::Context) -> Self::Result {
        let name = match &self.route {
            Some(route) => format!("{}/{}#{}", self.target_name, route.interp, route.mux_id),
            None => format!("{}#worker-{}", self.target_name, self.worker_id),
        };
        let rate = self.rate();
        let doing = match self.total {
            Some(total) => format!(
                "{} {}: {} of {} bytes at {:.1} MB/s",
                self.direction.as_str(),
                self.path,
                self.acked,
                total,
                rate / 1e6
            ),
            None => format!(
                "{} {}: {} bytes at {:.1} MB/s",
                self.direction.as_str(),
                self.path,
                self.acked,
                rate / 1e6
            ),
        };
        MessageResult(json!({
            "kind": "transfer",
            "name": name,
            "state": if self.route.is_some() { "streaming" } else { "queued" },
            "direction": self.direction.as_str(),
            "path": self.path,
            "bytes": self.acked,
            "sent": self.sent,
            "total": self.total,
            "rate": rate,
            "elapsed": self.started.elapsed().as_secs_f64(),
            "doing": doing,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;

    /// Stands in for the WorkerSession and the Interpreter: records what reaches them.
    #[derive(Default, Clone)]
    struct Sink {
        /// Frames written to the worker (`ack`/`chunk`, then the reply).
        worker: Arc<Mutex<Vec<Frame>>>,
        /// Frames relayed towards the agent.
        agent: Arc<Mutex<Vec<Frame>>>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<TransferFrame> for Sink {
        type Result = ();
        fn handle(&mut self, msg: TransferFrame, _: &mut Self::Context) {
            self.worker.lock().unwrap().push(msg.frame);
        }
    }

    impl Handler<CallReply> for Sink {
        type Result = ();
        fn handle(&mut self, msg: CallReply, _: &mut Self::Context) {
            self.worker.lock().unwrap().push(msg.frame);
        }
    }

    impl Handler<Relay> for Sink {
        type Result = ();
        fn handle(&mut self, msg: Relay, _: &mut Self::Context) {
            self.agent.lock().unwrap().extend(msg.frames);
        }
    }

    fn start(direction: Direction, sink: &Sink) -> Addr<Transfer> {
        let addr = sink.clone().start();
        Transfer::new(
            7,
            direction,
            &json!({"path": "/dest", "size": 3}),
            "web1".into(),
            addr.clone().recipient(),
            addr.recipient(),
        )
        .start()
    }

    fn chunk(id: u64, offset: u64, body: &'static [u8]) -> Frame {
        Frame::new("chunk")
            .with("id", id)
            .with("offset", offset)
            .with_body(Bytes::from_static(body))
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[test]
    fn streaming_ops_have_a_direction() {
        assert_eq!(Direction::of_op("put_begin"), Some(Direction::Put));
        assert_eq!(Direction::of_op("fetch_begin"), Some(Direction::Fetch));
        assert_eq!(Direction::of_op("put_file"), None);
    }

    #[actix::test]
    async fn put_frames_wait_for_the_route_and_acks_reach_the_worker() {
        let sink = Sink::default();
        let transfer = start(Direction::Put, &sink);
        transfer.do_send(FromWorker {
            frame: chunk(7, 0, b"abc"),
        });
        settle().await;
        assert!(
            sink.agent.lock().unwrap().is_empty(),
            "relayed before Attached"
        );
        let link = sink.clone().start().recipient();
        transfer.do_send(Attached {
            mux_id: 41,
            interp: 2,
            link,
        });
        transfer.do_send(FromWorker {
            frame: Frame::new("put_end")
                .with("id", 7)
                .with("size", 3)
                .with("sha1", "x"),
        });
        transfer.do_send(FromAgent {
            frame: Frame::new("ack").with("id", 41).with("bytes", 3),
        });
        settle().await;
        let agent = sink.agent.lock().unwrap().clone();
        assert_eq!(agent.len(), 2);
        assert_eq!(agent[0].kind(), "chunk");
        assert_eq!(agent[0].header["id"], 41);
        assert_eq!(agent[0].header["interp"], 2);
        assert_eq!(&agent[0].body[..], b"abc");
        assert_eq!(agent[1].kind(), "put_end");
        let worker = sink.worker.lock().unwrap().clone();
        assert_eq!(worker.len(), 1);
        assert_eq!(worker[0].kind(), "ack");
        assert_eq!(worker[0].header["id"], 7);
        assert_eq!(worker[0].header["bytes"], 3);
        let described = transfer.send(Describe).await.unwrap();
        assert_eq!(described["bytes"], 3);
        assert_eq!(described["total"], 3);
        assert_eq!(described["state"], "streaming");
        transfer.do_send(CallReply::ok(7, json!({"size": 3})));
        settle().await;
        assert_eq!(sink.worker.lock().unwrap().last().unwrap().kind(), "reply");
        assert!(!transfer.connected(), "a finished transfer stops");
    }

    #[actix::test]
    async fn a_worker_past_the_window_is_stopped_and_the_agent_told() {
        let sink = Sink::default();
        let transfer = start(Direction::Put, &sink);
        let link = sink.clone().start().recipient();
        transfer.do_send(Attached {
            mux_id: 41,
            interp: 0,
            link,
        });
        static MIB: [u8; CHUNK_MAX] = [0; CHUNK_MAX];
        for i in 0..6u64 {
            transfer.do_send(FromWorker {
                frame: chunk(7, i * CHUNK_MAX as u64, &MIB),
            });
        }
        settle().await;
        let worker = sink.worker.lock().unwrap().clone();
        let reply = worker.last().unwrap();
        assert_eq!(reply.kind(), "reply");
        assert_eq!(reply.header["error"]["kind"], "bad_request");
        let agent = sink.agent.lock().unwrap().clone();
        assert_eq!(agent.last().unwrap().kind(), "cancel");
        assert_eq!(agent.last().unwrap().header["id"], 41);
        assert!(!transfer.connected());
    }

    #[actix::test]
    async fn fetch_chunks_reach_the_worker_and_its_acks_the_agent() {
        let sink = Sink::default();
        let transfer = start(Direction::Fetch, &sink);
        let link = sink.clone().start().recipient();
        transfer.do_send(Attached {
            mux_id: 9,
            interp: 0,
            link,
        });
        transfer.do_send(FromAgent {
            frame: chunk(9, 0, b"data").with("size", 4),
        });
        transfer.do_send(FromWorker {
            frame: Frame::new("ack").with("id", 7).with("bytes", 4),
        });
        settle().await;
        let worker = sink.worker.lock().unwrap().clone();
        assert_eq!(worker[0].kind(), "chunk");
        assert_eq!(worker[0].header["id"], 7);
        assert_eq!(worker[0].header["size"], 4);
        assert!(worker[0].header.get("interp").is_none());
        let agent = sink.agent.lock().unwrap().clone();
        assert_eq!(agent[0].kind(), "ack");
        assert_eq!(agent[0].header["id"], 9);
        assert_eq!(transfer.send(Describe).await.unwrap()["bytes"], 4);
    }
}
