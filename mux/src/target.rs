//! `Target`: one connection to a target, the router of its agent link.
//!
//! It starts the transport ([`crate::transport`]), writes frames to the agent, decodes what
//! the agent sends ([`FromAgent`]) and routes it: replies to the sink of their call by
//! mux-side id, transfer frames to the sink of their streamed call, logs to the mux's log.
//! Its interpreters and their calls are one table ([`Interpreters`]).
//!
//! Its life is a [`Phase`]: *connecting* (waiting for a pool permit, spawning, writing the
//! bootstrap, waiting for the agent's `ready`; calls queue meanwhile, and those that may go
//! before `ready` follow the bootstrap at once) -> *ready* (calls go to their interpreter) ->
//! *dying* (every queued or in-flight call gets `unreachable` or `connection_lost`, the
//! Registry forgets this Target and the next call starts a new one).
//!
//! Become interpreters (docs/protocol.md, "Become interpreters"): the first call for an
//! account makes the Target ask the login agent to `spawn` one. That account's calls follow
//! at once: the login agent holds them until the new interpreter is up, so the first call
//! costs no extra round trip. At most `MITOGEN_MAX_INTERPRETERS` live; the least recently
//! used idle ones are stopped. `reset` and the mux's shutdown end the whole connection
//! through [`ShutdownTarget`].

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedRead;
use tracing::{debug, error, info, warn};
use worker_ipc::{
    AgentInfo, AgentLinkCodec, AgentLog, BecomeKey, BecomeSpec, ErrorInfo, ErrorKind, Frame,
    FrameError, FromAgent, Heartbeat, InterpId, InterpLost, InterpRef, LogLevel, Op, Reply,
    RouteOpen, RouteRef, Spawn, Spawned, StatusRow, TargetKey, TargetRow, TargetSpec, TargetState,
    ToAgent, LOGIN_INTERP,
};

use crate::{
    bootstrap::{self, Bootstrap},
    heartbeat,
    interpreters::{InFlight, Interpreters, Placement},
    link_writer::LinkWriter,
    messages::{
        CallEvent, CallReply, Cancel, DescribeTarget, DescribeTransfer, Dispatch, OpenRoute,
        Redispatch, Relay, RelayBody, RouteInput, ShutdownTarget, TargetGone,
    },
    process_groups,
    routes::{self, Routes},
    transport::{self, ConnectRequest, Connector, RouteWriter, Started, StderrTail, TransportExit},
};

/// After the transport is found dying, how long to wait for its exit status and the end
/// of its output before killing its process group.
const DYING_GRACE: Duration = Duration::from_secs(2);

/// After the process group was killed, how long to wait for the reaper's report.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// The remote shell's exit status when it could not find the command it was given: the
/// interpreter.
const COMMAND_NOT_FOUND: i32 = 127;

/// How long a finished Target keeps redirecting stray calls before it stops.
const LINGER: Duration = Duration::from_millis(500);

/// How much longer than the target's timeout the mux waits for `spawned` before it gives
/// up on a become interpreter itself (the agent should have answered by then).
const SPAWN_SLACK: Duration = Duration::from_secs(5);

