//! The agent link's vocabulary: every frame the mux sends to an agent ([`ToAgent`]) and every
//! frame an agent sends to the mux ([`FromAgent`]), as docs/protocol.md ("Agent link",
//! "Become interpreters", "Cancellation", "File transfer") describes them.
//!
//! Frames are turned into these types where they cross the link: [`ToAgent::to_frame`] on the
//! way out, [`FromAgent::from_frame`] on the way in. Past that edge nothing looks up a header
//! key or matches a `type` string. Golden frames under `tests/golden/agent/` pin the bytes;
//! the agent's own tests decode and re-encode the same files.

use std::ops::Not;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Ack, BecomeSpec, Chunk, ErrorInfo, ErrorKind, Frame, FrameError, Reply, Secret};

/// An interpreter's number on the agent link.
pub type InterpId = u32;

/// The login interpreter's number; become interpreters get 1, 2, ... (never reused on one
/// connection).
pub const LOGIN_INTERP: InterpId = 0;

/// An agent operation, the `op` of a call. The agent implements each as its method
/// `op_<name>`; `tests/python_names.rs` checks the two lists agree.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// `{}` -> `{"pid"}`.
    Ping,
    /// Runs a shell command in a forked task process.
    ExecCommand,
    /// Runs an Ansible module from a cached zip in a forked task process.
    RunModule,
    /// Writes a small file carried in the call's body.
    PutFile,
    /// Starts a streamed put (docs/protocol.md, "Put").
    PutBegin,
    /// Starts a streamed fetch (docs/protocol.md, "Fetch").
    FetchBegin,
    /// `mkdir -p` under umask 77.
    MakeDir,
    /// `rm -rf`.
    RemoveTree,
    /// `chmod` adding bits.
    AddMode,
    /// Answered by the mux itself from the login agent's `ready` frame.
    InterpreterInfo,
    /// An op this crate does not name: passed to the agent untouched, which refuses it if it
    /// does not know it either.
    Other(String),
}

impl Op {
    /// The ops the agent implements (all but [`Op::InterpreterInfo`] and [`Op::Other`]).
    pub const AGENT_OPS: [Op; 9] = [
        Op::Ping,
        Op::ExecCommand,
        Op::RunModule,
        Op::PutFile,
        Op::PutBegin,
        Op::FetchBegin,
        Op::MakeDir,
        Op::RemoveTree,
        Op::AddMode,
    ];

    /// The op as it is written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Op::Ping => "ping",
            Op::ExecCommand => "exec_command",
            Op::RunModule => "run_module",
            Op::PutFile => "put_file",
            Op::PutBegin => "put_begin",
            Op::FetchBegin => "fetch_begin",
            Op::MakeDir => "make_dir",
            Op::RemoveTree => "remove_tree",
            Op::AddMode => "add_mode",
            Op::InterpreterInfo => "interpreter_info",
            Op::Other(op) => op,
        }
    }

    /// The op written `name` on the wire.
    pub fn from_wire(name: &str) -> Op {
        if name == Op::InterpreterInfo.as_str() {
            return Op::InterpreterInfo;
        }
        Op::AGENT_OPS
            .into_iter()
            .find(|op| op.as_str() == name)
            .unwrap_or_else(|| Op::Other(name.to_owned()))
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Op, D::Error> {
        Ok(Op::from_wire(&String::deserialize(deserializer)?))
    }
}

/// A frame the mux sends to an agent. Frames for a become interpreter carry its `interp`; the
/// login agent relays them to that child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// Run an op; the frame's body is the op's input.
    Call(AgentCall),
    /// Content a call needs, sent once per interpreter; the body is the content (empty when
    /// `cached`).
    Blob(AgentBlob),
    /// Kill the task of call `id`; a transfer's temp file goes. Never answered.
    Cancel(CallRef),
    /// Start a become interpreter; answered by [`FromAgent::Spawned`].
    Spawn(Spawn),
    /// Shut a become interpreter down; answered by [`FromAgent::Stopped`].
    Stop(InterpRef),
    /// A become interpreter that answered no heartbeat: the login agent kills it at once (its
    /// tool's process group, and the interpreter where it may), without waiting on it;
    /// answered by [`FromAgent::Stopped`].
    Kill(InterpRef),
    /// The login agent stops its become children and exits.
    Shutdown,
    /// File data of a put; the body is the data.
    Chunk(AgentChunk),
    /// Every chunk of a put was sent: the agent checks, fsyncs and renames.
    PutEnd(AgentPutEnd),
    /// The worker holds `bytes` of a fetch: the agent may send more.
    Ack(AgentAck),
    /// Are you there? The agent answers at once with [`FromAgent::Heartbeat`], whatever tasks
    /// it runs (docs/protocol.md, "Heartbeat").
    Heartbeat(Heartbeat),
    /// Start the next hop's transport on this agent's host and relay its stdio as route
    /// frames (connection delegation, `mitogen_via`); the body is written to its stdin first
    /// (the next hop's bootstrap payload).
    RouteOpen(RouteOpen),
    /// Bytes for a route's stdin; the body is the data.
    RouteData(RouteRef),
    /// The mux is done with a route: its stdin is closed and the process ended.
    RouteClose(RouteRef),
}

