//! `Target`: one connection to a target: the transport child process (ssh, or a local
//! shell), its framed stdio, and the agent behind it.
//!
//! Lifecycle: *connecting* (waiting for a pool permit, spawning, writing the bootstrap,
//! waiting for the agent's `ready`; calls queue meanwhile) -> *ready* (calls are forwarded
//! through their [`Interpreter`], replies routed back by mux-side id) -> *dead* (every queued
//! or in-flight call gets `unreachable` or `connection_lost`, the Registry forgets this
//! Target and the next call starts a new one).
//!
//! Become interpreters (docs/protocol.md, "Become interpreters"): the first call for an
//! account makes the Target allocate an interpreter id and ask the login agent to `spawn` it.
//! That account's calls follow at once: the login agent holds them until the new interpreter
//! is up, so the first call costs no extra round trip. An [`InterpreterLru`] keeps at most
//! `MITOGEN_MAX_INTERPRETERS` of them, stopping least recently used idle ones. `reset` and
//! the mux's shutdown end the whole connection through [`Shutdown`].

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    os::unix::process::ExitStatusExt,
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{io::FramedWrite, prelude::*};
use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{ChildStderr, ChildStdin, ChildStdout, Command},
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
};
use tokio_util::codec::FramedRead;
use tracing::{debug, error, info, warn};
use worker_ipc::{
    BecomeKey, BecomeSpec, Frame, FrameCodec, FrameError, TargetKey, TargetSpec, Transport,
};

use crate::{
    bootstrap::Bootstrap,
    interpreter::{self, Interpreter, LoginBlobs, Transmit},
    interpreter_lru::InterpreterLru,
    process_groups,
    registry::{Redispatch, TargetGone},
    transfer::{self, Transfer},
    worker_session::CallReply,
};

/// How much of the transport's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// After the transport is found dying, how long to wait for its exit status and the end
/// of its output before killing its process group.
const DYING_GRACE: Duration = Duration::from_secs(2);

/// How long a finished Target keeps redirecting stray calls before it stops.
const LINGER: Duration = Duration::from_millis(500);

/// Id of the login interpreter on the agent link.
const LOGIN_INTERP: u32 = 0;

/// The op the Target answers itself, from the login agent's `ready` frame (its temp dir,
/// home, user, python), once the connection is up.
const INTERPRETER_INFO: &str = "interpreter_info";

/// How much longer than the target's timeout the mux waits for `spawned` before it gives
/// up on a become interpreter itself (the agent should have answered by then).
const SPAWN_SLACK: Duration = Duration::from_secs(5);

/// A call to run on this target.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// The worker's call id, restored in the reply.
    pub worker_id: u64,
    /// The agent op.
    pub op: String,
    /// The op's arguments.
    pub args: Value,
    /// The call's body.
    pub body: Bytes,
    /// Blobs the call needs, already resolved by the Registry.
    pub blobs: Vec<(String, Bytes)>,
    /// The account to run as; `None` = the login interpreter.
    pub become_spec: Option<BecomeSpec>,
    /// The WorkerSession that sent the call, so [`Cancel`] can find its calls.
    pub session: u64,
    /// Where the reply goes.
    pub reply_to: Recipient<CallReply>,
    /// The streamed transfer this call starts (`put_begin`/`fetch_begin`): told where the
    /// call went, and handed the agent's `ack`/`chunk` frames for it.
    pub transfer: Option<Addr<Transfer>>,
    /// The Ansible task the call belongs to, for the actor table.
    pub task: Option<String>,
}

/// A worker went away: its calls here are no longer wanted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Cancel {
    /// The WorkerSession's number ([`Dispatch::session`]).
    pub session: u64,
    /// The worker's ids of the calls to cancel.
    pub worker_ids: Vec<u64>,
}

/// Asks for this target's status rows (itself, then its interpreters).
#[derive(Message)]
#[rtype(result = "Vec<Value>")]
pub struct Describe;

/// Sends the agent `shutdown` and stops, answering when the transport is gone (or after
/// `grace`). Used for the mux's exit and for a worker's `reset`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Why, for the messages of calls that were still running.
    pub reason: &'static str,
    /// How long to wait for the transport to be gone before answering anyway.
    pub grace: Duration,
}

/// The transport process exited (sent by its reaper task).
#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited {
    /// Its exit status, or why it could not be had.
    status: String,
}

/// The transport child, set up and bootstrapped.
struct Spawned {
    /// Held until `ready`, so at most `MITOGEN_POOL_SIZE` targets connect at once.
    permit: Option<OwnedSemaphorePermit>,
    /// The child's pid (also its process group id).
    pid: u32,
    /// The child's stdin, after the bootstrap payload was written to it.
    stdin: ChildStdin,
    /// The child's stdout, where agent frames arrive.
    stdout: ChildStdout,
}