/// Where a Target is in its life.
enum Phase {
    /// Waiting for a permit, spawning, or waiting for `ready`.
    Connecting {
        /// Calls that wait for `ready`, in arrival order.
        queue: Vec<Dispatch>,
        /// Held until `ready`, so at most `MITOGEN_POOL_SIZE` targets connect at once.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// The agent answered `ready`.
    Ready {
        /// What it said.
        agent: AgentInfo,
    },
    /// The transport is going away: waiting for its exit status and output, then failing
    /// every outstanding call.
    Dying {
        /// Why.
        reason: String,
        /// What the agent said at `ready`, if it got that far: failures are then
        /// `connection_lost`, else `unreachable`.
        agent: Option<AgentInfo>,
        /// Calls that were still waiting for `ready`, failed with the others.
        queue: Vec<Dispatch>,
        /// Set once the outstanding calls were failed and the actor is about to stop.
        finished: bool,
    },
}

/// The transport process and the agent link through it.
#[derive(Default)]
struct Link {
    /// Transport child pid (= its process group), once spawned.
    pid: Option<u32>,
    /// The agent link's write side (the child's stdin).
    writer: Option<LinkWriter>,
    /// The transport's stderr, for messages.
    stderr: StderrTail,
    /// How the transport ended, once known.
    exit: Option<TransportExit>,
    /// Whether the agent's stdout reached EOF (or failed).
    stdout_closed: bool,
    /// Set when the mux itself killed the transport (timeout, a bad frame, it would not
    /// exit): its exit status then says nothing about what went wrong.
    killed_by_mux: bool,
    /// For a routed link, the blobs its hop holds (see [`Started::hop_blobs`]).
    hop_blobs: Option<routes::RelayedBlobs>,
}

impl Link {
    /// Kills the transport's process group, as the mux's own doing.
    fn kill(&mut self) {
        if let Some(pid) = self.pid {
            self.killed_by_mux = true;
            process_groups::kill(pid);
        }
    }
}

/// What every Target of a mux shares, handed to each by the Registry.
#[derive(Clone)]
pub struct Shared {
    /// The agent payload and remote command.
    pub bootstrap: Bootstrap,
    /// Connection set-up permits (`MITOGEN_POOL_SIZE`) for targets the mux reaches itself.
    pub pool: Arc<Semaphore>,
    /// `MITOGEN_POOL_SIZE` again, for the permits of each hop.
    pub pool_size: usize,
    /// Set-up permits of the targets behind each hop (`mitogen_via`), by the hop's key: the
    /// limit applies per hop, and a routed target never holds a permit its hop waits for.
    pub hop_pools: Arc<Mutex<HashMap<TargetKey, Arc<Semaphore>>>>,
    /// How the agent link is started.
    pub connector: Arc<dyn Connector>,
    /// `MITOGEN_MAX_INTERPRETERS`.
    pub max_interpreters: usize,
}

impl Shared {
    /// The set-up permits `spec` takes one of: its hop's, or the mux's own.
    fn pool_for(&self, spec: &TargetSpec) -> Arc<Semaphore> {
        match &spec.via {
            None => self.pool.clone(),
            Some(via) => self
                .hop_pools
                .lock()
                .entry(via.key())
                .or_insert_with(|| Arc::new(Semaphore::new(self.pool_size)))
                .clone(),
        }
    }
}

/// One target connection.
pub struct Target {
    /// Number given by the Registry; guards [`TargetGone`] against a newer Target.
    serial: u64,
    /// How to reach the target.
    spec: TargetSpec,
    /// `spec` without its name: the Registry's key for this Target.
    key: TargetKey,
    /// Inventory name (or key summary), for logs and messages.
    name: String,
    /// What every Target of the mux shares.
    shared: Shared,
    /// Told when this Target goes away.
    registry: Recipient<TargetGone>,
    /// Calls that arrive after this Target began dying go here, to a fresh Target.
    redispatch: Recipient<Redispatch>,
    /// Lifecycle.
    phase: Phase,
    /// When `phase` last changed, for status.
    since: Instant,
    /// The transport.
    link: Link,
    /// The interpreters and their calls.
    interpreters: Interpreters,
    /// Answered when the Target is finished, for [`ShutdownTarget`].
    on_finished: Vec<oneshot::Sender<()>>,
    /// When the agent last sent anything (see the heartbeat module).
    last_heard: Instant,
    /// The last heartbeat's number.
    heartbeat_seq: u64,
    /// The transports of targets behind this one that its agent runs (`mitogen_via`).
    routes: Routes,
}

impl Target {
    /// A Target for `spec`, not yet started.
    pub fn new(
        serial: u64,
        spec: TargetSpec,
        shared: Shared,
        registry: Recipient<TargetGone>,
        redispatch: Recipient<Redispatch>,
    ) -> Target {
        let key = spec.key();
        let name = spec.name.clone().unwrap_or_else(|| key.to_string());
        Target {
            serial,
            key,
            name,
            spec,
            interpreters: Interpreters::new(shared.max_interpreters),
            shared,
            registry,
            redispatch,
            phase: Phase::Connecting {
                queue: Vec::new(),
                permit: None,
            },
            since: Instant::now(),
            link: Link::default(),
            on_finished: Vec::new(),
            last_heard: Instant::now(),
            heartbeat_seq: 0,
            routes: Routes::default(),
        }
    }

