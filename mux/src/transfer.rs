//! Streamed file transfers (`put_begin` or `fetch_begin`, docs/protocol.md "File transfer")
//! between a worker and one remote interpreter: two actors, [`Put`] and [`Fetch`], over one
//! [`Stream`] (what both track: the route, the window, the reply, the status row).
//!
//! The WorkerSession starts one ([`start`]) for each `put_begin`/`fetch_begin` call and
//! dispatches the call like any other (same Target, same become interpreter), with the actor
//! as the call's sink. When the Target has written the call frame it says so
//! ([`CallEvent::Routed`]); from then on the transfer's frames go to the Target behind it
//! ([`Relay`]), and the agent's `ack`/`chunk` frames come back as events. The call's reply
//! ends the transfer.
//!
//! A [`Put`] names its controller-side file (`source`): it reads the file itself, a chunk at a
//! time on tokio's blocking pool, and sends the chunks, so the file's bytes never pass through
//! the worker. A chunk the compression probe finds not worth compressing is not even read:
//! only its samples are, and the agent link's writer moves it from the file (`link_writer`).
//! The worker sends only `put_end` (size and digests), which the Put holds until its last
//! chunk has gone. A [`Fetch`] relays the agent's `chunk` frames to the worker and
//! the worker's `ack` frames back.
//!
//! Flow control is end to end: the sender (the Put, or the agent for a fetch) keeps at most
//! [`TRANSFER_WINDOW`] bytes unacknowledged by the receiver, so the mux holds at most one
//! window per transfer. The Fetch checks that bound on what the agent sends and fails a
//! transfer that breaks it instead of growing.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::{FileExt, MetadataExt},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info, warn};
use worker_ipc::{
    compression::{probe_samples, samples_worth_compressing, PROBE_MIN_BODY, PROBE_SAMPLE},
    Ack, AgentAck, AgentChunk, AgentPutEnd, CallRef, Chunk, Direction, ErrorKind, InterpId, Op,
    PutEnd, StatusRow, ToAgent, TransferRow, TransferState, CHUNK_MAX, TRANSFER_WINDOW,
};

use crate::messages::{
    CallEvent, CallReply, DescribeTransfer, FileRegion, FromWorker, Relay, RelayBody, ToWorker,
};

/// Transfers at least this large are logged at info level when they end.
const LOG_SIZE: u64 = 16 * 1024 * 1024;

/// How far the agent may run past the window before the Fetch gives up on it: one chunk
/// (a sender checks the window before sending a chunk, not after).
const WINDOW_SLACK: u64 = CHUNK_MAX as u64;

/// Why a put's local source file cannot be streamed; the worker gets `kind` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// `not_found` when the file is missing, `source_error` otherwise.
    pub kind: ErrorKind,
    /// What was wrong, naming the file.
    pub message: String,
}

/// A put's controller-side file, which the Put reads itself.
struct Source {
    /// The file, shared with the agent link's writer, which moves the chunks left in it.
    file: Arc<File>,
    /// Set while a read is in flight on the blocking pool.
    reading: bool,
    /// The path, for errors.
    path: String,
    /// Set once a read returned nothing: every chunk has gone.
    at_end: bool,
    /// The worker's `put_end`, held until every chunk has gone.
    put_end: Option<PutEnd>,
}

/// A put's `source` argument: the file the worker opened, by path, device and inode.
#[derive(Debug, Deserialize)]
struct PutSource {
    /// Absolute path on the controller.
    path: String,
    /// Its device number, as the worker saw it.
    #[serde(default)]
    dev: Option<u64>,
    /// Its inode number, as the worker saw it.
    #[serde(default)]
    ino: Option<u64>,
}

/// The fields of a streamed call's arguments a transfer reads (for logs and status).
#[derive(Debug, Default, Deserialize)]
struct StreamArgs {
    /// The path on the target.
    #[serde(default)]
    path: Option<Value>,
    /// A put's size.
    #[serde(default)]
    size: Option<Value>,
}

impl Source {
    /// Opens the file a `put_begin` names in `source`, checking it is the regular file the
    /// worker opened.
    fn open(source: Option<Value>) -> Result<Source, SourceError> {
        let bad = |message: String| SourceError {
            kind: ErrorKind::SourceError,
            message,
        };
        let source = source
            .and_then(|source| PutSource::deserialize(source).ok())
            .ok_or_else(|| bad("put_begin without a source path".into()))?;
        let path = source.path.as_str();
        let file = File::open(path).map_err(|err| SourceError {
            kind: if err.kind() == io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::SourceError
            },
            message: format!("cannot read {path}: {err}"),
        })?;
        let meta = file
            .metadata()
            .map_err(|err| bad(format!("cannot read {path}: {err}")))?;
        if !meta.is_file() {
            return Err(bad(format!("cannot stream {path}: not a regular file")));
        }
        let same = source.dev == Some(meta.dev()) && source.ino == Some(meta.ino());
        if !same {
            return Err(bad(format!(
                "{path} was replaced after the worker opened it"
            )));
        }
        Ok(Source {
            file: Arc::new(file),
            reading: false,
            path: path.to_owned(),
            at_end: false,
            put_end: None,
        })
    }
}