/// Where a Target is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a permit, spawning, or waiting for `ready`.
    Connecting,
    /// The agent answered `ready`.
    Ready,
    /// The transport is going away; waiting for its exit status and output.
    Dying,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Ready => "ready",
            State::Dying => "dead",
        }
    }
}

/// A call forwarded to the agent and not yet answered.
struct InFlight {
    /// The worker's id for it.
    worker_id: u64,
    /// Where the reply goes.
    reply_to: Recipient<CallReply>,
    /// The op, for status and error messages.
    op: String,
    /// When it was forwarded.
    since: Instant,
    /// Which interpreter runs it.
    interp: u32,
    /// The WorkerSession that sent it, for [`Cancel`].
    session: u64,
    /// The streamed transfer it runs, if any.
    transfer: Option<Addr<Transfer>>,
}

/// A become interpreter known to the Target.
struct Account {
    /// Its id on the agent link.
    id: u32,
    /// Set until the agent answers `spawned`: never evicted meanwhile, and failed calls are
    /// answered here if it never comes.
    spawning: bool,
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
    /// The agent payload and command builder.
    bootstrap: Bootstrap,
    /// Connection set-up permits shared by every Target.
    pool: Arc<Semaphore>,
    /// Back-edge to the Registry, told when this Target goes away.
    registry: Recipient<TargetGone>,
    /// Back-edge to the Registry for calls that arrive after this Target began dying:
    /// they are retried on a fresh Target rather than failed.
    redispatch: Recipient<Redispatch>,
    /// Lifecycle state.
    state: State,
    /// When `state` last changed, for status.
    since: Instant,
    /// Whether `ready` was ever received: failures before it are `unreachable`, after it
    /// `connection_lost`.
    was_ready: bool,
    /// The pool permit, dropped at `ready` or death.
    permit: Option<OwnedSemaphorePermit>,
    /// Transport child pid (= its process group), once spawned.
    pid: Option<u32>,
    /// The agent link's write side (the child's stdin).
    writer: Option<FramedWrite<Frame, ChildStdin, FrameCodec>>,
    /// The last [`STDERR_TAIL`] bytes of the child's stderr, filled by a reader task.
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The `ready` frame's header (agent pid, python, user...), for status.
    agent: Option<Map<String, Value>>,
    /// Calls received before `ready`.
    queue: Vec<Dispatch>,
    /// Calls sent to the agent, by mux-side id.
    in_flight: HashMap<u64, InFlight>,
    /// The next mux-side call id.
    next_id: u64,
    /// Interpreters by agent-link id (the login one and every become one).
    interpreters: HashMap<u32, Addr<Interpreter>>,
    /// Become interpreters by account.
    accounts: HashMap<BecomeKey, Account>,
    /// The account of each become interpreter id, to route `spawned`, `interp_lost` and
    /// replies back to its entry.
    account_of: HashMap<u32, BecomeKey>,
    /// Which become interpreters to stop, and when (`MITOGEN_MAX_INTERPRETERS`).
    lru: InterpreterLru<BecomeKey>,
    /// The id the next become interpreter gets; ids are never reused on one connection, so
    /// a late frame from a stopped interpreter cannot be mistaken for a new one's.
    next_interp: u32,
    /// Mux ids of cancelled calls: their replies may still come and are dropped quietly.
    cancelled: HashSet<u64>,
    /// Why the Target is dying, once it is.
    failure: Option<String>,
    /// The transport's exit status, once known.
    exit: Option<String>,
    /// Whether the agent's stdout reached EOF (or failed).
    stdout_closed: bool,
    /// Set when the mux itself killed the transport (timeout, a bad frame, it would not
    /// exit): its exit status then says nothing about what went wrong.
    killed_by_mux: bool,
    /// Set once queued and in-flight calls were failed and the actor is about to stop.
    finalized: bool,
    /// Answered when the Target is finished, for [`Shutdown`].
    on_finished: Vec<oneshot::Sender<()>>,
    /// Blobs the login agent holds, shared with every interpreter of this target.
    login_blobs: LoginBlobs,
}

impl Target {
    /// A Target for `spec`, not yet started.
    pub fn new(
        serial: u64,
        spec: TargetSpec,
        bootstrap: Bootstrap,
        pool: Arc<Semaphore>,
        registry: Recipient<TargetGone>,
        redispatch: Recipient<Redispatch>,
        max_interpreters: usize,
    ) -> Target {
        let key = spec.key();
        let name = spec.name.clone().unwrap_or_else(|| key.to_string());
        Target {
            login_blobs: LoginBlobs::default(),
            serial,
            key,
            name,
            spec,
            bootstrap,
            pool,
            registry,
            redispatch,
            state: State::Connecting,
            since: Instant::now(),
            was_ready: false,
            permit: None,
            pid: None,
            writer: None,
            stderr: Arc::new(Mutex::new(Vec::new())),
            agent: None,
            queue: Vec::new(),
            in_flight: HashMap::new(),
            next_id: 1,
            interpreters: HashMap::new(),
            accounts: HashMap::new(),
            account_of: HashMap::new(),
            lru: InterpreterLru::new(max_interpreters),
            next_interp: LOGIN_INTERP + 1,
            cancelled: HashSet::new(),
            failure: None,
            exit: None,
            stdout_closed: false,
            killed_by_mux: false,
            finalized: false,
            on_finished: Vec::new(),
        }
    }

