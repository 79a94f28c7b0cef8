//! Typed worker-link messages.
//!
//! [`Request`] is what a worker sends to the mux, [`Response`] what the mux sends back. Both
//! are internally tagged by the header's `"type"`; bodies travel beside them in [`Frame`].
//!
//! [`Frame`]: crate::Frame

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{BecomeSpec, ErrorKind, StatusRow, TargetSpec};

/// A frame a worker sends to the mux.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The handshake; must be the first frame.
    Hello(Hello),
    /// Run an op on a target (boxed: it is much larger than the other variants).
    Call(Box<Call>),
    /// Upload content named by its SHA-1; the body is the content.
    Blob(Blob),
    /// Ask for the table of actors.
    Status,
    /// Shut a target's connection and interpreters down (`meta: reset_connection`);
    /// answered by a [`Reply`].
    Reset(Reset),
    /// Start connecting to a target the worker is about to call; never answered.
    Connect(Connect),
    /// File data of a `put_begin` transfer; the body is the data.
    Chunk(Chunk),
    /// The end of a `put_begin` transfer: the agent checks, fsyncs and renames.
    PutEnd(PutEnd),
    /// The worker wrote `bytes` of a `fetch_begin` transfer: the agent may send more.
    Ack(Ack),
}

/// A frame the mux sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The handshake answer.
    Hello(HelloReply),
    /// The outcome of one call.
    Reply(Reply),
    /// A connection-level error; the mux closes the connection after it.
    Error(ErrorMessage),
    /// The answer to [`Request::Status`].
    Status(StatusReport),
    /// The agent wrote `bytes` of a `put_begin` transfer: the worker may send more.
    Ack(Ack),
    /// File data of a `fetch_begin` transfer; the body is the data.
    Chunk(Chunk),
}

/// The worker's handshake: `{"type": "hello", "version": 1, "pid": 4242}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the worker speaks; must equal [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// The worker's process id, for logs.
    #[serde(default)]
    pub pid: u32,
}

/// The mux's handshake answer: `{"type": "hello", "version": 1, "mux_pid": 99}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version the mux speaks.
    pub version: u32,
    /// The mux's process id, so a worker can name it in errors.
    pub mux_pid: u32,
}

/// `{"type": "call", "id": 7, "target": {...}, "op": "...", "args": {...}, "blobs": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Chosen by the worker, unique among its calls in flight; echoed in the reply.
    pub id: u64,
    /// Where to run the op; calls with equal specs (ignoring `name`) share a connection.
    pub target: TargetSpec,
    /// The account to run as; `None` = the login interpreter. Calls with equal
    /// [`BecomeSpec::key`]s on one target share a become interpreter.
    #[serde(rename = "become", default, skip_serializing_if = "Option::is_none")]
    pub become_spec: Option<BecomeSpec>,
    /// The agent operation (`ping`, `exec_command`, ...), passed through untouched.
    pub op: String,
    /// The op's arguments, passed through untouched.
    #[serde(default = "empty_object")]
    pub args: Value,
    /// SHA-1 hex digests of uploaded blobs the op needs on the target.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// The Ansible task the call belongs to, for the actor table only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Answered by the mux at once (`{"detached": true}`), before the op runs: for steps
    /// whose outcome the worker need not wait for (creating or removing a temp dir, a small
    /// upload). A failure fails this worker's next answered call instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detached: bool,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `{"type": "reset", "id": 9, "target": {...}}`: close that target's connection and all
/// its interpreters; the next call connects afresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reset {
    /// Chosen by the worker like a call id; echoed in the reply.
    pub id: u64,
    /// The target whose connection goes.
    pub target: TargetSpec,
}

/// `{"type": "connect", "target": {...}}`: start the target's connection and login interpreter
/// now, so that they come up while the worker still prepares its first call (builds the
/// module, reads the file). Unanswered: a failure reaches the call that follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    /// The target to connect to.
    pub target: TargetSpec,
}

/// `{"type": "chunk", "id": 7, "offset": 0}` + data: one piece of a streamed file
/// (docs/protocol.md, "File transfer"). `id` is the call id of the transfer's `put_begin` or
/// `fetch_begin`; `offset` is where the body starts in the file, so a lost or reordered
/// chunk is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The transfer's call id.
    pub id: u64,
    /// Position of the body's first byte in the file.
    #[serde(default)]
    pub offset: u64,
    /// The file's size when the sender opened it (fetch only), for progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `{"type": "put_end", "id": 7, "size": 1048576, "sha1": "<hex>"}`: every chunk was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutEnd {
    /// The transfer's call id.
    pub id: u64,
    /// Bytes sent in all.
    pub size: u64,
    /// SHA-1 hex digest of everything sent.
    pub sha1: String,
    /// Other digests the worker hashed (MD5), for the agent to keep for the task's modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<Map<String, Value>>,
}

/// `{"type": "ack", "id": 7, "bytes": 4194304}`: the receiver holds `bytes` bytes of the
/// transfer's data (written to its temp file); the window moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The transfer's call id.
    pub id: u64,
    /// Bytes received in all so far.
    pub bytes: u64,
}

/// `{"type": "blob", "hash": "<sha1 hex>"}`; the body is the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// Lower-case SHA-1 hex digest of the body.
    pub hash: String,
}