/// The next chunk of a put's source.
enum NextChunk {
    /// Read into memory: a chunk worth compressing (or too small to probe), or none at the end.
    Read(Vec<u8>),
    /// This many bytes left in the file, which the probe found not worth compressing: the agent
    /// link's writer moves them from the file itself.
    InFile(usize),
}

/// The chunk of the file at `offset`: the next `CHUNK_MAX` bytes or what is left of them, so
/// chunks are whole but the last. When the probe finds those bytes not worth compressing
/// (from its samples, read here) they stay in the file; otherwise they are read into `chunk`
/// (empty, with room for them: read into as it is, not zeroed first).
fn read_chunk(file: &File, offset: u64, mut chunk: Vec<u8>) -> io::Result<NextChunk> {
    let left = file.metadata()?.len().saturating_sub(offset);
    let len = left.min(CHUNK_MAX as u64) as usize;
    if len >= PROBE_MIN_BODY {
        let spots = probe_samples(len);
        let mut samples = [[0u8; PROBE_SAMPLE]; 3];
        let whole = samples
            .iter_mut()
            .zip(spots)
            .all(|(sample, (start, size))| {
                file.read_exact_at(&mut sample[..size], offset + start as u64)
                    .is_ok()
            });
        let samples = [0, 1, 2].map(|i| &samples[i][..spots[i].1]);
        // A file that shrank meanwhile is read as it is now.
        if whole && !samples_worth_compressing(&samples) {
            return Ok(NextChunk::InFile(len));
        }
    }
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    reader.take(CHUNK_MAX as u64).read_to_end(&mut chunk)?;
    Ok(NextChunk::Read(chunk))
}

/// The direction of a streaming op, or `None` for any other op.
pub fn direction_of(op: &Op) -> Option<Direction> {
    match op {
        Op::PutBegin => Some(Direction::Put),
        Op::FetchBegin => Some(Direction::Fetch),
        _ => None,
    }
}

/// Where the transfer's frames go on the agent link.
struct Route {
    /// The mux-side call id.
    mux_id: u64,
    /// The interpreter id.
    interp: InterpId,
    /// The Target, which writes them behind the call frame.
    link: Recipient<Relay>,
}

/// A frame of this transfer for the agent, before it is addressed.
enum Outgoing {
    Chunk { offset: u64, data: RelayBody },
    PutEnd(PutEnd),
    Ack(Ack),
    Cancel,
}

impl Route {
    /// Addresses a frame for the agent link and sends it behind the call frame.
    fn send(&self, frame: Outgoing) {
        let (id, interp) = (self.mux_id, self.interp);
        let (msg, body) = match frame {
            Outgoing::Chunk { offset, data } => {
                (ToAgent::Chunk(AgentChunk { id, interp, offset }), data)
            }
            Outgoing::PutEnd(end) => (
                ToAgent::PutEnd(AgentPutEnd {
                    id,
                    interp,
                    size: end.size,
                    sha1: end.sha1,
                    digests: end.digests,
                }),
                RelayBody::Bytes(Bytes::new()),
            ),
            Outgoing::Ack(ack) => (
                ToAgent::Ack(AgentAck {
                    id,
                    interp,
                    bytes: ack.bytes,
                }),
                RelayBody::Bytes(Bytes::new()),
            ),
            Outgoing::Cancel => (
                ToAgent::Cancel(CallRef { id, interp }),
                RelayBody::Bytes(Bytes::new()),
            ),
        };
        self.link.do_send(Relay {
            mux_id: id,
            frames: vec![(msg, body)],
        });
    }
}

/// A started transfer, whichever its direction: where the WorkerSession sends what concerns it.
#[derive(Clone)]
pub struct Transfer {
    /// The worker's `put_end` and `ack` frames for it.
    pub from_worker: Recipient<FromWorker>,
    /// The call's events: the transfer is the call's sink.
    pub events: Recipient<CallEvent>,
    /// Its row in `ferrogen-mux status`.
    pub status: Recipient<DescribeTransfer>,
}