    /// Acquires a permit, spawns the transport and writes the bootstrap payload.
    async fn connect(
        pool: Arc<Semaphore>,
        argv: Vec<String>,
        bootstrap: Bootstrap,
        stderr_tail: Arc<Mutex<Vec<u8>>>,
        addr: Addr<Target>,
        name: String,
        timeout: Duration,
    ) -> Result<Spawned, String> {
        let permit = pool.acquire_owned().await.ok();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|err| format!("cannot run {:?}: {err}", argv[0]))?;
        let pid = child.id().unwrap_or_default();
        process_groups::register(pid);
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("transport child has no stdio pipes".into());
        };
        let stderr_task = tokio::spawn(collect_stderr(stderr, stderr_tail, name.clone()));
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe_status(status),
                Err(err) => format!("exit status unknown ({err})"),
            };
            // Give the stderr reader a moment to drain what the child wrote last.
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_task).await;
            addr.do_send(ChildExited { status });
        });
        match tokio::time::timeout(timeout, stdin.write_all(bootstrap.payload())).await {
            Ok(Ok(())) => {}
            // The child died early (ssh could not connect); its stdout EOF and stderr
            // tell the story, so carry on and let that path report it.
            Ok(Err(err)) => debug!(target = %name, "bootstrap write failed: {err}"),
            Err(_) => debug!(target = %name, "bootstrap write timed out"),
        }
        Ok(Spawned {
            permit,
            pid,
            stdin,
            stdout,
        })
    }

    fn on_spawned(&mut self, spawned: Result<Spawned, String>, ctx: &mut Context<Self>) {
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                self.stdout_closed = true;
                self.exit = Some("not started".into());
                self.begin_dying(err, ctx);
                return;
            }
        };
        if self.state != State::Connecting {
            // Shut down while the child was being spawned: its output is not wanted.
            self.pid = Some(spawned.pid);
            self.stdout_closed = true;
            process_groups::kill(spawned.pid);
            return;
        }
        debug!(target = %self.name, pid = spawned.pid, "transport started");
        self.permit = spawned.permit;
        self.pid = Some(spawned.pid);
        self.writer = Some(FramedWrite::new(spawned.stdin, FrameCodec::new(), ctx));
        Target::add_stream(FramedRead::new(spawned.stdout, FrameCodec::new()), ctx);
        self.send_calls_before_ready(ctx);
    }

    /// Once the agent link is open, sends the queue's leading calls that may go before
    /// `ready`; the rest, and everything behind them, waits for it (calls keep their order).
    fn send_calls_before_ready(&mut self, ctx: &mut Context<Self>) {
        if self.writer.is_none() {
            return;
        }
        while self.queue.first().is_some_and(Target::goes_before_ready) {
            let call = self.queue.remove(0);
            self.send_call(LOGIN_INTERP, call, ctx);
        }
    }

    /// Whether `call` may go to the login agent right behind the bootstrap payload, before
    /// its `ready`: the agent reads it once it is up, which saves the round trip of waiting
    /// for `ready`. Calls answered from `ready`, calls for a become account and streams wait.
    fn goes_before_ready(call: &Dispatch) -> bool {
        call.become_spec.is_none() && call.op != INTERPRETER_INFO && call.transfer.is_none()
    }

    fn on_ready(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        info!(target = %self.name, agent = ?frame.header, "agent ready");
        self.state = State::Ready;
        self.since = Instant::now();
        self.was_ready = true;
        self.permit = None;
        self.agent = Some(frame.header);
        for call in std::mem::take(&mut self.queue) {
            self.forward(call, ctx);
        }
    }

    /// Sends `call` to its interpreter (state must be Ready), spawning a become
    /// interpreter for its account first if there is none.
    fn forward(&mut self, call: Dispatch, ctx: &mut Context<Self>) {
        if call.op == INTERPRETER_INFO && call.become_spec.is_none() {
            // What the login agent said when it came up: no round trip to the target.
            let info = self.agent.clone().unwrap_or_default();
            call.reply_to
                .do_send(CallReply::ok(call.worker_id, Value::Object(info)));
            return;
        }
        let Some(become_spec) = call.become_spec.clone() else {
            self.send_call(LOGIN_INTERP, call, ctx);
            return;
        };
        let key = become_spec.key();
        if let Some(account) = self.accounts.get_mut(&key) {
            self.lru.start_call(&key);
            let id = account.id;
            self.send_call(id, call, ctx);
            return;
        }
        let admission = self.lru.admit(key.clone());
        for victim in admission.evict {
            self.stop_account(&victim, "least recently used");
        }
        if admission.over_limit {
            warn!(
                target = %self.name,
                account = %key,
                live = self.lru.len(),
                "every become interpreter is busy: going over MITOGEN_MAX_INTERPRETERS; \
                 idle ones are stopped as calls finish"
            );
        }
        self.lru.start_call(&key);
        let id = self.next_interp;
        self.next_interp += 1;
        let addr = Interpreter::become_account(
            id,
            self.name.clone(),
            key.to_string(),
            ctx.address().recipient(),
            self.login_blobs.clone(),
        )
        .start();
        self.interpreters.insert(id, addr);
        self.account_of.insert(id, key.clone());
        // The password rides in this frame and nowhere else; the log line names the
        // account only.
        debug!(target = %self.name, interp = id, account = %key, "spawning become interpreter");
        let mut frame = Frame::new("spawn")
            .with("interp", id)
            .with("become", become_spec.to_agent_json())
            .with("timeout", self.spec.timeout);
        // The local connection's tasks start in the playbook's directory: the become tool is
        // started there, as vanilla's local plugin starts it, so that an account that may
        // not enter it still runs there.
        if let Some(cwd) = call.args.get("cwd").filter(|cwd| cwd.is_string()) {
            frame = frame.with("cwd", cwd.clone());
        }
        self.transmit(frame);
        self.accounts
            .insert(key.clone(), Account { id, spawning: true });
        self.send_call(id, call, ctx);
        let patience =
            Duration::from_secs_f64(self.spec.timeout.clamp(0.1, 86_400.0)) + SPAWN_SLACK;
        ctx.run_later(patience, move |act, _| {
            if act.account_of.get(&id) == Some(&key)
                && act.accounts.get(&key).is_some_and(|a| a.spawning)
            {
                let secs = patience.as_secs_f64();
                act.fail_spawn(
                    id,
                    "become_failed",
                    &format!("the agent did not answer within {secs}s"),
                );
                act.transmit(Frame::new("stop").with("interp", id));
            }
        });
    }

    /// Sends `call` to interpreter `interp` (which is ready) and records it in flight.
    fn send_call(&mut self, interp: u32, call: Dispatch, ctx: &mut Context<Self>) {
        let mux_id = self.next_id;
        self.next_id += 1;
        let frame = Frame::new("call")
            .with("id", mux_id)
            .with("interp", interp)
            .with("op", call.op.clone())
            .with("args", call.args)
            .with_body(call.body);
        let interpreter = self
            .interpreters
            .entry(interp)
            .or_insert_with(|| {
                Interpreter::login(
                    self.name.clone(),
                    ctx.address().recipient(),
                    self.login_blobs.clone(),
                )
                .start()
            })
            .clone();
        interpreter.do_send(interpreter::Run {
            mux_id,
            op: call.op.clone(),
            task: call.task.clone(),
            frame,
            blobs: call.blobs,
        });
        if let Some(transfer) = &call.transfer {
            // After Run: the transfer's frames go through the same Interpreter, behind the
            // call frame.
            transfer.do_send(transfer::Attached {
                mux_id,
                interp,
                link: interpreter.clone().recipient(),
            });
        }
        self.in_flight.insert(
            mux_id,
            InFlight {
                worker_id: call.worker_id,
                reply_to: call.reply_to,
                op: call.op,
                since: Instant::now(),
                interp,
                session: call.session,
                transfer: call.transfer,
            },
        );
    }

    /// Forgets become interpreter `key` (its actor stops with its last address).
    fn forget_account(&mut self, key: &BecomeKey) -> Option<Account> {
        let account = self.accounts.remove(key)?;
        self.account_of.remove(&account.id);
        self.interpreters.remove(&account.id);
        self.lru.remove(key);
        Some(account)
    }

    /// Stops the idle become interpreter `key` on the target.
    fn stop_account(&mut self, key: &BecomeKey, why: &str) {
        if let Some(account) = self.forget_account(key) {
            debug!(target = %self.name, interp = account.id, account = %key, why, "stopping become interpreter");
            self.transmit(Frame::new("stop").with("interp", account.id));
        }
    }

    /// "sudo:postgres on web1".
    fn account_label(&self, key: &BecomeKey) -> String {
        format!("{key} on {}", self.name)
    }

    /// A become interpreter could not be started: fails the calls sent to it and forgets it
    /// so the next call for the account tries again.
    fn fail_spawn(&mut self, id: u32, kind: &str, message: &str) {
        let Some(key) = self.account_of.get(&id).cloned() else {
            return;
        };
        let text = format!("become {}: {message}", self.account_label(&key));
        warn!(target = %self.name, interp = id, "{text}");
        let failed = self.take_calls_of(id);
        // The agent answers each of them too, once it has given up on the interpreter.
        self.cancelled
            .extend(failed.iter().map(|(mux_id, _)| *mux_id));
        for (_, call) in failed {
            call.reply_to
                .do_send(CallReply::error(call.worker_id, kind, text.clone()));
        }
        self.forget_account(&key);
    }

    /// Removes interpreter `id`'s calls from those in flight, with their mux ids, in the
    /// order they were sent.
    fn take_calls_of(&mut self, id: u32) -> Vec<(u64, InFlight)> {
        let mut ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, call)| call.interp == id)
            .map(|(mux_id, _)| *mux_id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|mux_id| Some((mux_id, self.in_flight.remove(&mux_id)?)))
            .collect()
    }

    /// `{"type": "spawned", "interp": N, "ok": ...}` from the login agent.
    fn on_interp_spawned(&mut self, frame: &Frame) {
        let Some(id) = frame.header.get("interp").and_then(Value::as_u64) else {
            warn!(target = %self.name, "\"spawned\" without an interp id");
            return;
        };
        let id = id as u32;
        let Some(key) = self.account_of.get(&id).cloned() else {
            // Given up on (or reset) meanwhile: make sure it does not linger.
            debug!(target = %self.name, interp = id, "\"spawned\" for an unknown interpreter");
            if frame.header.get("ok") == Some(&Value::Bool(true)) {
                self.transmit(Frame::new("stop").with("interp", id));
            }
            return;
        };
        if frame.header.get("ok") != Some(&Value::Bool(true)) {
            let error = frame.header.get("error");
            let kind = error
                .and_then(|e| e.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or("become_failed")
                .to_owned();
            let message = error
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("the agent could not start it")
                .to_owned();
            self.fail_spawn(id, &kind, &message);
            return;
        }
        let pid = frame
            .header
            .get("ready")
            .and_then(|r| r.get("pid"))
            .and_then(Value::as_u64);
        info!(target = %self.name, interp = id, account = %key, ?pid, "become interpreter ready");
        if let Some(addr) = self.interpreters.get(&id) {
            addr.do_send(interpreter::Spawned { pid });
        }
        if let Some(account) = self.accounts.get_mut(&key) {
            account.spawning = false;
        }
    }

    /// `{"type": "interp_lost", "interp": N, "message": ...}`: child N exited.
    fn on_interp_lost(&mut self, frame: &Frame) {
        let Some(id) = frame.header.get("interp").and_then(Value::as_u64) else {
            return;
        };
        let id = id as u32;
        let why = frame
            .header
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("it exited")
            .to_owned();
        let Some(key) = self.account_of.get(&id).cloned() else {
            debug!(target = %self.name, interp = id, %why, "lost an interpreter already forgotten");
            return;
        };
        let message = format!("connection to {} lost: {why}", self.account_label(&key));
        let lost = self.take_calls_of(id);
        if lost.is_empty() {
            debug!(target = %self.name, interp = id, "{message}");
        } else {
            warn!(target = %self.name, interp = id, "{message}");
        }
        for (_, call) in lost {
            let text = format!("{message} (while running {})", call.op);
            call.reply_to
                .do_send(CallReply::error(call.worker_id, "connection_lost", text));
        }
        self.forget_account(&key);
    }

    /// A call of interpreter `interp` is over: the LRU may now stop idle ones.
    fn call_done(&mut self, interp: u32) {
        if interp == LOGIN_INTERP {
            return;
        }
        if let Some(key) = self.account_of.get(&interp).cloned() {
            for victim in self.lru.finish_call(&key) {
                self.stop_account(&victim, "over MITOGEN_MAX_INTERPRETERS");
            }
        }
    }

    fn on_reply(&mut self, mut frame: Frame) {
        let Some(mux_id) = frame.header.get("id").and_then(Value::as_u64) else {
            warn!(target = %self.name, "agent reply without an id");
            return;
        };
        let Some(call) = self.in_flight.remove(&mux_id) else {
            if self.cancelled.remove(&mux_id) {
                debug!(target = %self.name, mux_id, "dropping the reply of a cancelled call");
            } else {
                warn!(target = %self.name, mux_id, "agent reply for an unknown call");
            }
            return;
        };
        if let Some(interp) = self.interpreters.get(&call.interp) {
            interp.do_send(interpreter::Finished { mux_id });
        }
        self.call_done(call.interp);
        frame.header.insert("id".into(), call.worker_id.into());
        call.reply_to.do_send(CallReply {
            id: call.worker_id,
            frame,
        });
    }

    /// An `ack` or `chunk` of a streamed transfer: to its Transfer.
    fn on_transfer_frame(&self, frame: Frame) {
        let mux_id = frame.header.get("id").and_then(Value::as_u64);
        let transfer = mux_id
            .and_then(|id| self.in_flight.get(&id))
            .and_then(|call| call.transfer.as_ref());
        match transfer {
            Some(transfer) => transfer.do_send(transfer::FromAgent { frame }),
            // Cancelled or failed meanwhile: the agent stops on the cancel.
            None => {
                debug!(target = %self.name, ?mux_id, kind = frame.kind(), "dropping a frame of a finished transfer")
            }
        }
    }

    fn on_log(&self, frame: &Frame) {
        let message = frame
            .header
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("");
        match frame.header.get("level").and_then(Value::as_str) {
            Some("error") => error!(target = %self.name, "agent: {message}"),
            Some("warning") => warn!(target = %self.name, "agent: {message}"),
            Some("info") => info!(target = %self.name, "agent: {message}"),
            _ => debug!(target = %self.name, "agent: {message}"),
        }
    }

    /// Marks the transport as going away: the Registry forgets this Target now, queued and
    /// in-flight calls are failed once the exit status and stderr are in (or after
    /// [`DYING_GRACE`], when the process group is killed).
    fn begin_dying(&mut self, reason: String, ctx: &mut Context<Self>) {
        if self.state == State::Dying {
            self.try_finalize(ctx);
            return;
        }
        debug!(target = %self.name, %reason, "transport going away");
        self.state = State::Dying;
        self.since = Instant::now();
        self.failure = Some(reason);
        self.permit = None;
        self.registry.do_send(TargetGone {
            key: self.key.clone(),
            serial: self.serial,
        });
        ctx.run_later(DYING_GRACE, |act, ctx| {
            if let Some(pid) = act.pid {
                act.killed_by_mux |= act.exit.is_none();
                process_groups::kill(pid);
            }
            // The reaper reports the kill promptly; if even that does not come, give up.
            ctx.run_later(Duration::from_millis(500), |act, ctx| act.finalize(ctx));
        });
        self.try_finalize(ctx);
    }

    fn try_finalize(&mut self, ctx: &mut Context<Self>) {
        if self.exit.is_some() && self.stdout_closed {
            self.finalize(ctx);
        }
    }

    /// Fails every outstanding call, kills what is left of the transport and stops.
    fn finalize(&mut self, ctx: &mut Context<Self>) {
        if self.finalized {
            return;
        }
        self.finalized = true;
        if let Some(pid) = self.pid {
            process_groups::kill(pid);
        }
        let summary = self.key.to_string();
        let who = if summary == self.name {
            summary
        } else {
            format!("{} ({summary})", self.name)
        };
        let detail = self.what_ended();
        let (kind, message) = if self.was_ready {
            (
                "connection_lost",
                format!("connection to {who} lost: {detail}"),
            )
        } else {
            ("unreachable", format!("cannot connect to {who}: {detail}"))
        };
        if !self.queue.is_empty() || !self.in_flight.is_empty() {
            warn!(target = %self.name, "{message}");
        } else {
            debug!(target = %self.name, "{message}");
        }
        for call in self.queue.drain(..) {
            call.reply_to
                .do_send(CallReply::error(call.worker_id, kind, message.clone()));
        }
        self.accounts.clear();
        self.account_of.clear();
        for (_, call) in self.in_flight.drain() {
            // A call sent before `ready` (goes_before_ready) never reached a running agent.
            let reply = if self.was_ready {
                let msg = format!("{message} (while running {})", call.op);
                CallReply::error(call.worker_id, "connection_lost", msg)
            } else {
                CallReply::error(call.worker_id, kind, message.clone())
            };
            call.reply_to.do_send(reply);
        }
        for tx in self.on_finished.drain(..) {
            let _ = tx.send(());
        }
        // Stay alive a moment so calls the Registry sent before it processed TargetGone
        // are redispatched rather than dropped with the mailbox.
        ctx.run_later(LINGER, |_, ctx| ctx.stop());
    }

    /// What ended the connection, for the messages of the calls it fails: which process
    /// died and how, then what the transport last wrote to stderr.
    fn what_ended(&self) -> String {
        let reason = self.failure.as_deref().unwrap_or("closed");
        let transport = match self.spec.transport {
            Transport::Ssh => "ssh",
            // `/bin/sh -c 'exec python ...'`: the child is the interpreter itself.
            Transport::Local => "the local interpreter",
        };
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let status = match (&self.exit, self.killed_by_mux) {
            (_, true) => "killed by ferrogen-mux".to_owned(),
            (Some(status), false) => status.clone(),
            (None, false) => "still running, killed".to_owned(),
        };
        // The agent's stdout ending, or the transport exiting, on its own: say which end died.
        let on_its_own =
            !self.killed_by_mux && matches!(reason, "agent closed its output" | "transport exited");
        let agent_pid = self
            .agent
            .as_ref()
            .and_then(|a| a.get("pid"))
            .and_then(Value::as_u64);
        let mut detail = match (on_its_own, agent_pid, self.spec.transport) {
            (true, _, _) if status.starts_with("killed by signal") => {
                format!("{transport}{pid} was {status}")
            }
            // ssh itself ended normally: the remote end went away.
            (true, Some(agent), Transport::Ssh) => format!(
                "the interpreter on the target (pid {agent}) died or its connection closed \
                 ({transport} {status})"
            ),
            (true, _, _) => format!("{transport}{pid} ended: {status}"),
            (false, _, _) => format!("{reason}; {transport}{pid} {status}"),
        };
        let stderr = String::from_utf8_lossy(&self.stderr.lock()).into_owned();
        // ssh's note about adding the host key is noise next to the real error.
        let stderr: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
            .collect();
        match stderr.as_slice() {
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

    fn transmit(&mut self, frame: Frame) {
        match self.writer.as_mut() {
            Some(writer) => writer.write(frame),
            None => warn!(target = %self.name, "dropping frame: agent link not open"),
        }
    }
}

impl Actor for Target {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let timeout = Duration::from_secs_f64(self.spec.timeout.clamp(0.1, 86_400.0));
        let argv = self.bootstrap.argv(&self.spec);
        debug!(target = %self.name, ?argv, "connecting");
        Target::connect(
            self.pool.clone(),
            argv,
            self.bootstrap.clone(),
            self.stderr.clone(),
            ctx.address(),
            self.name.clone(),
            timeout,
        )
        .into_actor(self)
        .then(move |res, act, ctx| {
            act.on_spawned(res, ctx);
            // The timeout covers spawning and bootstrap; time spent waiting for a pool
            // permit does not count.
            ctx.run_later(timeout, move |act, ctx| {
                if act.state == State::Connecting {
                    if let Some(pid) = act.pid {
                        act.killed_by_mux = true;
                        process_groups::kill(pid);
                    }
                    let secs = timeout.as_secs_f64();
                    act.begin_dying(format!("agent did not start within {secs}s"), ctx);
                }
            });
            fut::ready(())
        })
        .spawn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(pid) = self.pid {
            process_groups::kill(pid);
        }
        debug!(target = %self.name, "target stopped");
    }
}

/// Handler for Dispatch.
impl Handler<Dispatch> for Target {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Self::Context) {
        match self.state {
            State::Ready => self.forward(msg, ctx),
            State::Connecting => {
                self.queue.push(msg);
                self.send_calls_before_ready(ctx);
            }
            // The Registry forgot this Target when it began dying; this call raced with
            // that and is retried on a new connection.
            State::Dying => self.redispatch.do_send(Redispatch {
                spec: self.spec.clone(),
                call: msg,
            }),
        }
    }
}