    /// The target's timeout (connect + bootstrap, become spawns).
    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.spec.timeout.clamp(0.1, 86_400.0))
    }

    fn on_started(
        &mut self,
        started: Result<Started, String>,
        permit: Option<OwnedSemaphorePermit>,
        ctx: &mut Context<Self>,
    ) {
        let started = match started {
            Ok(started) => started,
            Err(err) => {
                self.link.stdout_closed = true;
                self.link.exit = Some(TransportExit::NotStarted);
                self.begin_dying(err, ctx);
                return;
            }
        };
        self.link.pid = started.pid;
        self.link.hop_blobs = started.hop_blobs.clone();
        let Phase::Connecting { permit: held, .. } = &mut self.phase else {
            // Shut down while the child was being spawned: its output is not wanted.
            self.link.stdout_closed = true;
            if let Some(pid) = started.pid {
                process_groups::kill(pid);
            }
            return;
        };
        *held = permit;
        debug!(target = %self.name, pid = ?started.pid, "transport started");
        let codec = if bootstrap::compresses_link(&self.spec) {
            AgentLinkCodec::compressing()
        } else {
            AgentLinkCodec::plain()
        };
        let (writer, writing) = LinkWriter::new(started.stdin, started.stdin_pipe, codec);
        self.link.writer = Some(writer);
        ctx.spawn(writing.into_actor(self).map(|written, act, _| {
            // A broken stdin means the transport is going; stdout EOF reports it, and the
            // replies still to come may say more. Frames written after it are dropped.
            if let Err(err) = written {
                debug!(target = %act.name, "cannot write to agent: {err}");
            }
        }));
        Target::add_stream(
            FramedRead::new(started.stdout, AgentLinkCodec::plain()),
            ctx,
        );
        let exit = started.exit;
        ctx.spawn(
            async move {
                exit.await
                    .unwrap_or_else(|_| TransportExit::Unknown("reaper gone".into()))
            }
            .into_actor(self)
            .map(|status, act, ctx| act.on_transport_exit(status, ctx)),
        );
        self.send_calls_before_ready(ctx);
    }

    /// The transport process exited.
    fn on_transport_exit(&mut self, status: TransportExit, ctx: &mut Context<Self>) {
        debug!(target = %self.name, %status, "transport exited");
        self.link.exit = Some(status);
        // Whatever the transport left running in its group is orphaned: end it, so the
        // agent's stdout reaches EOF (after the frames already in the pipe are read).
        if let Some(pid) = self.link.pid {
            process_groups::kill(pid);
        }
        self.begin_dying(TRANSPORT_EXITED.into(), ctx);
    }

    /// Once the agent link is open, sends the queue's leading calls that may go before
    /// `ready`; the rest, and everything behind them, waits for it (calls keep their order).
    fn send_calls_before_ready(&mut self, ctx: &mut Context<Self>) {
        if self.link.writer.is_none() {
            return;
        }
        loop {
            let Phase::Connecting { queue, .. } = &mut self.phase else {
                return;
            };
            if !queue.first().is_some_and(Target::goes_before_ready) {
                return;
            }
            let call = queue.remove(0);
            self.send_call(LOGIN_INTERP, call, ctx);
        }
    }

    /// Whether `call` may go to the login agent right behind the bootstrap payload, before
    /// its `ready`: the agent reads it once it is up, which saves the round trip of waiting
    /// for `ready`. Calls answered from `ready`, calls for a become account and streams wait.
    fn goes_before_ready(call: &Dispatch) -> bool {
        call.become_spec.is_none() && call.op != Op::InterpreterInfo && !call.streams
    }

    fn on_ready(&mut self, agent: AgentInfo, ctx: &mut Context<Self>) {
        info!(target = %self.name, agent = ?agent.0, "agent ready");
        let old = std::mem::replace(&mut self.phase, Phase::Ready { agent });
        self.since = Instant::now();
        if let Phase::Connecting { queue, .. } = old {
            for call in queue {
                self.forward(call, ctx);
            }
        }
        for request in self.routes.take_waiting() {
            self.open_route(request, ctx);
        }
        let keepalive = heartbeat::Keepalive::of(&self.spec);
        ctx.run_interval(keepalive.interval, |act, ctx| act.heartbeat(ctx));
    }

    /// Sends the next heartbeat to the login agent and to each become interpreter that is up,
    /// or declares whichever has been silent too long dead: the login agent takes the whole
    /// connection with it, a become interpreter only its own calls.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        let silent = self.last_heard.elapsed();
        let keepalive = heartbeat::Keepalive::of(&self.spec);
        if silent >= keepalive.deadline() {
            self.link.kill();
            let reason = format!("the agent on {} {}", self.name, keepalive.silence(silent));
            warn!(target = %self.name, "{reason}");
            self.begin_dying(reason, ctx);
            return;
        }
        for (id, silent) in self.interpreters.silent_become(keepalive.deadline()) {
            self.declare_interp_dead(id, &keepalive.silence(silent));
        }
        self.heartbeat_seq += 1;
        let seq = self.heartbeat_seq;
        for interp in std::iter::once(LOGIN_INTERP).chain(self.interpreters.become_ready()) {
            self.transmit(ToAgent::Heartbeat(Heartbeat { seq, interp }), Bytes::new());
        }
    }

    /// A become interpreter answered nothing for the keepalive deadline (stopped or wedged,
    /// while the login agent answers): its calls fail `connection_lost`, the login agent kills
    /// it without waiting on it, and the account's next call spawns a new one.
    fn declare_interp_dead(&mut self, id: InterpId, silence: &str) {
        let why = format!("the become interpreter {silence}");
        if let Some(key) = self.interpreters.account_of(id) {
            let text = format!(
                "via {}: become {}: {why}",
                self.name,
                self.account_label(key)
            );
            self.routes.fail_interp(id, &text);
        }
        self.lose_interp(id, &why, true);
        self.transmit(ToAgent::Kill(InterpRef { interp: id }), Bytes::new());
    }

    /// Sends `call` to its interpreter (the phase is Ready), spawning a become interpreter for
    /// its account first if there is none.
    fn forward(&mut self, call: Dispatch, ctx: &mut Context<Self>) {
        if call.op == Op::InterpreterInfo && call.become_spec.is_none() {
            // What the login agent said when it came up: no round trip to the target.
            let info = match &self.phase {
                Phase::Ready { agent } => agent.0.clone(),
                _ => Default::default(),
            };
            let reply = CallReply::ok(call.worker_id, serde_json::Value::Object(info));
            call.sink.do_send(CallEvent::Reply(reply));
            return;
        }
        let Some(become_spec) = call.become_spec.clone() else {
            self.send_call(LOGIN_INTERP, call, ctx);
            return;
        };
        // The local connection's tasks start in the playbook's directory: the become tool is
        // started there, as vanilla's local plugin starts it, so that an account that may
        // not enter it still runs there.
        let cwd = call
            .args
            .get("cwd")
            .and_then(|cwd| cwd.as_str())
            .map(str::to_owned);
        let id = self.interpreter_for_account(become_spec, cwd, ctx);
        self.send_call(id, call, ctx);
    }

    /// The interpreter of `become_spec`'s account, asking the login agent to `spawn` one
    /// (its tool started in `cwd`) if there is none; frames for it may follow at once.
    fn interpreter_for_account(
        &mut self,
        become_spec: BecomeSpec,
        cwd: Option<String>,
        ctx: &mut Context<Self>,
    ) -> InterpId {
        let key = become_spec.key();
        let patience = self.timeout() + SPAWN_SLACK;
        let deadline = tokio::time::Instant::now() + patience;
        let (id, evict, over_limit) = match self.interpreters.interpreter_for(&key, deadline) {
            Placement::Existing(id) => return id,
            Placement::New {
                id,
                evict,
                over_limit,
            } => (id, evict, over_limit),
        };
        for (victim, account) in evict {
            self.stop_interpreter(victim, &account, "least recently used");
        }
        if over_limit {
            warn!(
                target = %self.name,
                account = %key,
                live = self.interpreters.become_count(),
                "every become interpreter is busy: going over MITOGEN_MAX_INTERPRETERS; \
                 idle ones are stopped as calls finish"
            );
        }
        // The password rides in this frame and nowhere else; the log line names the
        // account only.
        debug!(target = %self.name, interp = id, account = %key, "spawning become interpreter");
        self.transmit(
            ToAgent::Spawn(Spawn {
                interp: id,
                become_spec,
                timeout: self.spec.timeout,
                cwd,
            }),
            Bytes::new(),
        );
        ctx.run_later(patience, move |act, _| {
            if act
                .interpreters
                .spawn_overdue(id, tokio::time::Instant::now())
            {
                let secs = patience.as_secs_f64();
                let why = format!("the agent did not answer within {secs}s");
                act.fail_spawn(id, ErrorKind::BecomeFailed, &why);
                act.transmit(ToAgent::Stop(InterpRef { interp: id }), Bytes::new());
            }
        });
        id
    }

    /// Asks the agent to start a routed target's transport (the phase is Ready), in the
    /// interpreter of the account the route asks for, and answers the request with the link.
    fn open_route(&mut self, request: OpenRoute, ctx: &mut Context<Self>) {
        let OpenRoute {
            argv,
            prompts,
            payload,
            stderr_tail,
            name,
            become_spec,
            reply,
            ..
        } = request;
        let interp = match become_spec {
            Some(spec) => self.interpreter_for_account(spec, None, ctx),
            None => LOGIN_INTERP,
        };
        let (route, reader, exit) = self.routes.open(interp, stderr_tail);
        debug!(target = %self.name, route, interp, routed = %name, ?argv, "opening a route");
        self.transmit(
            ToAgent::RouteOpen(RouteOpen {
                route,
                interp,
                argv,
                prompts,
            }),
            payload,
        );
        let writer = RouteWriter::new(route, interp, ctx.address().recipient());
        let relayed = self.routes.relayed(interp);
        let _ = reply.send(Ok(routes::started(writer, reader, exit, relayed)));
    }

    /// Sends `call` to interpreter `interp`, behind the blobs it has not had yet, and records
    /// it in flight. A streamed call's sink learns where it went.
    fn send_call(&mut self, interp: InterpId, call: Dispatch, ctx: &mut Context<Self>) {
        let in_flight = InFlight {
            worker_id: call.worker_id,
            sink: call.sink.clone(),
            op: call.op.clone(),
            task: call.task,
            since: Instant::now(),
            interp,
            session: call.session,
            streams: call.streams,
            bytes: 0,
        };
        let (mux_id, frames) = self
            .interpreters
            .send(interp, call.op, call.args, call.body, call.blobs, in_flight);
        for (frame, body) in frames {
            let (frame, body) = self.served_by_hop(frame, body);
            self.transmit(frame, body);
        }
        if call.streams {
            // After the call frame: the transfer's frames come back here and follow it.
            call.sink.do_send(CallEvent::Routed {
                mux_id,
                interp,
                link: ctx.address().recipient(),
            });
        }
    }

    /// A blob whose content the hop in front of this routed target already holds goes as a
    /// reference the hop answers (module code crosses each hop once); anything else as it is.
    fn served_by_hop(&self, frame: ToAgent, body: Bytes) -> (ToAgent, Bytes) {
        match (frame, &self.link.hop_blobs) {
            (ToAgent::Blob(mut blob), Some(hop)) if !blob.cached && !hop.must_send(&blob.hash) => {
                debug!(target = %self.name, hash = %blob.hash, "blob served by the hop");
                blob.at_hop = true;
                (ToAgent::Blob(blob), Bytes::new())
            }
            (frame, _) => (frame, body),
        }
    }

    /// Stops the idle become interpreter `id` on the target (already forgotten by the table).
    fn stop_interpreter(&mut self, id: InterpId, account: &BecomeKey, why: &str) {
        debug!(target = %self.name, interp = id, %account, why, "stopping become interpreter");
        self.transmit(ToAgent::Stop(InterpRef { interp: id }), Bytes::new());
    }

    /// "sudo:postgres on web1".
    fn account_label(&self, key: &BecomeKey) -> String {
        format!("{key} on {}", self.name)
    }

    /// A become interpreter could not be started: fails the calls sent to it and forgets it
    /// so the next call for the account tries again.
    fn fail_spawn(&mut self, id: InterpId, kind: ErrorKind, message: &str) {
        let Some(key) = self.interpreters.account_of(id).cloned() else {
            return;
        };
        let text = format!("become {}: {message}", self.account_label(&key));
        warn!(target = %self.name, interp = id, "{text}");
        // The agent answers each of them too, once it has given up on the interpreter.
        self.routes
            .fail_interp(id, &format!("via {}: {text}", self.name));
        for call in self.interpreters.take_calls_of(id, true) {
            let reply = CallReply::error(call.worker_id, kind.clone(), text.clone());
            call.sink.do_send(CallEvent::Reply(reply));
        }
        self.interpreters.forget(id);
    }

    /// The login agent answered `spawn`.
    fn on_interp_spawned(&mut self, spawned: Spawned) {
        let id = spawned.interp;
        let Some(key) = self.interpreters.account_of(id).cloned() else {
            // Given up on (or reset) meanwhile: make sure it does not linger.
            debug!(target = %self.name, interp = id, "\"spawned\" for an unknown interpreter");
            if spawned.outcome.is_ok() {
                self.transmit(ToAgent::Stop(InterpRef { interp: id }), Bytes::new());
            }
            return;
        };
        match spawned.outcome {
            Err(ErrorInfo { kind, message, .. }) => self.fail_spawn(id, kind, &message),
            Ok(ready) => {
                let pid = ready.pid();
                info!(target = %self.name, interp = id, account = %key, ?pid, "become interpreter ready");
                self.interpreters.spawned(id, pid);
            }
        }
    }

    /// A become interpreter exited: its calls fail with `connection_lost`.
    fn on_interp_lost(&mut self, lost: InterpLost) {
        let why = lost.message.unwrap_or_else(|| "it exited".to_owned());
        self.lose_interp(lost.interp, &why, false);
    }

    /// Become interpreter `id` is gone (`why`): its calls fail with `connection_lost` and it
    /// is forgotten. With `abandon`, replies that still come for its calls are dropped quietly.
    fn lose_interp(&mut self, id: InterpId, why: &str, abandon: bool) {
        let Some(key) = self.interpreters.account_of(id).cloned() else {
            debug!(target = %self.name, interp = id, %why, "lost an interpreter already forgotten");
            return;
        };
        let message = format!("connection to {} lost: {why}", self.account_label(&key));
        let lost = self.interpreters.take_calls_of(id, abandon);
        if lost.is_empty() {
            debug!(target = %self.name, interp = id, "{message}");
        } else {
            warn!(target = %self.name, interp = id, "{message}");
        }
        for call in lost {
            let text = format!("{message} (while running {})", call.op);
            let reply = CallReply::error(call.worker_id, ErrorKind::ConnectionLost, text);
            call.sink.do_send(CallEvent::Reply(reply));
        }
        self.interpreters.forget(id);
    }

    /// A call's reply: to its sink, with the worker's id restored.
    fn on_reply(&mut self, mut reply: Reply, body: Bytes) {
        let mux_id = reply.id;
        let (call, evict) = match self.interpreters.finish(mux_id) {
            Ok(done) => done,
            Err(true) => {
                debug!(target = %self.name, mux_id, "dropping the reply of a cancelled call");
                return;
            }
            Err(false) => {
                warn!(target = %self.name, mux_id, "agent reply for an unknown call");
                return;
            }
        };
        self.interpreters.heard_from(call.interp);
        for (victim, account) in evict {
            self.stop_interpreter(victim, &account, "over MITOGEN_MAX_INTERPRETERS");
        }
        reply.id = call.worker_id;
        call.sink
            .do_send(CallEvent::Reply(CallReply { reply, body }));
    }

    /// An `ack` or `chunk` of a streamed call: to its sink.
    fn on_transfer_frame(&self, mux_id: u64, event: CallEvent) {
        match self.interpreters.call(mux_id).filter(|call| call.streams) {
            Some(call) => call.sink.do_send(event),
            // Cancelled or failed meanwhile: the agent stops on the cancel.
            None => {
                debug!(target = %self.name, mux_id, "dropping a frame of a finished transfer")
            }
        }
    }

    fn on_log(&self, log: &AgentLog) {
        let message = &log.message;
        match log.level {
            Some(LogLevel::Error) => error!(target = %self.name, "agent: {message}"),
            Some(LogLevel::Warning) => warn!(target = %self.name, "agent: {message}"),
            Some(LogLevel::Info) => info!(target = %self.name, "agent: {message}"),
            _ => debug!(target = %self.name, "agent: {message}"),
        }
    }

    /// Marks the transport as going away: the Registry forgets this Target now, queued and
    /// in-flight calls are failed once the exit status and stderr are in (or after
    /// [`DYING_GRACE`], when the process group is killed).
    fn begin_dying(&mut self, reason: String, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Dying { .. }) {
            self.try_finish(ctx);
            return;
        }
        debug!(target = %self.name, %reason, "transport going away");
        let (agent, queue) = match std::mem::replace(&mut self.phase, Phase::dead()) {
            Phase::Ready { agent } => (Some(agent), Vec::new()),
            Phase::Connecting { queue, .. } => (None, queue),
            Phase::Dying { agent, queue, .. } => (agent, queue),
        };
        self.phase = Phase::Dying {
            reason,
            agent,
            queue,
            finished: false,
        };
        self.since = Instant::now();
        self.registry.do_send(TargetGone {
            key: self.key.clone(),
            serial: self.serial,
        });
        ctx.run_later(DYING_GRACE, |act, ctx| {
            if act.link.exit.is_none() {
                act.link.kill();
            } else if let Some(pid) = act.link.pid {
                process_groups::kill(pid);
            }
            // The reaper reports the kill promptly; if even that does not come, give up.
            ctx.run_later(KILL_GRACE, |act, ctx| act.finish(ctx));
        });
        self.try_finish(ctx);
    }

    fn try_finish(&mut self, ctx: &mut Context<Self>) {
        if self.link.exit.is_some() && self.link.stdout_closed {
            self.finish(ctx);
        }
    }

    /// Fails every outstanding call, kills what is left of the transport and stops.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        let Phase::Dying {
            agent,
            queue,
            finished,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if *finished {
            return;
        }
        *finished = true;
        let was_ready = agent.is_some();
        let queue = std::mem::take(queue);
        if let Some(pid) = self.link.pid {
            process_groups::kill(pid);
        }
        let summary = self.key.to_string();
        let who = if summary == self.name {
            summary
        } else {
            format!("{} ({summary})", self.name)
        };
        let detail = self.what_ended();
        let (kind, message) = if was_ready {
            (
                ErrorKind::ConnectionLost,
                format!("connection to {who} lost: {detail}"),
            )
        } else if self.lacks_python() {
            (
                ErrorKind::NoInterpreter,
                format!("no Python on {who}: {detail}"),
            )
        } else {
            (
                ErrorKind::Unreachable,
                format!("cannot connect to {who}: {detail}"),
            )
        };
        let calls = self.interpreters.take_all_calls();
        // Without Python the worker goes on over plain ssh: nothing for the user to see.
        if kind != ErrorKind::NoInterpreter && (!queue.is_empty() || !calls.is_empty()) {
            warn!(target = %self.name, "{message}");
        } else {
            debug!(target = %self.name, "{message}");
        }
        for call in queue {
            let reply = CallReply::error(call.worker_id, kind.clone(), message.clone());
            call.sink.do_send(CallEvent::Reply(reply));
        }
        for call in calls {
            // A call sent before `ready` (goes_before_ready) never reached a running agent.
            let reply = if was_ready {
                let msg = format!("{message} (while running {})", call.op);
                CallReply::error(call.worker_id, ErrorKind::ConnectionLost, msg)
            } else {
                CallReply::error(call.worker_id, kind.clone(), message.clone())
            };
            call.sink.do_send(CallEvent::Reply(reply));
        }
        self.routes
            .fail_all(&format!("via {}: {message}", self.name));
        for tx in self.on_finished.drain(..) {
            let _ = tx.send(());
        }
        // Stay alive a moment so calls the Registry sent before it processed TargetGone
        // are redispatched rather than dropped with the mailbox.
        ctx.run_later(LINGER, |_, ctx| ctx.stop());
    }

    /// Whether ssh connected and the remote shell found no interpreter to run (the bootstrap
    /// command's status 127, before `ready`): the worker may still run commands over a plain
    /// shell (docs/protocol.md, "no_interpreter"). Locally there is no such channel.
    fn lacks_python(&self) -> bool {
        self.spec.transport == worker_ipc::Transport::Ssh
            && !self.link.killed_by_mux
            && self.link.exit == Some(TransportExit::Exited(COMMAND_NOT_FOUND))
    }

    /// What ended the connection, for the messages of the calls it fails: which process
    /// died and how, then what the transport last wrote to stderr.
    fn what_ended(&self) -> String {
        let (reason, agent) = match &self.phase {
            Phase::Dying { reason, agent, .. } => (reason.as_str(), agent.as_ref()),
            _ => ("closed", None),
        };
        let kind = transport::kind_of(self.spec.transport);
        let transport = kind.label();
        // A hop's agent ran the transport (mitogen_via): say which hop, as the failure is
        // there.
        let on_hop = match self.spec.via.as_deref() {
            Some(hop) => format!(" on {}", hop.name.as_deref().unwrap_or("the hop")),
            None => String::new(),
        };
        let pid = self
            .link
            .pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        let status = match (&self.link.exit, self.link.killed_by_mux) {
            (_, true) => "killed by ferrogen-mux".to_owned(),
            (Some(status), false) => status.to_string(),
            (None, false) => "still running, killed".to_owned(),
        };
        let signalled =
            !self.link.killed_by_mux && matches!(self.link.exit, Some(TransportExit::Signalled(_)));
        // The agent's stdout ending, or the transport exiting, on its own: say which end died.
        let on_its_own =
            !self.link.killed_by_mux && matches!(reason, AGENT_CLOSED_OUTPUT | TRANSPORT_EXITED);
        let agent_pid = agent.and_then(AgentInfo::pid);
        let mut detail = match (on_its_own, agent_pid) {
            (true, _) if signalled => format!("{transport}{on_hop}{pid} was {status}"),
            // ssh itself ended normally: the remote end went away.
            (true, Some(agent)) if kind.is_remote() => format!(
                "the interpreter on the target (pid {agent}) died or its connection closed \
                 ({transport}{on_hop} {status})"
            ),
            (true, _) => format!("{transport}{on_hop}{pid} ended: {status}"),
            (false, _) => format!("{reason}; {transport}{on_hop}{pid} {status}"),
        };
        match self.link.stderr.lines().as_slice() {
            [] => {}
            [line] => {
                let _ = write!(detail, "; {transport} stderr: {line}");
            }
            lines => {
                let _ = write!(detail, "; {transport} stderr:\n{}", lines.join("\n"));
            }
        }
        detail
    }

    /// Writes one frame to the agent link.
    fn transmit(&mut self, msg: ToAgent, body: Bytes) {
        self.transmit_relayed(msg, RelayBody::Bytes(body));
    }

    /// Writes one frame to the agent link, its body in memory or (a transfer's) in a file.
    fn transmit_relayed(&mut self, msg: ToAgent, body: RelayBody) {
        let Some(writer) = self.link.writer.as_mut() else {
            warn!(target = %self.name, "dropping frame: agent link not open");
            return;
        };
        let written = match body {
            RelayBody::Bytes(bytes) => msg.to_frame(bytes).and_then(|frame| writer.write(&frame)),
            RelayBody::File(region) => msg
                .to_frame(Bytes::new())
                .and_then(|frame| writer.write_region(&frame, region)),
        };
        if let Err(err) = written {
            warn!(target = %self.name, "dropping frame: {err}");
        }
    }

    /// The target's own status row.
    fn row(&self) -> TargetRow {
        let (state, queued, agent_pid) = match &self.phase {
            Phase::Connecting { queue, .. } => (TargetState::Connecting, queue.len(), None),
            Phase::Ready { agent } => (TargetState::Ready, 0, agent.pid()),
            Phase::Dying { agent, queue, .. } => (
                TargetState::Dead,
                queue.len(),
                agent.as_ref().and_then(AgentInfo::pid),
            ),
        };
        let doing = match (&self.phase, self.link.pid) {
            (Phase::Connecting { .. }, None) => "waiting for a connection slot (MITOGEN_POOL_SIZE)",
            (Phase::Connecting { .. }, Some(_)) => {
                "connecting: authenticating and starting the agent"
            }
            (Phase::Ready { .. }, _) if self.interpreters.is_idle() => "idle",
            (Phase::Ready { .. }, _) => "serving calls",
            (Phase::Dying { .. }, _) => "closing",
        };
        TargetRow {
            name: self.name.clone(),
            key: self.key.to_string(),
            state,
            doing: doing.to_owned(),
            interpreters: self.interpreters.become_count(),
            since: self.since.elapsed().as_secs_f64(),
            pid: self.link.pid,
            agent_pid,
            queued,
            calls: self.interpreters.target_calls(),
        }
    }
}

