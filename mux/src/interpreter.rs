//! `Interpreter`: one persistent interpreter behind a [`Target`]: id 0 is the login
//! interpreter, other ids are become interpreters (one per account, children of the login
//! agent, spawned and evicted by the Target).
//!
//! It remembers which blobs were already sent to its interpreter, so each crosses the link
//! once, and what it is running, for the status table. Every frame addressed to its
//! interpreter (blobs, calls, cancels) goes through it, so they reach the agent in order.
//!
//! [`Target`]: crate::target::Target

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use actix::prelude::*;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use worker_ipc::Frame;

/// Hashes of the blobs the login agent holds. Every blob for any interpreter of a target passes
/// through the login agent, which keeps a copy, so after the first crossing a blob travels as a
/// reference the login agent fills in. Shared by a Target's interpreters; a `parking_lot` mutex
/// because it is only touched for a set lookup inside handlers, never across an await.
pub type LoginBlobs = Arc<Mutex<HashSet<String>>>;

/// A call running on an interpreter, as the status table shows it.
#[derive(Debug)]
struct InFlight {
    /// The agent op.
    op: String,
    /// The Ansible task, when the worker named it.
    task: Option<String>,
    /// When it started.
    since: Instant,
    /// Bytes it has carried so far (body and relayed transfer frames).
    bytes: usize,
}

/// Frames for the Target to write to the agent link, in order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Transmit {
    /// The frames, written back to back.
    pub frames: Vec<Frame>,
}

/// Run one call on this interpreter.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Run {
    /// The mux-side call id (unique per Target).
    pub mux_id: u64,
    /// The op, for status.
    pub op: String,
    /// The Ansible task it belongs to, if the worker said, for status.
    pub task: Option<String>,
    /// The complete agent-link `call` frame.
    pub frame: Frame,
    /// Blobs the call needs, by hash.
    pub blobs: Vec<(String, Bytes)>,
}

/// Frames of a streamed transfer (docs/protocol.md, "File transfer") for call `mux_id`,
/// written after that call's frame; dropped once the call is over (cancelled or answered).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Relay {
    /// The transfer's mux-side call id.
    pub mux_id: u64,
    /// The frames (`chunk`, `put_end`, `ack`, `cancel`), already addressed.
    pub frames: Vec<Frame>,
}

/// The agent answered `spawned` with `ok: true`: the interpreter can take calls.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Spawned {
    /// The become interpreter's pid on the target, for status.
    pub pid: Option<u64>,
}

/// A call of this interpreter is no longer wanted (its worker went away): tell the agent
/// to kill the task, after the call frame itself (same path, so in order).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Cancel {
    /// The mux-side call id.
    pub mux_id: u64,
}

/// A call of this interpreter was answered or lost.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Finished {
    /// The mux-side call id.
    pub mux_id: u64,
}

/// Asks for this interpreter's status row.
#[derive(Message, Debug)]
#[rtype(result = "Value")]
pub struct Describe;

/// Where an interpreter is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `spawn` sent, waiting for `spawned` (become interpreters only).
    Spawning,
    /// Taking calls.
    Ready,
}

/// One remote interpreter.
pub struct Interpreter {
    /// Interpreter id on the agent link (0 = login interpreter).
    id: u32,
    /// The owning target's name, for status rows.
    target_name: String,
    /// The account (`sudo:postgres`) of a become interpreter; `None` for the login one.
    account: Option<String>,
    /// Spawning until the agent says `spawned` (the login interpreter starts Ready).
    state: State,
    /// Its process id on the target, once known.
    pid: Option<u64>,
    /// When it was created, for the status table.
    created: Instant,
    /// The owning Target's write path; a `Recipient` so this file does not depend on it.
    link: Recipient<Transmit>,
    /// Hashes of blobs already sent to this interpreter.
    sent_blobs: HashSet<String>,
    /// Blobs the login agent already holds (shared with the target's other interpreters).
    login_blobs: LoginBlobs,
    /// Calls running on it: mux id -> (op, start, body bytes).
    in_flight: HashMap<u64, InFlight>,
    /// When a call last started or finished here (or it was created): "last used" in the
    /// status table.
    last_used: Instant,
}

impl Interpreter {
    /// The login interpreter (id 0), ready as soon as its Target is.
    pub fn login(
        target_name: String,
        link: Recipient<Transmit>,
        login_blobs: LoginBlobs,
    ) -> Interpreter {
        Interpreter::new(0, target_name, None, State::Ready, link, login_blobs)
    }

    /// A become interpreter `id` for `account`, spawning until told [`Spawned`].
    pub fn become_account(
        id: u32,
        target_name: String,
        account: String,
        link: Recipient<Transmit>,
        login_blobs: LoginBlobs,
    ) -> Interpreter {
        Interpreter::new(
            id,
            target_name,
            Some(account),
            State::Spawning,
            link,
            login_blobs,
        )
    }