/// Starts the transfer for the worker's call `worker_id` in `direction` with `args`; a put's
/// `source` is the file it reads (taken out of `args`, which go on to the agent without it).
///
/// # Errors
///
/// A put whose source cannot be streamed.
pub fn start(
    worker_id: u64,
    direction: Direction,
    args: &mut Value,
    target_name: String,
    session: Recipient<ToWorker>,
    reply_to: Recipient<CallReply>,
) -> Result<Transfer, SourceError> {
    fn handle<A>(addr: Addr<A>) -> Transfer
    where
        A: Actor<Context = Context<A>>
            + Handler<FromWorker>
            + Handler<CallEvent>
            + Handler<DescribeTransfer>,
    {
        Transfer {
            from_worker: addr.clone().recipient(),
            events: addr.clone().recipient(),
            status: addr.recipient(),
        }
    }
    Ok(match direction {
        Direction::Put => {
            handle(Put::new(worker_id, args, target_name, session, reply_to)?.start())
        }
        Direction::Fetch => {
            handle(Fetch::new(worker_id, args, target_name, session, reply_to).start())
        }
    })
}

/// What every streamed transfer tracks, put or fetch: the worker's side, the route to the
/// agent, the window, and the end.
struct Stream {
    /// Put or fetch, for logs and status.
    direction: Direction,
    /// The worker's call id.
    worker_id: u64,
    /// The path on the target.
    path: String,
    /// The target's name, for logs and status.
    target_name: String,
    /// The file's size, when known (the put's `size` argument, the fetch's first chunk).
    total: Option<u64>,
    /// Bytes the sender passed through the mux (for a put, read from `source` and sent).
    sent: u64,
    /// Bytes the receiver acknowledged.
    acked: u64,
    /// When the call arrived.
    started: Instant,
    /// Set by [`CallEvent::Routed`].
    route: Option<Route>,
    /// The worker's session, for `ack`/`chunk` frames.
    session: Recipient<ToWorker>,
    /// The worker's session, for the final reply.
    reply_to: Recipient<CallReply>,
    /// Set once the final reply went to the worker.
    done: bool,
}

impl Stream {
    /// The stream of the worker's call `worker_id` with `args` (their path and size).
    fn new(
        direction: Direction,
        worker_id: u64,
        args: &Value,
        target_name: String,
        session: Recipient<ToWorker>,
        reply_to: Recipient<CallReply>,
    ) -> Stream {
        let fields = StreamArgs::deserialize(args).unwrap_or_default();
        Stream {
            direction,
            worker_id,
            path: fields
                .path
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            target_name,
            total: fields.size.as_ref().and_then(Value::as_u64),
            sent: 0,
            acked: 0,
            started: Instant::now(),
            route: None,
            session,
            reply_to,
            done: false,
        }
    }

    /// Keeps the route a [`CallEvent::Routed`] gives (any other event leaves it).
    fn take_route(&mut self, event: CallEvent) {
        if let CallEvent::Routed {
            mux_id,
            interp,
            link,
        } = event
        {
            self.route = Some(Route {
                mux_id,
                interp,
                link,
            });
        }
    }