/// `{"type": "route_open", "route": 4, "interp": 0, "argv": ["ssh", ...]}` + stdin bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOpen {
    /// The route's number, unique on this connection.
    pub route: u64,
    /// The interpreter that starts it: a become one when the hop is entered through an
    /// account (`mitogen_via=user@host`).
    pub interp: InterpId,
    /// The next hop's command line, built by the mux as if it ran it itself.
    pub argv: Vec<String>,
    /// What the agent answers on a terminal it opens for the process (a hop's ssh that logs
    /// in with a password); none: the process gets no terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<RoutePrompts>,
}

/// `{"password": "...", "accept_host_key": false}`: the answers to a route's ssh prompts.
/// The password rides in this frame and nowhere else (never on the command line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePrompts {
    /// The login password, typed at the first password prompt.
    #[serde(serialize_with = "secret_for_agent")]
    pub password: Secret,
    /// Whether an unknown host key is accepted (host key checking off).
    pub accept_host_key: bool,
}

/// Writes a [`Secret`] itself, which its own `Serialize` redacts.
fn secret_for_agent<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

/// One route: `{"route": 4, "interp": 0}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRef {
    /// The route's number.
    pub route: u64,
    /// The interpreter that runs it.
    pub interp: InterpId,
}

/// `{"type": "route_closed", "route": 4, "status": 255, "stderr": "..."}`: the next hop's
/// transport ended (or could not start: `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteClosed {
    /// The route's number.
    pub route: u64,
    /// Its exit status, if it exited.
    #[serde(default)]
    pub status: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why it could not be started at all.
    #[serde(default)]
    pub error: Option<String>,
    /// The last of what it wrote to stderr (ssh's complaint).
    #[serde(default)]
    pub stderr: String,
}

/// `{"type": "route_data", "route": 4}` + bytes from the route's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOutput {
    /// The route's number.
    pub route: u64,
}

/// `{"type": "heartbeat", "seq": 7, "interp": 3}`: the mux's liveness probe, numbered for the
/// logs; to the login agent itself when `interp` is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up from 1 on each connection.
    pub seq: u64,
    /// The interpreter asked: a become one has a heartbeat of its own, relayed by the login
    /// agent, which puts the same `interp` on the answer.
    #[serde(default, skip_serializing_if = "is_login")]
    pub interp: InterpId,
}

/// Whether `interp` is the login agent's (left out of the frames that default to it).
fn is_login(interp: &InterpId) -> bool {
    *interp == LOGIN_INTERP
}

/// `{"type": "call", "id": 12, "interp": 0, "op": "exec_command", "args": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCall {
    /// The mux-side call id, unique per connection.
    pub id: u64,
    /// Which interpreter runs it.
    pub interp: InterpId,
    /// The op.
    pub op: Op,
    /// The op's arguments, as the worker sent them (a put's `source` removed).
    pub args: Value,
}

/// `{"type": "blob", "hash": "<sha1 hex>", "interp": 3, "cached": true?, "at_hop": true?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBlob {
    /// Lower-case SHA-1 hex digest of the content.
    pub hash: String,
    /// The interpreter that needs it.
    pub interp: InterpId,
    /// The login agent already holds the content (it relayed it to another child), so the
    /// frame has no body and only names it.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub cached: bool,
    /// The hop in front of this routed target holds the content (it kept it while relaying
    /// it to a target behind it), so the frame has no body: the hop puts the content in a
    /// blob frame of its own right behind it, and the agent takes this one for a no-op.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub at_hop: bool,
}

/// A call on one interpreter: `{"id": 12, "interp": 3}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRef {
    /// The mux-side call id.
    pub id: u64,
    /// Its interpreter.
    pub interp: InterpId,
}

/// One interpreter: `{"interp": 3}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterpRef {
    /// The interpreter.
    pub interp: InterpId,
}