    fn new(
        id: u32,
        target_name: String,
        account: Option<String>,
        state: State,
        link: Recipient<Transmit>,
        login_blobs: LoginBlobs,
    ) -> Interpreter {
        Interpreter {
            id,
            target_name,
            account,
            state,
            pid: None,
            created: Instant::now(),
            link,
            sent_blobs: HashSet::new(),
            login_blobs,
            in_flight: HashMap::new(),
            last_used: Instant::now(),
        }
    }
}

impl Actor for Interpreter {
    type Context = Context<Self>;
}

/// Handler for Run: blobs not yet sent, then the call.
impl Handler<Run> for Interpreter {
    type Result = ();

    fn handle(&mut self, msg: Run, _: &mut Self::Context) {
        let mut frames = Vec::with_capacity(msg.blobs.len() + 1);
        for (hash, content) in msg.blobs {
            if self.sent_blobs.insert(hash.clone()) {
                let frame = Frame::new("blob")
                    .with("hash", hash.clone())
                    .with("interp", self.id);
                frames.push(if self.login_blobs.lock().insert(hash) {
                    frame.with_body(content)
                } else {
                    frame.with("cached", true)
                });
            }
        }
        let body_len = msg.frame.body.len();
        frames.push(msg.frame);
        self.last_used = Instant::now();
        self.in_flight.insert(
            msg.mux_id,
            InFlight {
                op: msg.op,
                task: msg.task,
                since: Instant::now(),
                bytes: body_len,
            },
        );
        self.link.do_send(Transmit { frames });
    }
}

/// Handler for Relay.
impl Handler<Relay> for Interpreter {
    type Result = ();

    fn handle(&mut self, msg: Relay, _: &mut Self::Context) {
        if let Some(call) = self.in_flight.get_mut(&msg.mux_id) {
            call.bytes += msg.frames.iter().map(|f| f.body.len()).sum::<usize>();
            self.link.do_send(Transmit { frames: msg.frames });
        }
    }
}

/// Handler for Finished.
impl Handler<Finished> for Interpreter {
    type Result = ();

    fn handle(&mut self, msg: Finished, _: &mut Self::Context) {
        if self.in_flight.remove(&msg.mux_id).is_some() {
            self.last_used = Instant::now();
        }
    }
}

/// Handler for Spawned.
impl Handler<Spawned> for Interpreter {
    type Result = ();

    fn handle(&mut self, msg: Spawned, _: &mut Self::Context) {
        self.state = State::Ready;
        self.pid = msg.pid;
        self.last_used = Instant::now();
    }
}

/// Handler for Cancel.
impl Handler<Cancel> for Interpreter {
    type Result = ();

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) {
        if self.in_flight.remove(&msg.mux_id).is_some() {
            self.last_used = Instant::now();
            let frame = Frame::new("cancel")
                .with("id", msg.mux_id)
                .with("interp", self.id);
            self.link.do_send(Transmit {
                frames: vec![frame],
            });
        }
    }
}

/// Handler for Describe.
impl Handler<Describe> for Interpreter {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _: Describe, _: &mut Self::Context) -> Self::Result {
        let mut calls: Vec<(u64, &InFlight)> = self
            .in_flight
            .iter()
            .map(|(id, call)| (*id, call))
            .collect();
        calls.sort_by_key(|c| c.0);
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|(id, call)| {
                let (op, since, len) = (&call.op, &call.since, call.bytes);
                let doing = match op.as_str() {
                    "put_file" => format!("transferring {len} bytes to {}", self.target_name),
                    "fetch_file" => format!("transferring a file from {}", self.target_name),
                    "put_begin" => format!(
                        "receiving a streamed file ({len} bytes relayed) on {}",
                        self.target_name
                    ),
                    "fetch_begin" => {
                        format!("sending a streamed file from {}", self.target_name)
                    }
                    _ => match &call.task {
                        Some(task) => {
                            format!("running task {task:?} ({op}) for {}", self.target_name)
                        }
                        None => format!("running {op} for {}", self.target_name),
                    },
                };
                json!({"mux_id": id, "op": op, "doing": doing,
                       "elapsed": since.elapsed().as_secs_f64()})
            })
            .collect();
        let mut row = Map::new();
        row.insert("kind".into(), "interpreter".into());
        row.insert(
            "name".into(),
            format!("{}/{}", self.target_name, self.id).into(),
        );
        row.insert("interp".into(), self.id.into());
        row.insert(
            "account".into(),
            self.account.as_deref().unwrap_or("login").into(),
        );
        let state = match self.state {
            State::Spawning => "spawning",
            State::Ready if calls.is_empty() => "idle",
            State::Ready => "busy",
        };
        row.insert("state".into(), state.into());
        if self.state == State::Spawning {
            row.insert("since".into(), self.created.elapsed().as_secs_f64().into());
        }
        let last_used = self.last_used.elapsed().as_secs_f64();
        row.insert("last_used".into(), last_used.into());
        if calls.is_empty() {
            row.insert("idle".into(), last_used.into());
        }
        row.insert("pid".into(), self.pid.into());
        row.insert("blobs".into(), self.sent_blobs.len().into());
        row.insert("calls".into(), Value::Array(calls));
        MessageResult(Value::Object(row))
    }
}