    /// Bytes per second so far.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        self.acked as f64 / secs
    }

    /// Whether the sender may send more: less than a window unacknowledged.
    fn window_open(&self) -> bool {
        self.sent.saturating_sub(self.acked) < TRANSFER_WINDOW
    }

    /// The bytes unacknowledged, if the sender ran past the window (and its slack).
    fn overrun(&self) -> Option<u64> {
        let unacked = self.sent.saturating_sub(self.acked);
        (unacked > TRANSFER_WINDOW + WINDOW_SLACK).then_some(unacked)
    }

    /// Ends the transfer with an error of the mux's own: tells the worker, and the agent
    /// (which removes its temp file and answers the call, an answer then dropped).
    fn fail<A>(&mut self, kind: ErrorKind, message: String, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        if self.done {
            return;
        }
        warn!(target = %self.target_name, path = %self.path, "{} failed: {message}", self.direction.as_str());
        if let Some(route) = &self.route {
            route.send(Outgoing::Cancel);
        }
        self.reply_to
            .do_send(CallReply::error(self.worker_id, kind, message));
        self.done = true;
        ctx.stop();
    }

    /// A frame from the worker that this direction does not take: fails the transfer.
    fn unexpected<A>(&mut self, msg: FromWorker, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        let kind = match msg {
            FromWorker::PutEnd(_) => "put_end",
            FromWorker::Ack(_) => "ack",
            FromWorker::Chunk => "chunk",
        };
        let message = format!(
            "transfer of {}: unexpected {kind:?} frame from the worker in a {}",
            self.path,
            self.direction.as_str()
        );
        self.fail(ErrorKind::BadRequest, message, ctx);
    }

    /// An agent frame this direction does not take: logged and dropped.
    fn ignore(&self, frame: &str) {
        debug!(target = %self.target_name, "ignoring agent \"{frame}\" frame for a transfer");
    }

    /// The call's reply: pass it on; the transfer is over.
    fn on_reply<A>(&mut self, reply: CallReply, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        if self.done {
            return;
        }
        self.done = true;
        let ok = reply.is_ok();
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
        self.reply_to.do_send(reply);
        // Let frames already queued for the worker go out first (same mailbox, in order).
        ctx.run_later(Duration::ZERO, |_, ctx| ctx.stop());
    }

    /// Logged when the actor starts.
    fn started(&self) {
        debug!(target = %self.target_name, id = self.worker_id, path = %self.path,
               total = ?self.total, "{} starting", self.direction.as_str());
    }

    /// Logged when the actor stops before its reply.
    fn stopped(&self) {
        if !self.done {
            debug!(target = %self.target_name, path = %self.path, acked = self.acked,
                   "{} abandoned", self.direction.as_str());
        }
    }

    /// The transfer's status row.
    fn describe(&self) -> StatusRow {
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
        StatusRow::Transfer(TransferRow {
            name,
            state: if self.route.is_some() {
                TransferState::Streaming
            } else {
                TransferState::Queued
            },
            direction: self.direction,
            path: self.path.clone(),
            bytes: self.acked,
            sent: self.sent,
            total: self.total,
            rate,
            elapsed: self.started.elapsed().as_secs_f64(),
            doing,
        })
    }
}

/// What Put's and Fetch's actors get from their [`Stream`]: the logs at start and stop, and
/// the status row.
macro_rules! stream_actor {
    ($actor:ty) => {
        impl Actor for $actor {
            type Context = Context<Self>;

            fn started(&mut self, _: &mut Self::Context) {
                self.stream.started();
            }

            fn stopped(&mut self, _: &mut Self::Context) {
                self.stream.stopped();
            }
        }

        /// Handler for DescribeTransfer.
        impl Handler<DescribeTransfer> for $actor {
            type Result = MessageResult<DescribeTransfer>;

            fn handle(&mut self, _: DescribeTransfer, _: &mut Self::Context) -> Self::Result {
                MessageResult(self.stream.describe())
            }
        }
    };
}

/// A streamed put: reads its controller-side source and sends it to the agent, a window at a
/// time, then the worker's `put_end`.
pub struct Put {
    /// The route, the window, the end.
    stream: Stream,
    /// The file this put reads.
    source: Source,
}

impl Put {
    /// The put of the worker's call `worker_id`; its `source` is taken out of `args`, which
    /// go on to the agent without it.
    pub fn new(
        worker_id: u64,
        args: &mut Value,
        target_name: String,
        session: Recipient<ToWorker>,
        reply_to: Recipient<CallReply>,
    ) -> Result<Put, SourceError> {
        let source = args.as_object_mut().and_then(|args| args.remove("source"));
        let source = Source::open(source)?;
        let stream = Stream::new(
            Direction::Put,
            worker_id,
            args,
            target_name,
            session,
            reply_to,
        );
        Ok(Put { stream, source })
    }

