//! Golden frames of the agent link: the bytes under `tests/golden/agent/` must be exactly what
//! this crate encodes for [`ToAgent`] messages, decode back to the same messages, and decode
//! into the expected [`FromAgent`] values. The agent's own tests
//! (`mux/agent/tests/test_agent_link_golden.py`) decode and re-encode the same files with the
//! agent's frame code.
//!
//! Regenerate after an intentional format change with
//! `FERROGEN_BLESS=1 cargo test -p worker-ipc --test golden_agent`.

use std::{fs, path::PathBuf};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use worker_ipc::{
    Ack, AgentBlob, AgentCall, AgentChunk, AgentInfo, AgentLog, AgentPutEnd, BecomeSpec, CallRef,
    Chunk, ErrorInfo, ErrorKind, Frame, FromAgent, LogLevel, Op, Reply, RouteClosed, RouteOpen,
    RouteRef, Spawn, Spawned, ToAgent,
};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/agent")
}

/// Frames the mux sends, by file stem.
fn to_agent() -> Vec<(&'static str, ToAgent, &'static [u8])> {
    let become_spec: BecomeSpec = serde_json::from_value(json!({
        "method": "sudo", "user": "postgres", "exe": "sudo", "flags": "-H -S -n",
        "password": "secret", "python": null}))
    .unwrap();
    let mut digests = Map::new();
    digests.insert("md5".into(), "5d41402abc4b2a76b9719d911017c592".into());
    vec![
        (
            "to_call",
            ToAgent::Call(AgentCall {
                id: 12,
                interp: 0,
                op: Op::ExecCommand,
                args: json!({"cmd": "cat", "emulate_tty": false}),
            }),
            b"stdin\n",
        ),
        (
            // A task's streamed output, fetched like a file (docs/protocol.md, "Streamed output").
            "to_fetch_output",
            ToAgent::Call(AgentCall {
                id: 13,
                interp: 3,
                op: Op::FetchBegin,
                args: json!({"output": 12, "path": "output of exec_command"}),
            }),
            b"",
        ),
        (
            "to_blob_cached",
            ToAgent::Blob(AgentBlob {
                hash: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into(),
                interp: 3,
                cached: true,
                at_hop: false,
            }),
            b"",
        ),
        (
            "to_blob_at_hop",
            ToAgent::Blob(AgentBlob {
                hash: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into(),
                interp: 0,
                cached: false,
                at_hop: true,
            }),
            b"",
        ),
        (
            "to_route_open",
            ToAgent::RouteOpen(RouteOpen {
                route: 4,
                interp: 0,
                argv: vec![
                    "ssh".into(),
                    "-p".into(),
                    "22".into(),
                    "10.0.2.2".into(),
                    "exec python3".into(),
                ],
                prompts: None,
            }),
            b"bootstrap payload",
        ),
        (
            "to_route_data",
            ToAgent::RouteData(RouteRef {
                route: 4,
                interp: 0,
            }),
            b"frames for the next hop",
        ),
        (
            "to_route_close",
            ToAgent::RouteClose(RouteRef {
                route: 4,
                interp: 2,
            }),
            b"",
        ),
        (
            "to_spawn",
            ToAgent::Spawn(Spawn {
                cwd: None,
                interp: 3,
                become_spec,
                timeout: 10.0,
            }),
            b"",
        ),
        (
            "to_chunk",
            ToAgent::Chunk(AgentChunk {
                id: 14,
                interp: 3,
                offset: 1048576,
            }),
            b"hello",
        ),
        (
            "to_put_end",
            ToAgent::PutEnd(AgentPutEnd {
                id: 14,
                interp: 3,
                size: 1048581,
                sha1: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into(),
                digests: Some(digests),
            }),
            b"",
        ),
        (
            "to_cancel",
            ToAgent::Cancel(CallRef { id: 12, interp: 0 }),
            b"",
        ),
        ("to_shutdown", ToAgent::Shutdown, b""),
    ]
}