/// Handler for frames from the agent.
impl StreamHandler<Result<Frame, FrameError>> for Target {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Self::Context) {
        let frame = match item {
            Ok(frame) => frame,
            Err(err) => {
                self.stdout_closed = true;
                if let Some(pid) = self.pid {
                    self.killed_by_mux = true;
                    process_groups::kill(pid);
                }
                self.begin_dying(format!("bad frame from agent: {err}"), ctx);
                return;
            }
        };
        match (self.state, frame.kind()) {
            (State::Connecting, "ready") => self.on_ready(frame, ctx),
            (State::Connecting, kind) => {
                let reason = format!("agent sent {kind:?} before \"ready\"");
                self.begin_dying(reason, ctx);
            }
            (_, "reply") => self.on_reply(frame),
            (_, "ack" | "chunk") => self.on_transfer_frame(frame),
            (_, "log") => self.on_log(&frame),
            (State::Ready, "spawned") => self.on_interp_spawned(&frame),
            (State::Ready, "interp_lost") => self.on_interp_lost(&frame),
            (_, "stopped") => {
                debug!(target = %self.name, interp = ?frame.header.get("interp"), "interpreter stopped")
            }
            (_, kind) => warn!(target = %self.name, "ignoring agent frame of type {kind:?}"),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.stdout_closed = true;
        self.begin_dying("agent closed its output".into(), ctx);
    }
}