    /// Sends what the route and the window allow: the next chunk of the source (one read in
    /// flight at a time), or, once all have gone, the worker's `put_end`.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(route) = &self.stream.route else {
            return;
        };
        if self.source.at_end {
            if let Some(end) = self.source.put_end.take() {
                route.send(Outgoing::PutEnd(end));
            }
            return;
        }
        if !self.stream.window_open() {
            return;
        }
        if self.source.reading {
            return;
        }
        self.source.reading = true;
        let file = self.source.file.clone();
        let offset = self.stream.sent;
        // Allocated here and freed here once written: a buffer allocated on the blocking
        // pool's threads would come from their malloc arenas and stay cached there.
        let buffer = Vec::with_capacity(CHUNK_MAX);
        let read = tokio::task::spawn_blocking(move || read_chunk(&file, offset, buffer));
        ctx.spawn(
            read.into_actor(self)
                .map(|joined, act, ctx| act.chunk_read(joined, ctx)),
        );
    }

    /// A read of the source finished: send its chunk (none at the end) and go on.
    fn chunk_read(
        &mut self,
        joined: Result<io::Result<NextChunk>, tokio::task::JoinError>,
        ctx: &mut Context<Self>,
    ) {
        self.source.reading = false;
        let chunk = match joined {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(err)) => {
                let message = format!("cannot read {}: {err}", self.source.path);
                return self.stream.fail(ErrorKind::SourceError, message, ctx);
            }
            Err(err) => {
                let message = format!("reading {} stopped: {err}", self.source.path);
                return self.stream.fail(ErrorKind::SourceError, message, ctx);
            }
        };
        if self.stream.done {
            return;
        }
        let (len, data) = match chunk {
            NextChunk::Read(chunk) => (chunk.len(), RelayBody::Bytes(Bytes::from(chunk))),
            NextChunk::InFile(len) => {
                let region = FileRegion {
                    file: self.source.file.clone(),
                    offset: self.stream.sent,
                    len,
                };
                (len, RelayBody::File(region))
            }
        };
        if len == 0 {
            self.source.at_end = true;
        } else if let Some(route) = &self.stream.route {
            let offset = self.stream.sent;
            self.stream.sent += len as u64;
            if self
                .stream
                .total
                .is_some_and(|total| self.stream.sent > total)
            {
                let message = format!("{} grew while it was being sent", self.source.path);
                return self.stream.fail(ErrorKind::SourceError, message, ctx);
            }
            route.send(Outgoing::Chunk { offset, data });
        }
        self.pump(ctx);
    }

    /// The agent wrote `bytes`: the window moves on.
    fn on_agent_ack(&mut self, ack: Ack, ctx: &mut Context<Self>) {
        if self.stream.done {
            return;
        }
        self.stream.acked = self.stream.acked.max(ack.bytes);
        self.pump(ctx);
        self.stream.session.do_send(ToWorker::Ack(Ack {
            id: self.stream.worker_id,
            bytes: ack.bytes,
        }));
    }
}

stream_actor!(Put);

/// Handler for FromWorker: `put_end` waits for the last chunk; anything else fails the put.
impl Handler<FromWorker> for Put {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, ctx: &mut Self::Context) {
        if self.stream.done {
            return;
        }
        match msg {
            FromWorker::PutEnd(end) => {
                self.source.put_end = Some(end);
                self.pump(ctx);
            }
            msg => self.stream.unexpected(msg, ctx),
        }
    }
}

/// Handler for the call's events: routed (the put starts reading its source), the agent's
/// `ack` frames (the window moves; passed on to the worker with its id), the reply (passed
/// on; the put is over).
impl Handler<CallEvent> for Put {
    type Result = ();

    fn handle(&mut self, msg: CallEvent, ctx: &mut Self::Context) {
        match msg {
            routed @ CallEvent::Routed { .. } => {
                self.stream.take_route(routed);
                self.pump(ctx);
            }
            CallEvent::Ack(ack) => self.on_agent_ack(ack, ctx),
            CallEvent::Chunk(..) if self.stream.done => {}
            CallEvent::Chunk(..) => self.stream.ignore("chunk"),
            CallEvent::Reply(reply) => self.stream.on_reply(reply, ctx),
        }
    }
}

/// A streamed fetch: relays the agent's chunks to the worker and the worker's acks back,
/// holding the agent to the window.
pub struct Fetch {
    /// The route, the window, the end.
    stream: Stream,
}

impl Fetch {
    /// The fetch of the worker's call `worker_id` with `args`.
    pub fn new(
        worker_id: u64,
        args: &Value,
        target_name: String,
        session: Recipient<ToWorker>,
        reply_to: Recipient<CallReply>,
    ) -> Fetch {
        Fetch {
            stream: Stream::new(
                Direction::Fetch,
                worker_id,
                args,
                target_name,
                session,
                reply_to,
            ),
        }
    }

    /// File data: to the worker, within the window.
    fn on_agent_chunk(&mut self, chunk: Chunk, body: Bytes, ctx: &mut Context<Self>) {
        if self.stream.done {
            return;
        }
        if let Some(size) = chunk.size {
            self.stream.total = Some(size);
        }
        self.stream.sent += body.len() as u64;
        if let Some(unacked) = self.stream.overrun() {
            self.stream.fail(
                ErrorKind::AgentError,
                format!("the agent sent {unacked} bytes unacknowledged"),
                ctx,
            );
            return;
        }
        let chunk = Chunk {
            id: self.stream.worker_id,
            ..chunk
        };
        self.stream.session.do_send(ToWorker::Chunk(chunk, body));
    }
}

stream_actor!(Fetch);

/// Handler for FromWorker: `ack` goes on to the agent; anything else fails the fetch.
impl Handler<FromWorker> for Fetch {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, ctx: &mut Self::Context) {
        if self.stream.done {
            return;
        }
        match (msg, &self.stream.route) {
            (FromWorker::Ack(ack), Some(route)) => {
                self.stream.acked = self.stream.acked.max(ack.bytes);
                route.send(Outgoing::Ack(ack));
            }
            (msg, _) => self.stream.unexpected(msg, ctx),
        }
    }
}