/// `{"type": "spawn", "interp": 3, "become": {...}, "timeout": 10.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spawn {
    /// The new interpreter's number.
    pub interp: InterpId,
    /// The account; the password rides in this frame and nowhere else.
    #[serde(rename = "become", serialize_with = "become_for_agent")]
    pub become_spec: BecomeSpec,
    /// Seconds the agent gives the become tool to start the interpreter.
    pub timeout: f64,
    /// Where the become tool starts: the local connection's tasks start in the playbook's
    /// directory, as vanilla's local plugin starts its become tool there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Writes a [`BecomeSpec`] with its password, which its own `Serialize` redacts.
fn become_for_agent<S: Serializer>(spec: &BecomeSpec, serializer: S) -> Result<S::Ok, S::Error> {
    spec.to_agent_json().serialize(serializer)
}

/// `{"type": "chunk", "id": 12, "interp": 0, "offset": 0}` + data, for a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentChunk {
    /// The transfer's mux-side call id.
    pub id: u64,
    /// Its interpreter.
    pub interp: InterpId,
    /// Position of the body's first byte in the file.
    pub offset: u64,
}

/// `{"type": "put_end", "id": 12, "interp": 0, "size": n, "sha1": h, "digests": {...}?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPutEnd {
    /// The transfer's mux-side call id.
    pub id: u64,
    /// Its interpreter.
    pub interp: InterpId,
    /// Bytes sent in all.
    pub size: u64,
    /// SHA-1 hex digest of everything sent.
    pub sha1: String,
    /// Other digests the worker hashed, for the agent to keep for the task's modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Map<String, Value>>,
}

/// `{"type": "ack", "id": 12, "interp": 0, "bytes": n}`, for a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAck {
    /// The transfer's mux-side call id.
    pub id: u64,
    /// Its interpreter.
    pub interp: InterpId,
    /// Bytes the worker holds in all.
    pub bytes: u64,
}

impl ToAgent {
    /// The frame carrying this message and `body`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BadHeader`] if the message does not serialize (an `args` that is not
    /// JSON-representable cannot be built from a parsed frame, so in practice never).
    pub fn to_frame(&self, body: Bytes) -> Result<Frame, FrameError> {
        Frame::from_message(self, body)
    }
}

/// What an interpreter said when it came up: the `ready` frame's header (`pid`, `python`,
/// `version`, `uid`, `user`, `home`, `tmpdir`), kept whole because `interpreter_info` hands it
/// to the worker as it came.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentInfo(pub Map<String, Value>);

impl AgentInfo {
    /// The interpreter's pid on the target.
    pub fn pid(&self) -> Option<u64> {
        self.0.get("pid").and_then(Value::as_u64)
    }
}

/// The level of an agent's `log` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Shown at -vvv only.
    Debug,
    /// Informational.
    Info,
    /// Something the operator should see.
    Warning,
    /// Something failed.
    Error,
}

/// `{"type": "log", "level": "info", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLog {
    /// The record's level; an unknown one is logged at debug.
    #[serde(default)]
    pub level: Option<LogLevel>,
    /// The text.
    #[serde(default)]
    pub message: String,
}

/// `{"type": "spawned", "interp": 3, "ok": true, "ready": {...}}` or the `ok: false` form
/// with an `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spawned {
    /// The interpreter it is about.
    pub interp: InterpId,
    /// Its `ready` header, or why it could not be started.
    pub outcome: Result<AgentInfo, ErrorInfo>,
}

/// `{"type": "interp_lost", "interp": 3, "message": "..."}`: a become interpreter exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterpLost {
    /// The interpreter.
    pub interp: InterpId,
    /// What the login agent saw.
    #[serde(default)]
    pub message: Option<String>,
}