/// Handler for frames from an Interpreter.
impl Handler<Transmit> for Target {
    type Result = ();

    fn handle(&mut self, msg: Transmit, _: &mut Self::Context) {
        for frame in msg.frames {
            self.transmit(frame);
        }
    }
}

/// Handler for ChildExited.
impl Handler<ChildExited> for Target {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        debug!(target = %self.name, status = %msg.status, "transport exited");
        self.exit = Some(msg.status);
        // Whatever the transport left running in its group is orphaned: end it, so the
        // agent's stdout reaches EOF (after the frames already in the pipe are read).
        if let Some(pid) = self.pid {
            process_groups::kill(pid);
        }
        self.begin_dying("transport exited".into(), ctx);
    }
}

/// Handler for Describe.
impl Handler<Describe> for Target {
    type Result = ResponseFuture<Vec<Value>>;

    fn handle(&mut self, _: Describe, _: &mut Self::Context) -> Self::Result {
        let mut calls: Vec<Value> = self
            .in_flight
            .iter()
            .map(|(mux_id, c)| {
                json!({"id": c.worker_id, "mux_id": mux_id, "op": c.op, "interp": c.interp,
                       "elapsed": c.since.elapsed().as_secs_f64()})
            })
            .collect();
        calls.sort_by(|a, b| a["mux_id"].as_u64().cmp(&b["mux_id"].as_u64()));
        let doing = match (self.state, self.pid) {
            (State::Connecting, None) => "waiting for a connection slot (MITOGEN_POOL_SIZE)",
            (State::Connecting, Some(_)) => "connecting: authenticating and starting the agent",
            (State::Ready, _) if self.in_flight.is_empty() => "idle",
            (State::Ready, _) => "serving calls",
            (State::Dying, _) => "closing",
        };
        let row = json!({
            "kind": "target",
            "name": self.name,
            "key": self.key.to_string(),
            "state": self.state.as_str(),
            "doing": doing,
            "interpreters": self.lru.len(),
            "since": self.since.elapsed().as_secs_f64(),
            "pid": self.pid,
            "agent_pid": self.agent.as_ref().and_then(|a| a.get("pid")).cloned(),
            "queued": self.queue.len(),
            "calls": calls,
        });
        let mut interps: Vec<_> = self
            .interpreters
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        interps.sort_by_key(|(id, _)| *id);
        let asks: Vec<_> = interps
            .into_iter()
            .map(|(_, addr)| addr.send(interpreter::Describe))
            .collect();
        let mut transfers: Vec<_> = self
            .in_flight
            .iter()
            .filter_map(|(mux_id, c)| c.transfer.clone().map(|t| (*mux_id, t)))
            .collect();
        transfers.sort_by_key(|(mux_id, _)| *mux_id);
        let transfer_asks: Vec<_> = transfers
            .into_iter()
            .map(|(_, addr)| addr.send(transfer::Describe))
            .collect();
        Box::pin(async move {
            let mut rows = vec![row];
            rows.extend(join_all(asks).await.into_iter().filter_map(Result::ok));
            rows.extend(
                join_all(transfer_asks)
                    .await
                    .into_iter()
                    .filter_map(Result::ok),
            );
            rows
        })
    }
}