/// Handler for the call's events: routed, the agent's `chunk` frames (booked, passed on to
/// the worker with its id), the reply (passed on; the fetch is over).
impl Handler<CallEvent> for Fetch {
    type Result = ();

    fn handle(&mut self, msg: CallEvent, ctx: &mut Self::Context) {
        match msg {
            routed @ CallEvent::Routed { .. } => self.stream.take_route(routed),
            CallEvent::Ack(_) if self.stream.done => {}
            CallEvent::Ack(_) => self.stream.ignore("ack"),
            CallEvent::Chunk(chunk, body) => self.on_agent_chunk(chunk, body, ctx),
            CallEvent::Reply(reply) => self.stream.on_reply(reply, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use serde_json::json;
    use worker_ipc::{Frame, Response};

    use super::*;

    /// Stands in for the WorkerSession and the Target: records what reaches them, as the
    /// frames they would write.
    #[derive(Default, Clone)]
    struct Sink {
        /// Frames written to the worker (`ack`/`chunk`, then the reply).
        worker: Arc<Mutex<Vec<Frame>>>,
        /// Frames relayed towards the agent, a body left in its file read from it.
        agent: Arc<Mutex<Vec<Frame>>>,
        /// Of those, the offsets of the chunks whose body was left in the file.
        in_file: Arc<Mutex<Vec<u64>>>,
    }

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<ToWorker> for Sink {
        type Result = ();
        fn handle(&mut self, msg: ToWorker, _: &mut Self::Context) {
            let (msg, body) = match msg {
                ToWorker::Ack(ack) => (Response::Ack(ack), Bytes::new()),
                ToWorker::Chunk(chunk, body) => (Response::Chunk(chunk), body),
            };
            let frame = Frame::from_message(&msg, body).unwrap();
            self.worker.lock().unwrap().push(frame);
        }
    }

    impl Handler<CallReply> for Sink {
        type Result = ();
        fn handle(&mut self, msg: CallReply, _: &mut Self::Context) {
            let frame = Frame::from_message(&Response::Reply(msg.reply), msg.body).unwrap();
            self.worker.lock().unwrap().push(frame);
        }
    }

    impl Handler<Relay> for Sink {
        type Result = ();
        fn handle(&mut self, msg: Relay, _: &mut Self::Context) {
            for (msg, body) in msg.frames {
                let body = match body {
                    RelayBody::Bytes(bytes) => bytes,
                    RelayBody::File(region) => {
                        self.in_file.lock().unwrap().push(region.offset);
                        let mut body = vec![0u8; region.len];
                        region.file.read_exact_at(&mut body, region.offset).unwrap();
                        Bytes::from(body)
                    }
                };
                self.agent.lock().unwrap().push(msg.to_frame(body).unwrap());
            }
        }
    }

    /// A row's fields, as the status table has them.
    fn row(described: StatusRow) -> Value {
        serde_json::to_value(described).unwrap()
    }

    /// A put's `source` argument for `file`, as the worker sends it.
    fn source_of(file: &tempfile::NamedTempFile) -> Value {
        let meta = file.as_file().metadata().unwrap();
        json!({"path": file.path(), "dev": meta.dev(), "ino": meta.ino()})
    }

    fn put(mut args: Value, sink: &Sink) -> Result<Put, SourceError> {
        let addr = sink.clone().start();
        Put::new(
            7,
            &mut args,
            "web1".into(),
            addr.clone().recipient(),
            addr.recipient(),
        )
    }

    fn start_put(sink: &Sink, content: &[u8]) -> (Addr<Put>, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, content).unwrap();
        let args = json!({"path": "/dest", "size": content.len(), "source": source_of(&file)});
        let transfer = put(args, sink).unwrap().start();
        (transfer, file)
    }

    fn attach(transfer: &Addr<Put>, sink: &Sink, interp: u32) {
        transfer.do_send(CallEvent::Routed {
            mux_id: 41,
            interp,
            link: sink.clone().start().recipient(),
        });
    }

    fn put_end(size: usize) -> FromWorker {
        FromWorker::PutEnd(PutEnd {
            id: 7,
            size: size as u64,
            sha1: "x".into(),
            digests: None,
        })
    }

    fn ack(bytes: usize) -> CallEvent {
        CallEvent::Ack(Ack {
            id: 41,
            bytes: bytes as u64,
        })
    }

    fn chunk(id: u64, offset: u64, size: Option<u64>, body: &'static [u8]) -> (Chunk, Bytes) {
        (Chunk { id, offset, size }, Bytes::from_static(body))
    }

    /// Lets the transfer, its reads on the blocking pool and the sink run until nothing
    /// more arrives at the sink for a while (reads of the source can be slow on a busy
    /// machine, so a fixed pause is not enough).
    async fn settle(sink: &Sink) {
        let counts = || {
            (
                sink.worker.lock().unwrap().len(),
                sink.agent.lock().unwrap().len(),
            )
        };
        let mut last = counts();
        let mut quiet = 0;
        for _ in 0..500 {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = counts();
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
            if quiet == 5 {
                return;
            }
        }
    }

    #[test]
    fn streaming_ops_have_a_direction() {
        assert_eq!(direction_of(&Op::PutBegin), Some(Direction::Put));
        assert_eq!(direction_of(&Op::FetchBegin), Some(Direction::Fetch));
        assert_eq!(direction_of(&Op::PutFile), None);
    }

    #[actix::test]
    async fn a_put_reads_its_source_once_routed_and_sends_put_end_after_the_last_chunk() {
        let sink = Sink::default();
        let (transfer, _file) = start_put(&sink, b"abc");
        transfer.do_send(put_end(3));
        settle(&sink).await;
        assert!(
            sink.agent.lock().unwrap().is_empty(),
            "sent before Attached"
        );
        attach(&transfer, &sink, 2);
        transfer.do_send(ack(3));
        settle(&sink).await;
        let agent = sink.agent.lock().unwrap().clone();
        assert_eq!(agent.len(), 2);
        assert_eq!(agent[0].kind(), "chunk");
        assert_eq!(agent[0].header["id"], 41);
        assert_eq!(agent[0].header["interp"], 2);
        assert_eq!(agent[0].header["offset"], 0);
        assert_eq!(&agent[0].body[..], b"abc");
        assert_eq!(agent[1].kind(), "put_end");
        assert_eq!(agent[1].header["id"], 41);
        assert_eq!(agent[1].header["size"], 3);
        let worker = sink.worker.lock().unwrap().clone();
        assert_eq!(worker.len(), 1);
        assert_eq!(worker[0].kind(), "ack");
        assert_eq!(worker[0].header["id"], 7);
        assert_eq!(worker[0].header["bytes"], 3);
        let described = row(transfer.send(DescribeTransfer).await.unwrap());
        assert_eq!(described["bytes"], 3);
        assert_eq!(described["total"], 3);
        assert_eq!(described["state"], "streaming");
        transfer.do_send(CallEvent::Reply(CallReply::ok(7, json!({"size": 3}))));
        settle(&sink).await;
        assert_eq!(sink.worker.lock().unwrap().last().unwrap().kind(), "reply");
        assert!(!transfer.connected(), "a finished transfer stops");
    }

    #[actix::test]
    async fn a_put_keeps_at_most_a_window_unacknowledged() {
        let sink = Sink::default();
        let content = vec![7u8; 6 * CHUNK_MAX + 1];
        let (transfer, _file) = start_put(&sink, &content);
        attach(&transfer, &sink, 0);
        transfer.do_send(put_end(content.len()));
        settle(&sink).await;
        let window_chunks = (TRANSFER_WINDOW / CHUNK_MAX as u64) as usize;
        assert_eq!(sink.agent.lock().unwrap().len(), window_chunks);
        transfer.do_send(ack(2 * CHUNK_MAX));
        settle(&sink).await;
        assert_eq!(sink.agent.lock().unwrap().len(), window_chunks + 2);
        transfer.do_send(ack(6 * CHUNK_MAX));
        settle(&sink).await;
        let agent = sink.agent.lock().unwrap().clone();
        let kinds: Vec<&str> = agent.iter().map(Frame::kind).collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        assert!(kinds[..7].iter().all(|kind| *kind == "chunk"));
        assert_eq!(kinds[7], "put_end");
        assert_eq!(agent[6].header["offset"], 6 * CHUNK_MAX);
        assert_eq!(agent[6].body.len(), 1);
        let sent: usize = agent.iter().map(|frame| frame.body.len()).sum();
        assert_eq!(sent, content.len());
    }

    /// Bytes no compressor shrinks.
    fn random_bytes(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut bytes))
            .unwrap();
        bytes
    }