/// Why a Target dies when the agent's stdout ends.
const AGENT_CLOSED_OUTPUT: &str = "agent closed its output";

/// Why a Target dies when its transport process exits.
const TRANSPORT_EXITED: &str = "transport exited";

impl Phase {
    /// A placeholder while the phase is being replaced.
    fn dead() -> Phase {
        Phase::Dying {
            reason: String::new(),
            agent: None,
            queue: Vec::new(),
            finished: false,
        }
    }
}

impl Actor for Target {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let timeout = self.timeout();
        let pool = self.shared.pool_for(&self.spec);
        let connecting = self.shared.connector.connect(ConnectRequest {
            spec: self.spec.clone(),
            bootstrap: self.shared.bootstrap.clone(),
            stderr_tail: self.link.stderr.clone(),
            name: self.name.clone(),
            timeout,
        });
        async move {
            let permit = pool.acquire_owned().await.ok();
            (connecting.await, permit)
        }
        .into_actor(self)
        .then(move |(started, permit), act, ctx| {
            act.on_started(started, permit, ctx);
            // The timeout covers spawning and bootstrap; time spent waiting for a pool
            // permit does not count.
            ctx.run_later(timeout, move |act, ctx| {
                if matches!(act.phase, Phase::Connecting { .. }) {
                    act.link.kill();
                    let secs = timeout.as_secs_f64();
                    act.begin_dying(format!("agent did not start within {secs}s"), ctx);
                }
            });
            fut::ready(())
        })
        .spawn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(pid) = self.link.pid {
            process_groups::kill(pid);
        }
        debug!(target = %self.name, "target stopped");
    }
}