/// Handler for Shutdown.
impl Handler<Shutdown> for Target {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.finalized {
            return Box::pin(async {});
        }
        self.on_finished.push(tx);
        if self.state == State::Ready {
            // The login agent stops its become children before it exits.
            self.transmit(Frame::new("shutdown"));
        }
        if let Some(writer) = self.writer.as_mut() {
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
        let wanted = |session: u64, id: u64| session == msg.session && msg.worker_ids.contains(&id);
        self.queue.retain(|c| !wanted(c.session, c.worker_id));
        let running: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, c)| wanted(c.session, c.worker_id))
            .map(|(mux_id, _)| *mux_id)
            .collect();
        for mux_id in running {
            let Some(call) = self.in_flight.remove(&mux_id) else {
                continue;
            };
            debug!(target = %self.name, mux_id, op = %call.op, interp = call.interp, "cancelling call");
            self.cancelled.insert(mux_id);
            if let Some(addr) = self.interpreters.get(&call.interp) {
                addr.do_send(interpreter::Cancel { mux_id });
            }
            self.call_done(call.interp);
        }
    }
}

impl actix::io::WriteHandler<FrameError> for Target {
    fn error(&mut self, err: FrameError, _: &mut Self::Context) -> Running {
        // A broken stdin means the transport is going; stdout EOF reports it.
        debug!(target = %self.name, "cannot write to agent: {err}");
        Running::Stop
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The write side closing does not end the Target: replies may still come.
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes of the transport's stderr and logs each chunk.
async fn collect_stderr(mut stderr: ChildStderr, tail: Arc<Mutex<Vec<u8>>>, name: String) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                debug!(target = %name, "transport stderr: {}", String::from_utf8_lossy(&buf[..n]).trim_end());
                let mut tail = tail.lock();
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    let excess = tail.len() - STDERR_TAIL;
                    tail.drain(..excess);
                }
            }
        }
    }
}

/// "exit status 255" / "killed by signal 9".
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