    #[actix::test]
    async fn incompressible_chunks_stay_in_the_file_and_compressible_ones_are_read() {
        let sink = Sink::default();
        // A chunk of random bytes, a chunk of text, and a short random tail.
        let mut content = random_bytes(CHUNK_MAX);
        content.extend(b"the quick brown fox jumps over the lazy dog\n".repeat(CHUNK_MAX / 44 + 1));
        content.truncate(2 * CHUNK_MAX);
        content.extend(random_bytes(PROBE_MIN_BODY + 10));
        let (transfer, _file) = start_put(&sink, &content);
        attach(&transfer, &sink, 0);
        transfer.do_send(put_end(content.len()));
        settle(&sink).await;
        let agent = sink.agent.lock().unwrap().clone();
        let bodies: Vec<u8> = agent.iter().flat_map(|frame| frame.body.to_vec()).collect();
        assert!(
            bodies == content,
            "the chunks put together are not the file"
        );
        let in_file = sink.in_file.lock().unwrap().clone();
        assert_eq!(in_file, [0, 2 * CHUNK_MAX as u64]);
    }

    #[actix::test]
    async fn a_put_source_must_be_the_regular_file_the_worker_opened() {
        let sink = Sink::default();
        let file = tempfile::NamedTempFile::new().unwrap();
        let refused = |args: Value| put(args, &sink).err().unwrap();

        let missing = refused(json!({"path": "/dest", "source": {"path": "/nonexistent/src"}}));
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert!(missing.message.contains("/nonexistent/src"), "{missing:?}");

        let mut other = source_of(&file);
        other["ino"] = json!(other["ino"].as_u64().unwrap() + 1);
        let replaced = refused(json!({"path": "/dest", "source": other}));
        assert_eq!(replaced.kind, ErrorKind::SourceError);
        assert!(replaced.message.contains("replaced"), "{replaced:?}");

        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let source = json!({"path": dir.path(), "dev": meta.dev(), "ino": meta.ino()});
        let not_file = refused(json!({"path": "/dest", "source": source}));
        assert!(
            not_file.message.contains("not a regular file"),
            "{not_file:?}"
        );

        assert_eq!(
            refused(json!({"path": "/dest"})).kind,
            ErrorKind::SourceError
        );
    }