/// A frame an agent sends to the mux.
#[derive(Debug, Clone, PartialEq)]
pub enum FromAgent {
    /// The agent is up; always its first frame.
    Ready(AgentInfo),
    /// The outcome of call `reply.id` (mux-side id); `body` is op-specific.
    Reply {
        /// The reply, as the worker will get it once its id is restored.
        reply: Reply,
        /// Output (stdout then stderr, file data).
        body: Bytes,
    },
    /// The agent wrote `bytes` of a put.
    Ack(Ack),
    /// File data of a fetch.
    Chunk {
        /// Which transfer, where in the file, and the file's size.
        chunk: Chunk,
        /// The data.
        body: Bytes,
    },
    /// A log record, forwarded to the mux's log.
    Log(AgentLog),
    /// The answer to [`ToAgent::Heartbeat`] of this interpreter (the login one's unless the
    /// frame names another); any frame counts as a sign of life of the login agent.
    Heartbeat(InterpId),
    /// The answer to [`ToAgent::Spawn`].
    Spawned(Spawned),
    /// A become interpreter exited.
    InterpLost(InterpLost),
    /// The answer to [`ToAgent::Stop`]; `None` when the agent did not say which.
    Stopped(Option<InterpId>),
    /// Bytes a route's process wrote to its stdout.
    RouteData {
        /// Which route.
        route: u64,
        /// The bytes.
        body: Bytes,
    },
    /// A route's process ended.
    RouteClosed(RouteClosed),
    /// A frame of a known type whose fields did not fit; logged and ignored, so one odd frame
    /// does not cost the connection.
    Malformed {
        /// Its `type`.
        kind: String,
        /// What did not fit.
        why: String,
    },
    /// A frame of a type this mux does not know; logged and ignored.
    Unknown(String),
}

/// The fields of a `spawned` frame, before they are checked.
#[derive(Deserialize)]
struct SpawnedFields {
    interp: InterpId,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    ready: Option<Map<String, Value>>,
    #[serde(default)]
    error: Option<Value>,
}

/// The `heartbeat` frame's fields.
#[derive(Deserialize)]
struct HeartbeatFields {
    #[serde(default)]
    interp: InterpId,
}

/// The `stopped` frame's fields.
#[derive(Deserialize)]
struct StoppedFields {
    #[serde(default)]
    interp: Option<InterpId>,
}

impl FromAgent {
    /// The frame's `type`.
    pub fn kind(&self) -> &str {
        match self {
            FromAgent::Ready(_) => "ready",
            FromAgent::Reply { .. } => "reply",
            FromAgent::Ack(_) => "ack",
            FromAgent::Chunk { .. } => "chunk",
            FromAgent::Log(_) => "log",
            FromAgent::Heartbeat(_) => "heartbeat",
            FromAgent::Spawned(_) => "spawned",
            FromAgent::InterpLost(_) => "interp_lost",
            FromAgent::Stopped(_) => "stopped",
            FromAgent::RouteData { .. } => "route_data",
            FromAgent::RouteClosed(_) => "route_closed",
            FromAgent::Malformed { kind, .. } | FromAgent::Unknown(kind) => kind,
        }
    }

    /// Decodes a frame received from an agent. Never fails: a frame that does not fit becomes
    /// [`FromAgent::Malformed`] or [`FromAgent::Unknown`].
    pub fn from_frame(frame: Frame) -> FromAgent {
        let kind = frame.kind().to_owned();
        let malformed = |err: FrameError| FromAgent::Malformed {
            kind: kind.clone(),
            why: err.to_string(),
        };
        match kind.as_str() {
            "ready" => FromAgent::Ready(AgentInfo(frame.header)),
            "reply" => match frame.parse::<Reply>() {
                Ok(reply) => FromAgent::Reply {
                    reply,
                    body: frame.body,
                },
                Err(err) => malformed(err),
            },
            "ack" => frame.parse().map_or_else(malformed, FromAgent::Ack),
            "chunk" => match frame.parse::<Chunk>() {
                Ok(chunk) => FromAgent::Chunk {
                    chunk,
                    body: frame.body,
                },
                Err(err) => malformed(err),
            },
            "log" => frame.parse().map_or_else(malformed, FromAgent::Log),
            "heartbeat" => frame
                .parse::<HeartbeatFields>()
                .map_or_else(malformed, |fields| FromAgent::Heartbeat(fields.interp)),
            "spawned" => match frame.parse::<SpawnedFields>() {
                Ok(fields) => FromAgent::Spawned(Spawned {
                    interp: fields.interp,
                    outcome: if fields.ok {
                        Ok(AgentInfo(fields.ready.unwrap_or_default()))
                    } else {
                        Err(spawn_error(fields.error.as_ref()))
                    },
                }),
                Err(err) => malformed(err),
            },
            "interp_lost" => frame.parse().map_or_else(malformed, FromAgent::InterpLost),
            "stopped" => frame
                .parse::<StoppedFields>()
                .map_or_else(malformed, |fields| FromAgent::Stopped(fields.interp)),
            "route_data" => match frame.parse::<RouteOutput>() {
                Ok(RouteOutput { route }) => FromAgent::RouteData {
                    route,
                    body: frame.body,
                },
                Err(err) => malformed(err),
            },
            "route_closed" => frame.parse().map_or_else(malformed, FromAgent::RouteClosed),
            _ => FromAgent::Unknown(kind),
        }
    }
}