/// Handler for Dispatch.
impl Handler<Dispatch> for Target {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Self::Context) {
        match &mut self.phase {
            Phase::Ready { .. } => self.forward(msg, ctx),
            Phase::Connecting { queue, .. } => {
                queue.push(msg);
                self.send_calls_before_ready(ctx);
            }
            // The Registry forgot this Target when it began dying; this call raced with
            // that and is retried on a new connection.
            Phase::Dying { .. } => self.redispatch.do_send(Redispatch {
                spec: self.spec.clone(),
                call: msg,
            }),
        }
    }
}

/// Handler for frames from the agent: decoded here, routed by what they are.
impl StreamHandler<Result<Frame, FrameError>> for Target {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Self::Context) {
        let msg = match item {
            Ok(frame) => {
                self.last_heard = Instant::now();
                FromAgent::from_frame(frame)
            }
            Err(err) => {
                self.link.stdout_closed = true;
                self.link.kill();
                self.begin_dying(format!("bad frame from agent: {err}"), ctx);
                return;
            }
        };
        let connecting = matches!(self.phase, Phase::Connecting { .. });
        let ready = matches!(self.phase, Phase::Ready { .. });
        match msg {
            FromAgent::Ready(agent) if connecting => self.on_ready(agent, ctx),
            other if connecting => {
                let reason = format!("agent sent {:?} before \"ready\"", other.kind());
                self.begin_dying(reason, ctx);
            }
            FromAgent::Reply { reply, body } => self.on_reply(reply, body),
            FromAgent::Ack(ack) => self.on_transfer_frame(ack.id, CallEvent::Ack(ack)),
            FromAgent::Chunk { chunk, body } => {
                self.on_transfer_frame(chunk.id, CallEvent::Chunk(chunk, body))
            }
            FromAgent::Log(log) => self.on_log(&log),
            FromAgent::Heartbeat(interp) => self.interpreters.heard_from(interp),
            FromAgent::Spawned(spawned) if ready => self.on_interp_spawned(spawned),
            FromAgent::InterpLost(lost) if ready => self.on_interp_lost(lost),
            FromAgent::RouteData { route, body } => {
                if !self.routes.deliver(route, body) {
                    debug!(target = %self.name, route, "dropping output of a closed route");
                }
            }
            FromAgent::RouteClosed(closed) => {
                let route = closed.route;
                debug!(target = %self.name, route, status = ?closed.status, "route closed");
                self.routes.closed(closed);
            }
            FromAgent::Stopped(interp) => {
                debug!(target = %self.name, ?interp, "interpreter stopped")
            }
            FromAgent::Malformed { kind, why } => {
                warn!(target = %self.name, "ignoring a malformed {kind:?} frame from the agent: {why}")
            }
            other => warn!(target = %self.name, "ignoring agent frame of type {:?}", other.kind()),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.link.stdout_closed = true;
        self.begin_dying(AGENT_CLOSED_OUTPUT.into(), ctx);
    }
}