/// `{"type": "reply", "id": 7, "ok": true, "result": {...}}` or the `ok: false` form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The id of the call this answers.
    pub id: u64,
    /// Whether the op succeeded; selects `result` or `error`.
    pub ok: bool,
    /// The op's result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// What went wrong when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl Reply {
    /// A successful reply carrying `result`.
    pub fn ok(id: u64, result: Value) -> Reply {
        Reply {
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failed reply of the given kind.
    pub fn error(id: u64, kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply {
            id,
            ok: false,
            result: None,
            error: Some(ErrorInfo::new(kind, message)),
        }
    }
}

/// The `error` object of a failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable kind, raised by the mux or passed on from the agent.
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
    /// Kind-specific fields, such as `hashes` for `missing_blob`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorInfo {
    /// An error with no extra fields.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            kind,
            message: message.into(),
            extra: Map::new(),
        }
    }
}

/// `{"type": "error", "message": "..."}`: a connection-level error before the mux closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Human-readable explanation.
    pub message: String,
}

/// `{"type": "status", "actors": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// One row per target, interpreter and streamed transfer.
    pub actors: Vec<StatusRow>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Frame;

    #[test]
    fn requests_parse_from_frames() {
        let hello = Frame::new("hello").with("version", 1).with("pid", 42);
        assert_eq!(
            hello.parse::<Request>().unwrap(),
            Request::Hello(Hello {
                version: 1,
                pid: 42
            })
        );
        assert_eq!(
            Frame::new("status").parse::<Request>().unwrap(),
            Request::Status
        );

        let call = Frame::new("call")
            .with("id", 3)
            .with("op", "ping")
            .with("target", json!({"transport": "local"}));
        match call.parse::<Request>().unwrap() {
            Request::Call(call) => {
                assert_eq!(call.id, 3);
                assert_eq!(call.args, json!({}));
                assert!(call.blobs.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn become_and_reset_parse() {
        let call = Frame::new("call")
            .with("id", 3)
            .with("op", "ping")
            .with("target", json!({"transport": "local"}))
            .with(
                "become",
                json!({"method": "sudo", "user": "pg", "password": "pw"}),
            );
        match call.parse::<Request>().unwrap() {
            Request::Call(call) => {
                let become_spec = call.become_spec.unwrap();
                assert_eq!(become_spec.key().to_string(), "sudo:pg");
                assert_eq!(become_spec.password.unwrap().expose(), "pw");
            }
            other => panic!("{other:?}"),
        }
        let plain = Frame::new("call")
            .with("id", 4)
            .with("op", "ping")
            .with("become", Value::Null)
            .with("target", json!({"transport": "local"}));
        match plain.parse::<Request>().unwrap() {
            Request::Call(call) => assert!(call.become_spec.is_none()),
            other => panic!("{other:?}"),
        }
        let reset = Frame::new("reset")
            .with("id", 9)
            .with("target", json!({"transport": "local"}));
        assert_eq!(
            reset.parse::<Request>().unwrap(),
            Request::Reset(Reset {
                id: 9,
                target: TargetSpec::local()
            })
        );
        let connect = Frame::new("connect").with("target", json!({"transport": "local"}));
        assert_eq!(
            connect.parse::<Request>().unwrap(),
            Request::Connect(Connect {
                target: TargetSpec::local()
            })
        );
    }

    #[test]
    fn transfer_frames_parse() {
        let chunk = Frame::new("chunk").with("id", 5).with("offset", 1024);
        assert_eq!(
            chunk.parse::<Request>().unwrap(),
            Request::Chunk(Chunk {
                id: 5,
                offset: 1024,
                size: None
            })
        );
        let end = Frame::new("put_end")
            .with("id", 5)
            .with("size", 2048)
            .with("sha1", "ab");
        assert_eq!(
            end.parse::<Request>().unwrap(),
            Request::PutEnd(PutEnd {
                id: 5,
                size: 2048,
                sha1: "ab".into(),
                digests: None
            })
        );
        let ack = Frame::new("ack").with("id", 5).with("bytes", 7);
        assert_eq!(
            ack.parse::<Request>().unwrap(),
            Request::Ack(Ack { id: 5, bytes: 7 })
        );
        assert_eq!(
            ack.parse::<Response>().unwrap(),
            Response::Ack(Ack { id: 5, bytes: 7 })
        );
        // A put_end must say what was sent.
        assert!(Frame::new("put_end")
            .with("id", 5)
            .parse::<Request>()
            .is_err());
    }

    #[test]
    fn unknown_or_incomplete_requests_are_bad_headers() {
        assert!(Frame::new("nope").parse::<Request>().is_err());
        let err = Frame::new("call")
            .with("id", 1)
            .parse::<Request>()
            .unwrap_err();
        assert!(err.to_string().contains("bad \"call\" frame"), "{err}");
    }

    #[test]
    fn error_reply_flattens_extra_fields() {
        let mut reply = Reply::error(9, ErrorKind::MissingBlob, "2 blobs are missing");
        if let Some(error) = reply.error.as_mut() {
            error.extra.insert("hashes".into(), json!(["aa", "bb"]));
        }
        let frame =
            Frame::from_message(&Response::Reply(reply.clone()), Default::default()).unwrap();
        assert_eq!(
            Value::Object(frame.header.clone()),
            json!({"type": "reply", "id": 9, "ok": false, "error": {
                "kind": "missing_blob", "message": "2 blobs are missing", "hashes": ["aa", "bb"]}})
        );
        assert_eq!(frame.parse::<Response>().unwrap(), Response::Reply(reply));
    }
}