    #[actix::test]
    async fn a_source_longer_than_the_put_said_fails_it() {
        let sink = Sink::default();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"abcdef").unwrap();
        let args = json!({"path": "/dest", "size": 3, "source": source_of(&file)});
        let transfer = put(args, &sink).unwrap().start();
        attach(&transfer, &sink, 0);
        settle(&sink).await;
        let worker = sink.worker.lock().unwrap().clone();
        let reply = worker.last().unwrap();
        assert_eq!(reply.header["error"]["kind"], "source_error");
        let message = reply.header["error"]["message"].as_str().unwrap();
        assert!(message.contains("grew"), "{message}");
        assert_eq!(sink.agent.lock().unwrap().last().unwrap().kind(), "cancel");
    }

    #[actix::test]
    async fn the_agent_gets_the_put_without_its_source() {
        let sink = Sink::default();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut args = json!({"path": "/dest", "size": 0, "source": source_of(&file)});
        let addr = sink.clone().start();
        start(
            7,
            Direction::Put,
            &mut args,
            "web1".into(),
            addr.clone().recipient(),
            addr.recipient(),
        )
        .unwrap();
        assert_eq!(args, json!({"path": "/dest", "size": 0}));
    }

    #[actix::test]
    async fn a_worker_chunk_in_a_put_fails_it_and_the_agent_is_told() {
        let sink = Sink::default();
        let (transfer, _file) = start_put(&sink, b"abc");
        attach(&transfer, &sink, 0);
        settle(&sink).await;
        transfer.do_send(FromWorker::Chunk);
        settle(&sink).await;
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
        let addr = sink.clone().start();
        let transfer = Fetch::new(
            7,
            &json!({"path": "/src"}),
            "web1".into(),
            addr.clone().recipient(),
            addr.recipient(),
        )
        .start();
        let link = sink.clone().start().recipient();
        transfer.do_send(CallEvent::Routed {
            mux_id: 9,
            interp: 0,
            link,
        });
        let (data, body) = chunk(9, 0, Some(4), b"data");
        transfer.do_send(CallEvent::Chunk(data, body));
        transfer.do_send(FromWorker::Ack(Ack { id: 7, bytes: 4 }));
        settle(&sink).await;
        let worker = sink.worker.lock().unwrap().clone();
        assert_eq!(worker[0].kind(), "chunk");
        assert_eq!(worker[0].header["id"], 7);
        assert_eq!(worker[0].header["size"], 4);
        assert!(worker[0].header.get("interp").is_none());
        let agent = sink.agent.lock().unwrap().clone();
        assert_eq!(agent[0].kind(), "ack");
        assert_eq!(agent[0].header["id"], 9);
        assert_eq!(
            row(transfer.send(DescribeTransfer).await.unwrap())["bytes"],
            4
        );
    }
}