/// Handler for the frames of a streamed call, written behind its call frame while it is in
/// flight.
impl Handler<Relay> for Target {
    type Result = ();

    fn handle(&mut self, msg: Relay, _: &mut Self::Context) {
        let bytes = msg.frames.iter().map(|(_, body)| body.len()).sum();
        if self.interpreters.relay(msg.mux_id, bytes) {
            for (frame, body) in msg.frames {
                self.transmit_relayed(frame, body);
            }
        }
    }
}

/// Handler for DescribeTarget: this target's row, its interpreters' rows, its transfers'.
impl Handler<DescribeTarget> for Target {
    type Result = ResponseFuture<Vec<StatusRow>>;

    fn handle(&mut self, _: DescribeTarget, _: &mut Self::Context) -> Self::Result {
        let mut rows = vec![StatusRow::Target(self.row())];
        rows.extend(self.interpreters.rows(&self.name));
        let asks: Vec<_> = self
            .interpreters
            .streams()
            .into_iter()
            .filter_map(|sink| sink.status)
            .map(|status| status.send(DescribeTransfer))
            .collect();
        Box::pin(async move {
            rows.extend(join_all(asks).await.into_iter().filter_map(Result::ok));
            rows
        })
    }
}

/// Handler for ShutdownTarget.
impl Handler<ShutdownTarget> for Target {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ShutdownTarget, ctx: &mut Self::Context) -> Self::Result {
        if matches!(self.phase, Phase::Dying { finished: true, .. }) {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.on_finished.push(tx);
        if matches!(self.phase, Phase::Ready { .. }) {
            // The login agent stops its become children before it exits.
            self.transmit(ToAgent::Shutdown, Bytes::new());
        }
        if let Some(writer) = self.link.writer.as_mut() {
            writer.close();
        }
        self.begin_dying(msg.reason.into(), ctx);
        Box::pin(async move {
            let _ = tokio::time::timeout(msg.grace, rx).await;
        })
    }
}