/// Frames the agent sends, by file stem, with what they decode to.
fn from_agent() -> Vec<(&'static str, Frame, FromAgent)> {
    let ready = json!({"type": "ready", "pid": 123, "python": "/usr/bin/python3",
        "version": "3.11.2", "uid": 0, "user": "root", "home": "/root",
        "tmpdir": "/root/.ansible/tmp/ferrogen-123-x"});
    let Value::Object(ready) = ready else {
        unreachable!()
    };
    let mut spawned_ready = ready.clone();
    spawned_ready.insert("pid".into(), 124.into());
    spawned_ready.insert("user".into(), "postgres".into());
    let frame = |header: Value, body: &'static [u8]| {
        let Value::Object(header) = header else {
            unreachable!()
        };
        Frame {
            header,
            body: Bytes::from_static(body),
        }
    };
    vec![
        (
            "from_ready",
            frame(Value::Object(ready.clone()), b""),
            FromAgent::Ready(AgentInfo(ready)),
        ),
        (
            "from_reply",
            frame(
                json!({"type": "reply", "id": 12, "ok": true,
                       "result": {"rc": 0, "stdout_len": 6}}),
                b"hello\n",
            ),
            FromAgent::Reply {
                reply: Reply::ok(12, json!({"rc": 0, "stdout_len": 6})),
                body: Bytes::from_static(b"hello\n"),
            },
        ),
        (
            "from_reply_streamed_output",
            frame(
                json!({"type": "reply", "id": 12, "ok": true,
                       "result": {"rc": 0, "stdout_len": 2097152, "output": 12}}),
                b"",
            ),
            FromAgent::Reply {
                reply: Reply::ok(12, json!({"rc": 0, "stdout_len": 2097152, "output": 12})),
                body: Bytes::new(),
            },
        ),
        (
            "from_reply_error",
            frame(
                json!({"type": "reply", "id": 13, "ok": false,
                       "error": {"kind": "not_found", "message": "cannot read /x: gone"}}),
                b"",
            ),
            FromAgent::Reply {
                reply: Reply::error(13, ErrorKind::NotFound, "cannot read /x: gone"),
                body: Bytes::new(),
            },
        ),
        (
            "from_spawned",
            frame(
                json!({"type": "spawned", "interp": 3, "ok": true,
                       "ready": Value::Object(spawned_ready.clone())}),
                b"",
            ),
            FromAgent::Spawned(Spawned {
                interp: 3,
                outcome: Ok(AgentInfo(spawned_ready)),
            }),
        ),
        (
            "from_spawn_failed",
            frame(
                json!({"type": "spawned", "interp": 4, "ok": false,
                       "error": {"kind": "become_failed",
                                 "message": "sudo: incorrect password"}}),
                b"",
            ),
            FromAgent::Spawned(Spawned {
                interp: 4,
                outcome: Err(ErrorInfo::new(
                    ErrorKind::BecomeFailed,
                    "sudo: incorrect password",
                )),
            }),
        ),
        (
            "from_chunk",
            frame(
                json!({"type": "chunk", "id": 15, "offset": 0, "size": 5}),
                b"hello",
            ),
            FromAgent::Chunk {
                chunk: Chunk {
                    id: 15,
                    offset: 0,
                    size: Some(5),
                },
                body: Bytes::from_static(b"hello"),
            },
        ),
        (
            "from_ack",
            frame(json!({"type": "ack", "id": 14, "bytes": 1048576}), b""),
            FromAgent::Ack(Ack {
                id: 14,
                bytes: 1048576,
            }),
        ),
        (
            "from_route_data",
            frame(
                json!({"type": "route_data", "route": 4}),
                b"frames from the next hop",
            ),
            FromAgent::RouteData {
                route: 4,
                body: Bytes::from_static(b"frames from the next hop"),
            },
        ),
        (
            "from_route_closed",
            frame(
                json!({"type": "route_closed", "route": 4, "status": 255,
                       "stderr": "ssh: connect to host 10.0.2.2 port 22: No route to host\n"}),
                b"",
            ),
            FromAgent::RouteClosed(RouteClosed {
                route: 4,
                status: Some(255),
                signal: None,
                error: None,
                stderr: "ssh: connect to host 10.0.2.2 port 22: No route to host\n".into(),
            }),
        ),
        (
            "from_log",
            frame(
                json!({"type": "log", "level": "warning", "message": "debug log moved"}),
                b"",
            ),
            FromAgent::Log(AgentLog {
                level: Some(LogLevel::Warning),
                message: "debug log moved".into(),
            }),
        ),
    ]
}

/// Compares `bytes` with the stored golden file `name` (or writes it when blessing).
fn check_bytes(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = golden_dir().join(format!("{name}.bin"));
    if std::env::var_os("FERROGEN_BLESS").is_some() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, bytes).unwrap();
    }
    let stored = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        stored,
        bytes,
        "{} differs from the encoder's output",
        path.display()
    );
    stored
}

#[test]
fn frames_to_the_agent_match_their_bytes_and_decode_back() {
    for (name, msg, body) in to_agent() {
        let frame = msg.to_frame(Bytes::from_static(body)).unwrap();
        let stored = check_bytes(name, &frame.to_bytes().unwrap());
        let decoded = Frame::read_from(&mut &stored[..]).unwrap();
        assert_eq!(decoded.body.as_ref(), body, "{name}");
        assert_eq!(decoded.parse::<ToAgent>().unwrap(), msg, "{name}");
    }
}

#[test]
fn frames_from_the_agent_match_their_bytes_and_decode_to_their_messages() {
    for (name, frame, expected) in from_agent() {
        let stored = check_bytes(name, &frame.to_bytes().unwrap());
        let decoded = Frame::read_from(&mut &stored[..]).unwrap();
        assert_eq!(FromAgent::from_frame(decoded), expected, "{name}");
    }
}

#[test]
fn every_golden_file_is_checked() {
    let mut known: Vec<String> = to_agent()
        .iter()
        .map(|(name, ..)| name.to_string())
        .chain(from_agent().iter().map(|(name, ..)| name.to_string()))
        .collect();
    known.sort();
    let mut stored: Vec<String> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.trim_end_matches(".bin").to_owned()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, known);
}