/// The error of a failed `spawned`, with the defaults the mux has always used for fields the
/// agent left out.
fn spawn_error(error: Option<&Value>) -> ErrorInfo {
    let field = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str);
    ErrorInfo {
        kind: field("kind").map_or(ErrorKind::BecomeFailed, ErrorKind::from_wire),
        message: field("message")
            .unwrap_or("the agent could not start it")
            .to_owned(),
        extra: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn to_agent_frames_have_the_documented_headers() {
        let call = ToAgent::Call(AgentCall {
            id: 12,
            interp: 3,
            op: Op::ExecCommand,
            args: json!({"cmd": "true"}),
        });
        let frame = call.to_frame(Bytes::from_static(b"in")).unwrap();
        assert_eq!(
            Value::Object(frame.header),
            json!({"type": "call", "id": 12, "interp": 3, "op": "exec_command",
                   "args": {"cmd": "true"}})
        );
        let blob = ToAgent::Blob(AgentBlob {
            hash: "ab".into(),
            interp: 0,
            cached: false,
            at_hop: false,
        });
        assert_eq!(
            Value::Object(blob.to_frame(Bytes::new()).unwrap().header),
            json!({"type": "blob", "hash": "ab", "interp": 0})
        );
        let served_by_hop = ToAgent::Blob(AgentBlob {
            hash: "ab".into(),
            interp: 2,
            cached: false,
            at_hop: true,
        });
        assert_eq!(
            Value::Object(served_by_hop.to_frame(Bytes::new()).unwrap().header),
            json!({"type": "blob", "hash": "ab", "interp": 2, "at_hop": true})
        );
        let shutdown = ToAgent::Shutdown.to_frame(Bytes::new()).unwrap();
        assert_eq!(Value::Object(shutdown.header), json!({"type": "shutdown"}));
    }

    #[test]
    fn route_open_carries_the_password_that_debug_redacts() {
        let open = ToAgent::RouteOpen(RouteOpen {
            route: 4,
            interp: 0,
            argv: vec!["ssh".into(), "h".into()],
            prompts: Some(RoutePrompts {
                password: Secret::new("pw-31"),
                accept_host_key: false,
            }),
        });
        assert!(!format!("{open:?}").contains("pw-31"));
        let header = open.to_frame(Bytes::new()).unwrap().header;
        assert_eq!(header["prompts"]["password"], "pw-31");
        assert_eq!(header["prompts"]["accept_host_key"], false);
        assert!(header["argv"].to_string().find("pw-31").is_none());
    }

    #[test]
    fn spawn_carries_the_password_that_the_spec_redacts() {
        let become_spec: BecomeSpec =
            serde_json::from_value(json!({"method": "sudo", "user": "pg", "password": "pw"}))
                .unwrap();
        let spawn = ToAgent::Spawn(Spawn {
            cwd: None,
            interp: 1,
            become_spec,
            timeout: 10.0,
        });
        let header = spawn.to_frame(Bytes::new()).unwrap().header;
        assert_eq!(header["become"]["password"], "pw");
        assert_eq!(header["timeout"], 10.0);
    }

    #[test]
    fn from_agent_frames_decode_and_odd_ones_are_kept_apart() {
        let spawned = Frame::new("spawned")
            .with("interp", 2)
            .with("ok", false)
            .with("error", json!({"message": "sudo: incorrect password"}));
        match FromAgent::from_frame(spawned) {
            FromAgent::Spawned(Spawned {
                interp: 2,
                outcome: Err(error),
            }) => {
                assert_eq!(error.kind, ErrorKind::BecomeFailed);
                assert_eq!(error.message, "sudo: incorrect password");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            FromAgent::from_frame(Frame::new("reply").with("ok", true)),
            FromAgent::Malformed { kind, .. } if kind == "reply"
        ));
        assert_eq!(
            FromAgent::from_frame(Frame::new("gossip")),
            FromAgent::Unknown("gossip".into())
        );
        assert_eq!(
            FromAgent::from_frame(Frame::new("stopped")),
            FromAgent::Stopped(None)
        );
    }

    #[test]
    fn ops_round_trip_and_unknown_ones_pass_through() {
        for op in Op::AGENT_OPS {
            assert_eq!(Op::from_wire(op.as_str()), op);
        }
        assert_eq!(Op::from_wire("interpreter_info"), Op::InterpreterInfo);
        assert_eq!(Op::from_wire("frob"), Op::Other("frob".into()));
    }
}