/// Handler for Cancel: forget the worker's calls, tell the agent to kill running ones.
impl Handler<Cancel> for Target {
    type Result = ();

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) {
        let wanted =
            |c: &Dispatch| c.session == msg.session && msg.worker_ids.contains(&c.worker_id);
        if let Phase::Connecting { queue, .. } | Phase::Dying { queue, .. } = &mut self.phase {
            queue.retain(|c| !wanted(c));
        }
        let (cancelled, evict) = self.interpreters.cancel(msg.session, &msg.worker_ids);
        for (mux_id, call) in cancelled {
            debug!(target = %self.name, mux_id, op = %call.op, interp = call.interp, "cancelling call");
            let cancel = worker_ipc::CallRef {
                id: mux_id,
                interp: call.interp,
            };
            self.transmit(ToAgent::Cancel(cancel), Bytes::new());
        }
        for (victim, account) in evict {
            self.stop_interpreter(victim, &account, "over MITOGEN_MAX_INTERPRETERS");
        }
    }
}

/// Handler for OpenRoute: a target behind this one wants its transport started here.
impl Handler<OpenRoute> for Target {
    type Result = ();

    fn handle(&mut self, msg: OpenRoute, ctx: &mut Self::Context) {
        match &self.phase {
            Phase::Ready { .. } => self.open_route(msg, ctx),
            Phase::Connecting { .. } => self.routes.wait(msg),
            Phase::Dying { reason, .. } => {
                let why = format!(
                    "via {}: the connection to it is closing ({reason})",
                    self.name
                );
                let _ = msg.reply.send(Err(why));
            }
        }
    }
}

/// Handler for RouteInput: a routed target's bytes go to its transport on this host.
impl Handler<RouteInput> for Target {
    type Result = ();

    fn handle(&mut self, msg: RouteInput, _: &mut Self::Context) {
        if !self.routes.is_open(msg.route) {
            return;
        }
        let route = RouteRef {
            route: msg.route,
            interp: msg.interp,
        };
        match msg.data {
            Some(data) => self.transmit(ToAgent::RouteData(route), data),
            None => self.transmit(ToAgent::RouteClose(route), Bytes::new()),
        }
    }
}
