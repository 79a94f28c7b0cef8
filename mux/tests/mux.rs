//! Integration tests: start the real `ferrogen-mux` on a temporary socket and drive it over
//! the worker link with `transport=local` (and one unreachable ssh target).

use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{json, Value};
use worker_ipc::{Frame, FrameError};

/// A running mux, killed on drop.
struct Mux {
    /// The mux process.
    child: Child,
    /// The write end of its stdin; dropping it asks the mux to exit.
    stdin: Option<ChildStdin>,
    /// Its socket.
    socket: PathBuf,
    /// Keeps the private socket directory alive.
    _dir: tempfile::TempDir,
}

impl Mux {
    fn start() -> Mux {
        Mux::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Mux {
        Mux::start_full(env, Stdio::inherit())
    }

    fn start_full(env: &[(&str, &str)], stderr: Stdio) -> Mux {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.path().join("mux.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        assert_eq!(
            String::from_utf8_lossy(&line),
            format!("READY {}", child.id()),
            "mux did not announce itself"
        );
        Mux {
            stdin: child.stdin.take(),
            child,
            socket,
            _dir: dir,
        }
    }

    /// A handshaken client.
    fn client(&self) -> Client {
        let mut client = self.raw_client();
        client.send(Frame::new("hello").with("version", 1).with("pid", 1));
        let hello = client.recv().unwrap();
        assert_eq!(hello.kind(), "hello");
        assert_eq!(hello.header["mux_pid"], self.child.id());
        client
    }

    fn raw_client(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client { stream, next_id: 1 }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    fn send(&mut self, frame: Frame) {
        self.stream.write_all(&frame.to_bytes().unwrap()).unwrap();
    }

    fn recv(&mut self) -> Result<Frame, FrameError> {
        Frame::read_from(&mut self.stream)
    }

    /// Sends a call; returns its id.
    fn send_call(
        &mut self,
        target: Value,
        op: &str,
        args: Value,
        blobs: &[&str],
        body: &[u8],
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            Frame::new("call")
                .with("id", id)
                .with("target", target)
                .with("op", op)
                .with("args", args)
                .with("blobs", json!(blobs))
                .with_body(Bytes::copy_from_slice(body)),
        );
        id
    }

    /// Sends a call and waits for its reply.
    fn call(&mut self, target: Value, op: &str, args: Value, blobs: &[&str], body: &[u8]) -> Frame {
        let id = self.send_call(target, op, args, blobs, body);
        self.reply_to(id)
    }

    /// Runs a streamed `fetch_begin` with `args`, acknowledging each chunk; returns the reply
    /// and the bytes received.
    fn fetch_streamed(&mut self, target: Value, args: Value) -> (Frame, Vec<u8>) {
        let id = self.send_call(target, "fetch_begin", args, &[], b"");
        let mut got = Vec::new();
        loop {
            let frame = self.recv().unwrap();
            if frame.header["id"] != id {
                continue;
            }
            match frame.kind() {
                "reply" => return (frame, got),
                "chunk" => {
                    assert_eq!(frame.header["offset"], got.len());
                    got.extend_from_slice(&frame.body);
                    self.send(Frame::new("ack").with("id", id).with("bytes", got.len()));
                }
                other => panic!("unexpected {other} frame in a fetch"),
            }
        }
    }

    /// Sends a call as `become` (a JSON object, or null) without waiting; returns its id.
    fn send_as(&mut self, target: Value, become_spec: Value, op: &str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            Frame::new("call")
                .with("id", id)
                .with("target", target)
                .with("become", become_spec)
                .with("op", op)
                .with("args", json!({})),
        );
        id
    }

    /// Sends a call as `become` and waits for its reply.
    fn call_as(&mut self, target: Value, become_spec: Value, op: &str) -> Frame {
        let id = self.send_as(target, become_spec, op);
        self.reply_to(id)
    }

    /// Reads the next frame, which must be the reply to `id`.
    fn reply_to(&mut self, id: u64) -> Frame {
        let reply = self.recv().unwrap();
        assert_eq!(reply.kind(), "reply", "{:?}", reply.header);
        assert_eq!(reply.header["id"], id);
        reply
    }

    fn status(&mut self) -> Vec<Value> {
        self.send(Frame::new("status"));
        let frame = self.recv().unwrap();
        assert_eq!(frame.kind(), "status");
        frame.header["actors"].as_array().unwrap().clone()
    }
}

fn local() -> Value {
    json!({"transport": "local", "name": "localhost", "timeout": 20})
}

fn error_kind(reply: &Frame) -> &str {
    reply.header["error"]["kind"].as_str().unwrap_or("")
}

fn sha1_hex(data: &[u8]) -> String {
    sha1_smol::Sha1::from(data).digest().to_string()
}

/// Whether a process is gone (or a zombie nobody reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn hello_answers_and_version_mismatch_closes() {
    let mux = Mux::start();
    let _ok = mux.client();
    let mut old = mux.raw_client();
    old.send(Frame::new("hello").with("version", 2).with("pid", 1));
    let err = old.recv().unwrap();
    assert_eq!(err.kind(), "error");
    assert_eq!(
        err.header["message"],
        "protocol version 2 is not supported (mux speaks 1)"
    );
    assert!(old.recv().is_err(), "connection should be closed");

    let mut early = mux.raw_client();
    early.send(Frame::new("status"));
    assert_eq!(early.recv().unwrap().kind(), "error");
    assert!(early.recv().is_err());
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let mux = Mux::start();
    let mut good = mux.client();

    let mut garbage = mux.client();
    garbage
        .stream
        .write_all(b"\x00\x00\x00\x05\x00\x00\x00\x00nope!")
        .unwrap();
    let err = garbage.recv().unwrap();
    assert_eq!(err.kind(), "error");
    assert!(err.header["message"]
        .as_str()
        .unwrap()
        .contains("bad frame header"));
    assert!(garbage.recv().is_err());

    let mut oversized = mux.client();
    oversized
        .stream
        .write_all(b"\x7f\xff\xff\xff\x00\x00\x00\x00")
        .unwrap();
    let err = oversized.recv().unwrap();
    assert!(err.header["message"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit"));
    assert!(oversized.recv().is_err());

    let mut untyped = mux.client();
    untyped
        .stream
        .write_all(b"\x00\x00\x00\x02\x00\x00\x00\x00{}")
        .unwrap();
    assert_eq!(untyped.recv().unwrap().kind(), "error");

    let reply = good.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
}

#[test]
fn ping_and_exec_command_on_local_target() {
    let mux = Mux::start();
    let mut client = mux.client();
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    let agent_pid = reply.header["result"]["pid"].as_u64().unwrap();
    assert!(agent_pid > 0);

    let args = json!({"cmd": "echo hi; echo err >&2; exit 3", "emulate_tty": false});
    let reply = client.call(local(), "exec_command", args, &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.header["result"]["rc"], 3);
    assert_eq!(reply.header["result"]["stdout_len"], 3);
    assert_eq!(reply.body.as_ref(), b"hi\nerr\n");

    // stdin goes through as the call body.
    let args = json!({"cmd": "cat", "emulate_tty": false});
    let reply = client.call(local(), "exec_command", args, &[], b"piped\n");
    assert_eq!(reply.body.as_ref(), b"piped\n");

    // Same key (only the name differs): same connection, same agent.
    let mut renamed = local();
    renamed["name"] = json!("other-name");
    let reply = client.call(renamed, "ping", json!({}), &[], b"");
    assert_eq!(reply.header["result"]["pid"].as_u64(), Some(agent_pid));

    let actors = client.status();
    let target = actors.iter().find(|a| a["kind"] == "target").unwrap();
    assert_eq!(target["state"], "ready");
    assert_eq!(target["key"], "local");
    assert!(actors
        .iter()
        .any(|a| a["kind"] == "interpreter" && a["interp"] == 0));
}

#[test]
fn calls_in_flight_are_multiplexed() {
    let mux = Mux::start();
    let mut client = mux.client();
    for id in [1u64, 2] {
        let cmd = if id == 1 {
            "sleep 1; echo slow"
        } else {
            "echo fast"
        };
        client.send(
            Frame::new("call")
                .with("id", id)
                .with("target", local())
                .with("op", "exec_command")
                .with("args", json!({"cmd": cmd, "emulate_tty": false})),
        );
    }
    let first = client.recv().unwrap();
    let second = client.recv().unwrap();
    assert_eq!(
        first.header["id"], 2,
        "the fast call should overtake the slow one"
    );
    assert_eq!(first.body.as_ref(), b"fast\n");
    assert_eq!(second.header["id"], 1);
    assert_eq!(second.body.as_ref(), b"slow\n");
}

#[test]
fn blobs_are_uploaded_once_and_missing_ones_reported() {
    // The stand-in agent counts the blob frames that reach it, so a mux that sent the blob
    // with every call would fail here.
    let agent = standin_agent();
    let mux = Mux::start_with(&[("FERROGEN_AGENT_SOURCE", &agent)]);
    let mut client = mux.client();
    // Module blobs are base64 text (docs/protocol.md).
    let content = b"bW9kdWxlIHppcCBieXRlcw==";
    let hash = sha1_hex(content);
    let reply = client.call(local(), "ping", json!({}), &[&hash], b"");
    assert_eq!(reply.header["ok"], false);
    assert_eq!(error_kind(&reply), "missing_blob");
    assert_eq!(reply.header["error"]["hashes"], json!([hash]));

    // A blob whose body does not match its name is dropped.
    client.send(
        Frame::new("blob")
            .with("hash", sha1_hex(b"other"))
            .with_body(&b"x"[..]),
    );
    client.send(
        Frame::new("blob")
            .with("hash", hash.clone())
            .with_body(&content[..]),
    );
    let reply = client.call(local(), "ping", json!({}), &[&hash], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    let reply = client.call(local(), "ping", json!({}), &[&hash], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);

    let actors = client.status();
    let interp = actors.iter().find(|a| a["kind"] == "interpreter").unwrap();
    assert_eq!(interp["blobs"], 1);
    let received = &stats(&mut client)["blobs"];
    assert_eq!(
        received,
        &json!([{"hash": hash, "interp": 0, "cached": false, "len": content.len()}]),
        "the blob crosses the agent link once"
    );
}

#[test]
fn bad_calls_get_bad_request() {
    let mux = Mux::start();
    let mut client = mux.client();
    client.send(Frame::new("call").with("id", 5).with("op", "ping"));
    let reply = client.recv().unwrap();
    assert_eq!(reply.header["id"], 5);
    assert_eq!(error_kind(&reply), "bad_request");
    // The connection stays usable.
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true);
}

#[test]
fn dead_agent_fails_in_flight_calls_and_next_call_reconnects() {
    let mux = Mux::start();
    let mut client = mux.client();
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    let agent_pid = reply.header["result"]["pid"].as_u64().unwrap();
    let args = json!({"cmd": format!("kill -9 {agent_pid}; sleep 5"), "emulate_tty": false});
    let reply = client.call(local(), "exec_command", args, &[], b"");
    assert_eq!(error_kind(&reply), "connection_lost", "{:?}", reply.header);
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("localhost"), "{message}");
    assert!(message.contains("signal 9"), "{message}");

    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_ne!(reply.header["result"]["pid"].as_u64().unwrap(), agent_pid);
}

#[test]
fn unreachable_ssh_target_reports_ssh_stderr() {
    let mux = Mux::start();
    let mut client = mux.client();
    let target = json!({"transport": "ssh", "host": "127.0.0.1", "port": 1,
                        "ssh_executable": "ssh", "host_key_checking": false, "timeout": 5,
                        "name": "nowhere"});
    let reply = client.call(target, "ping", json!({}), &[], b"");
    assert_eq!(error_kind(&reply), "unreachable", "{:?}", reply.header);
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("Connection refused"), "{message}");
    assert!(message.contains("exit status 255"), "{message}");
}

/// Polls the status table until a target is ready; returns its agent pid.
fn wait_for_ready_target(client: &mut Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = client.status();
        let ready = rows
            .iter()
            .find(|row| row["kind"] == "target" && row["state"] == "ready");
        if let Some(pid) = ready.and_then(|row| row["agent_pid"].as_u64()) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no target became ready: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connect_brings_a_target_up_before_its_first_call() {
    let mux = Mux::start();
    let mut client = mux.client();
    client.send(Frame::new("connect").with("target", local()));
    let agent_pid = wait_for_ready_target(&mut client);
    // Another connect and the call itself use that same connection.
    client.send(Frame::new("connect").with("target", local()));
    let ping = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(ping.header["result"]["pid"], agent_pid, "{:?}", ping.header);
    let targets = client.status();
    assert_eq!(
        targets.iter().filter(|row| row["kind"] == "target").count(),
        1,
        "{targets:?}"
    );
    // A connect that fails is silent; the call after it gets the failure.
    let nowhere = json!({"transport": "ssh", "host": "127.0.0.1", "port": 1,
                         "ssh_executable": "ssh", "host_key_checking": false, "timeout": 5,
                         "name": "nowhere"});
    client.send(Frame::new("connect").with("target", nowhere.clone()));
    let reply = client.call(nowhere, "ping", json!({}), &[], b"");
    assert_eq!(error_kind(&reply), "unreachable", "{:?}", reply.header);
}

#[test]
fn a_missing_named_python_falls_back_to_the_systems() {
    // As vanilla Ansible: commands still run (modules built for the missing interpreter are
    // refused by the agent and go through the shell, which fails them as vanilla's does).
    let mux = Mux::start();
    let mut client = mux.client();
    let target = json!({"transport": "local", "python": "/nonexistent/python3"});
    let reply = client.call(target, "ping", json!({}), &[], b"");
    assert!(reply.header.get("error").is_none(), "{:?}", reply.header);
    assert!(
        reply.header["result"]["pid"].as_u64().is_some(),
        "{:?}",
        reply.header
    );
}

#[test]
fn ssh_target_without_python_is_no_interpreter() {
    // ssh itself works; the remote shell cannot find the interpreter, as on a host with none.
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("ssh");
    std::fs::write(
        &ssh,
        "#!/bin/sh\necho 'sh: 1: /usr/bin/python3: not found' >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mux = Mux::start();
    let mut client = mux.client();
    let target = json!({"transport": "ssh", "host": "bare", "ssh_executable": ssh,
                        "python": "/usr/bin/python3", "timeout": 5, "name": "bare"});
    let reply = client.call(target, "ping", json!({}), &[], b"");
    assert_eq!(error_kind(&reply), "no_interpreter", "{:?}", reply.header);
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("/usr/bin/python3: not found"), "{message}");
}

/// A stand-in agent that never sends `ready`.
const SLEEPY_AGENT: &str =
    "import sys, time\nsys.stderr.write('sleepy agent\\n')\nsys.stderr.flush()\ntime.sleep(60)\n";

/// Writes a stand-in agent's source into `dir`; returns its path for FERROGEN_AGENT_SOURCE.
fn write_agent(dir: &tempfile::TempDir, source: &str) -> String {
    let agent = dir.path().join("standin.py");
    std::fs::write(&agent, source).unwrap();
    agent.to_str().unwrap().to_owned()
}

/// Starts a mux whose agent is `source` and pings a local target with `timeout` through it.
fn ping_with_standin_agent(source: &str, timeout: u64) -> Frame {
    let dir = tempfile::tempdir().unwrap();
    let agent = write_agent(&dir, source);
    let mux = Mux::start_with(&[("FERROGEN_AGENT_SOURCE", &agent)]);
    let mut client = mux.client();
    // A named interpreter: discovery may try (slow) pyenv shims first, which is not what
    // these tests time.
    let target = json!({"transport": "local", "python": "python3", "timeout": timeout});
    client.call(target, "ping", json!({}), &[], b"")
}

#[test]
fn agent_that_never_gets_ready_times_out() {
    // Long enough for the stand-in's Python to start and speak on a loaded machine: the
    // message names the timeout it was given (the paused-clock test in in_process.rs times it).
    let reply = ping_with_standin_agent(SLEEPY_AGENT, 4);
    assert_eq!(error_kind(&reply), "unreachable");
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("did not start within 4s"), "{message}");
    assert!(message.contains("sleepy agent"), "{message}");
}

/// A stand-in agent that says `ready` only once a call has arrived, then answers it.
const AGENT_THAT_WAITS_FOR_A_CALL: &str = r#"import json, os, struct, sys
PREFIX = struct.Struct('>II')
stdin = sys.stdin.buffer
out = os.fdopen(os.dup(1), 'wb')

def read_exact(n):
    data = stdin.read(n)
    if len(data) < n:
        sys.exit(0)
    return data

def send(header):
    data = json.dumps(header).encode()
    out.write(PREFIX.pack(len(data), 0) + data)
    out.flush()

header_len, body_len = PREFIX.unpack(read_exact(PREFIX.size))
call = json.loads(read_exact(header_len))
read_exact(body_len)
send({'type': 'ready', 'pid': os.getpid(), 'python': sys.executable, 'user': 'login',
      'home': '/', 'tmpdir': '/tmp'})
send({'type': 'reply', 'id': call['id'], 'ok': True, 'result': {'op': call['op']}})
stdin.read()
"#;

#[test]
fn a_call_goes_to_the_agent_before_its_ready_frame() {
    let reply = ping_with_standin_agent(AGENT_THAT_WAITS_FOR_A_CALL, 5);
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.header["result"]["op"], "ping");
}

/// Waits for the mux to exit cleanly within 2 s, and for its transport to be gone by 3 s.
fn assert_mux_and_transport_exit(mux: &mut Mux, transport_pid: u32) {
    let started = Instant::now();
    loop {
        if let Some(status) = mux.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "mux still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while !process_gone(transport_pid) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "transport survived the mux"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stdin_eof_stops_mux_and_its_transports() {
    let mut mux = Mux::start();
    let mut client = mux.client();
    client.call(local(), "ping", json!({}), &[], b"");
    let actors = client.status();
    let transport_pid = actors[0]["pid"].as_u64().unwrap() as u32;
    assert!(!process_gone(transport_pid));

    drop(mux.stdin.take());
    assert_mux_and_transport_exit(&mut mux, transport_pid);
    assert!(!mux.socket.exists(), "socket left behind");
}

#[test]
fn status_command_prints_table() {
    let mux = Mux::start();
    let mut client = mux.client();
    client.call(local(), "ping", json!({}), &[], b"");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
        .args(["status", "--socket"])
        .arg(&mux.socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("KIND"), "{text}");
    assert!(text.contains("localhost"), "{text}");
    assert!(text.contains("ready"), "{text}");
}

#[test]
fn invalid_pool_size_exits_2() {
    let err = serve_with_invalid_setting("MITOGEN_POOL_SIZE", "zero");
    assert!(err.contains("zero"), "{err}");
}

/// Starts `serve` with `var=value`, expects exit status 2 and an error naming `var`;
/// returns the error.
fn serve_with_invalid_setting(var: &str, value: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
        .args(["serve", "--socket"])
        .arg(dir.path().join("s"))
        .env(var, value)
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{var}={value}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(var), "{err}");
    err
}

#[test]
fn shared_socket_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
        .args(["serve", "--socket"])
        .arg(dir.path().join("s"))
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0755"));
}

#[test]
fn version_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ferrogen-mux "));
}

#[test]
fn pool_size_bounds_simultaneous_connects() {
    let dir = tempfile::tempdir().unwrap();
    let agent = write_agent(&dir, SLEEPY_AGENT);
    let mux = Mux::start_with(&[
        ("FERROGEN_AGENT_SOURCE", &agent),
        ("MITOGEN_POOL_SIZE", "1"),
    ]);
    let mut client = mux.client();
    let started = Instant::now();
    // Two keys (timeouts differ), each failing after its timeout; with one permit the
    // second cannot start connecting before the first gave up.
    for (id, timeout) in [(1, 1.0), (2, 1.5)] {
        client.send(
            Frame::new("call")
                .with("id", id)
                .with("target", json!({"transport": "local", "timeout": timeout}))
                .with("op", "ping")
                .with("args", json!({})),
        );
    }
    let first = client.recv().unwrap();
    assert_eq!(first.header["id"], 1);
    let second = client.recv().unwrap();
    assert_eq!(second.header["id"], 2);
    assert_eq!(error_kind(&second), "unreachable");
    assert!(
        started.elapsed() >= Duration::from_millis(2300),
        "second target connected in parallel: {:?}",
        started.elapsed()
    );
}

/// A process's `MITOGEN_ROUTER_DEBUG` log: `/tmp/mitogen.<pid>.log`, or the newest
/// `/tmp/mitogen.<pid>.<n>.log` when that name was another account's (pids are reused).
fn debug_log(pid: u64) -> PathBuf {
    let prefix = format!("mitogen.{pid}.");
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".log") && entry.path().is_file()
        })
        .max_by_key(|entry| entry.metadata().unwrap().modified().unwrap())
        .map(|entry| entry.path())
        .unwrap_or_else(|| panic!("no debug log for pid {pid}"))
}

#[test]
fn router_debug_writes_a_log_file() {
    let mux = Mux::start_with(&[("MITOGEN_ROUTER_DEBUG", "1")]);
    let mut client = mux.client();
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    let agent = reply.header["result"]["pid"].as_u64().unwrap();
    let mux_log = debug_log(mux.child.id().into());
    let log = std::fs::read_to_string(&mux_log).unwrap();
    let agent_log = debug_log(agent);
    let agent_said = std::fs::read_to_string(&agent_log).unwrap();
    // /tmp outlives the test, and a later process given one of these pids would meet them.
    let _ = std::fs::remove_file(&mux_log);
    let _ = std::fs::remove_file(&agent_log);
    assert!(log.contains("agent ready"), "{log}");
    assert!(
        agent_said.contains(&format!("agent ready: pid {agent}")),
        "{agent_said}"
    );
}

#[test]
fn sigterm_exits_cleanly_and_kills_transports() {
    let mux = Mux::start();
    let mut client = mux.client();
    client.call(local(), "ping", json!({}), &[], b"");
    let transport_pid = client.status()[0]["pid"].as_u64().unwrap() as u32;
    let mut mux = mux;
    let status = Command::new("kill")
        .args(["-TERM", &mux.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_mux_and_transport_exit(&mut mux, transport_pid);
}

#[test]
fn large_bodies_cross_both_links() {
    let mux = Mux::start();
    let mut client = mux.client();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let args = json!({"cmd": "cat", "emulate_tty": false});
    let reply = client.call(local(), "exec_command", args, &[], &data);
    assert_eq!(reply.header["result"]["stdout_len"], data.len());
    // Over 1 MiB, the output is fetched in chunks (docs/protocol.md, "Streamed output").
    let output = reply.header["result"]["output"].clone();
    assert!(
        output.is_u64() && reply.body.is_empty(),
        "{:?}",
        reply.header
    );
    let (fetched, stdout) = client.fetch_streamed(local(), json!({"output": output}));
    assert_eq!(fetched.header["ok"], true, "{:?}", fetched.header);
    assert!(stdout == data[..], "stdin/stdout corrupted");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.bin");
    let args = json!({"path": path.to_str().unwrap()});
    let reply = client.call(local(), "put_file", args.clone(), &[], &data);
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    let (reply, fetched) = client.fetch_streamed(local(), args);
    assert_eq!(reply.header["result"]["size"], data.len());
    assert!(fetched == data[..], "put/fetch corrupted");
}

// --- Become interpreters (issue 3), reset, cancellation (issue 5) ---------------------------

/// The stand-in agent that fakes become interpreters (see the file's docstring).
fn standin_agent() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/standin_agent.py").to_owned()
}

fn sudo(user: &str) -> Value {
    json!({"method": "sudo", "user": user, "exe": null, "flags": "-H -S -n",
           "password": null, "python": null})
}

/// The stand-in agent's counters, asked through the login interpreter.
fn stats(client: &mut Client) -> Value {
    let reply = client.call_as(local(), Value::Null, "stats");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    reply.header["result"].clone()
}

#[test]
fn become_thirty_accounts_stay_within_max_interpreters() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[
        ("FERROGEN_AGENT_SOURCE", &agent),
        ("MITOGEN_MAX_INTERPRETERS", "5"),
    ]);
    let mut client = mux.client();
    let login = client.call_as(local(), Value::Null, "ping");
    assert_eq!(login.header["result"]["interp"], 0);
    let mut every_other = None;
    for i in 0..30 {
        let user = format!("u{i}");
        let reply = client.call_as(local(), sudo(&user), "ping");
        assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
        assert_eq!(reply.header["result"]["user"], user.as_str());
        assert_ne!(reply.header["result"]["interp"], 0);
        // An account used between every other task survives the churn.
        let shared = client.call_as(local(), sudo("postgres"), "ping");
        let interp = shared.header["result"]["interp"].clone();
        assert_eq!(*every_other.get_or_insert(interp.clone()), interp);
        if i % 7 == 0 {
            let login = client.call_as(local(), Value::Null, "ping");
            assert_eq!(login.header["result"]["interp"], 0);
        }
    }
    let stats = stats(&mut client);
    assert!(stats["max_alive"].as_u64().unwrap() <= 5, "{stats}");
    assert!(stats["alive"].as_array().unwrap().len() <= 5, "{stats}");
    assert_eq!(stats["spawns"], 31, "{stats}");

    let actors = client.status();
    let become_rows: Vec<_> = actors
        .iter()
        .filter(|a| a["kind"] == "interpreter" && a["interp"] != 0)
        .collect();
    assert!(become_rows.len() <= 5, "{actors:?}");
    let row = become_rows
        .iter()
        .find(|a| a["account"] == "sudo:u29")
        .expect("u29 is the most recent account");
    assert_eq!(row["state"], "idle");
    assert!(row["last_used"].as_f64().is_some(), "{row}");
    assert!(actors
        .iter()
        .any(|a| a["kind"] == "interpreter" && a["account"] == "login"));
}

#[test]
fn busy_become_interpreter_is_never_evicted() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[
        ("FERROGEN_AGENT_SOURCE", &agent),
        ("MITOGEN_MAX_INTERPRETERS", "2"),
    ]);
    let mut holder = mux.client();
    let held = holder.send_as(local(), sudo("busy"), "hold");
    let mut client = mux.client();
    let mut busy_interp = None;
    for user in ["b", "c", "d", "e"] {
        let reply = client.call_as(local(), sudo(user), "ping");
        assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
        let actors = client.status();
        let busy = actors
            .iter()
            .find(|a| a["account"] == "sudo:busy")
            .expect("the busy interpreter is alive");
        assert_eq!(busy["state"], "busy");
        busy_interp = busy["interp"].as_u64();
    }
    let stats = stats(&mut client);
    assert!(stats["max_alive"].as_u64().unwrap() <= 2, "{stats}");
    let busy_interp = busy_interp.unwrap();
    assert!(
        !stats["stops"]
            .as_array()
            .unwrap()
            .contains(&json!(busy_interp)),
        "{stats}"
    );
    client.call_as(local(), Value::Null, "release");
    let reply = holder.reply_to(held);
    assert_eq!(
        reply.header["result"]["released"], true,
        "{:?}",
        reply.header
    );
}

#[test]
fn all_busy_goes_over_the_limit_and_comes_back() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[
        ("FERROGEN_AGENT_SOURCE", &agent),
        ("MITOGEN_MAX_INTERPRETERS", "1"),
    ]);
    let mut a = mux.client();
    let mut b = mux.client();
    let held_a = a.send_as(local(), sudo("a"), "hold");
    let held_b = b.send_as(local(), sudo("b"), "hold");
    let mut client = mux.client();
    // Wait until both are spawned and holding.
    let started = Instant::now();
    loop {
        let stats = stats(&mut client);
        if stats["alive"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{stats}");
        std::thread::sleep(Duration::from_millis(20));
    }
    client.call_as(local(), Value::Null, "release");
    assert_eq!(a.reply_to(held_a).header["ok"], true);
    assert_eq!(b.reply_to(held_b).header["ok"], true);
    let stats = stats(&mut client);
    assert_eq!(stats["max_alive"], 2, "{stats}");
    assert_eq!(stats["alive"].as_array().unwrap().len(), 1, "{stats}");
}

#[test]
fn a_become_call_goes_to_the_agent_before_spawned() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[("FERROGEN_AGENT_SOURCE", &agent)]);
    let mut client = mux.client();
    // The stand-in spawns "late" accounts only once their first call has arrived.
    let reply = client.call_as(local(), sudo("late1"), "ping");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.header["result"]["user"], "late1");
    let reply = client.call_as(local(), sudo("late1"), "ping");
    assert_eq!(reply.header["result"]["user"], "late1");
    assert_eq!(stats(&mut client)["spawns"], 1);
}

#[test]
fn failed_become_fails_its_calls_and_the_next_call_retries() {
    let agent = standin_agent();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mux = Mux::start_full(
        &[("FERROGEN_AGENT_SOURCE", &agent), ("FERROGEN_LOG", "trace")],
        Stdio::from(log.reopen().unwrap()),
    );
    let mut client = mux.client();
    let mut bad = sudo("bad1");
    bad["password"] = json!("Sup3r-Secret-pw");
    let first = client.send_as(local(), bad.clone(), "ping");
    let second = client.send_as(local(), bad.clone(), "ping");
    for id in [first, second] {
        let reply = client.reply_to(id);
        assert_eq!(error_kind(&reply), "become_failed", "{:?}", reply.header);
        let message = reply.header["error"]["message"].as_str().unwrap();
        assert!(message.contains("incorrect password"), "{message}");
        assert!(message.contains("sudo:bad1 on localhost"), "{message}");
    }
    let reply = client.call_as(local(), bad, "ping");
    assert_eq!(error_kind(&reply), "become_failed");
    let mut good = sudo("good");
    good["password"] = json!("Sup3r-Secret-pw");
    let reply = client.call_as(local(), good, "ping");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);

    let stats = stats(&mut client);
    // One spawn per attempt: the first two calls shared one, the third retried.
    assert_eq!(
        stats["passwords"],
        json!(["Sup3r-Secret-pw", "Sup3r-Secret-pw", "Sup3r-Secret-pw"]),
        "{stats}"
    );
    let status = format!("{:?}", client.status());
    assert!(!status.contains("Sup3r-Secret-pw"), "{status}");
    drop(mux);
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(log.contains("spawning become interpreter"), "{log}");
    assert!(!log.contains("Sup3r-Secret-pw"), "password in the mux log");
}

#[test]
fn lost_become_interpreter_fails_its_calls_and_is_respawned() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[("FERROGEN_AGENT_SOURCE", &agent)]);
    let mut client = mux.client();
    let first = client.call_as(local(), sudo("app"), "ping");
    let interp = first.header["result"]["interp"].as_u64().unwrap();
    let reply = client.call_as(local(), sudo("app"), "die");
    assert_eq!(error_kind(&reply), "connection_lost", "{:?}", reply.header);
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("sudo:app on localhost"), "{message}");
    assert!(message.contains("python exited"), "{message}");
    let again = client.call_as(local(), sudo("app"), "ping");
    assert_eq!(again.header["ok"], true);
    assert_ne!(again.header["result"]["interp"].as_u64().unwrap(), interp);
}

#[test]
fn reset_closes_the_connection_and_the_next_call_reconnects() {
    let mux = Mux::start();
    let mut client = mux.client();
    let pid = client.call(local(), "ping", json!({}), &[], b"").header["result"]["pid"]
        .as_u64()
        .unwrap();
    let mut busy = mux.client();
    busy.send(
        Frame::new("call")
            .with("id", 1)
            .with("target", local())
            .with("op", "exec_command")
            .with("args", json!({"cmd": "sleep 30", "emulate_tty": false})),
    );
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    client.send(Frame::new("reset").with("id", 77).with("target", local()));
    let reply = client.recv().unwrap();
    assert_eq!(reply.header["id"], 77);
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert!(started.elapsed() < Duration::from_secs(5));
    let lost = busy.recv().unwrap();
    assert_eq!(error_kind(&lost), "connection_lost", "{:?}", lost.header);
    assert!(process_gone(pid as u32), "agent survived the reset");
    let again = client.call(local(), "ping", json!({}), &[], b"");
    assert_ne!(again.header["result"]["pid"].as_u64().unwrap(), pid);
    // Resetting a target with no connection is fine too.
    client.send(
        Frame::new("reset")
            .with("id", 78)
            .with("target", json!({"transport": "local", "timeout": 3})),
    );
    assert_eq!(client.recv().unwrap().header["ok"], true);
}

#[test]
fn departed_worker_calls_are_cancelled_on_the_agent() {
    let agent = standin_agent();
    let mux = Mux::start_with(&[("FERROGEN_AGENT_SOURCE", &agent)]);
    let mut client = mux.client();
    client.call_as(local(), Value::Null, "ping");
    let mut doomed = mux.client();
    doomed.send_as(local(), Value::Null, "hold");
    doomed.send_as(local(), sudo("x"), "hold");
    std::thread::sleep(Duration::from_millis(300));
    drop(doomed);
    let started = Instant::now();
    loop {
        let stats = stats(&mut client);
        if stats["cancelled"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The held calls' late replies are dropped; the connection keeps working.
    client.call_as(local(), Value::Null, "release");
    let reply = client.call_as(local(), sudo("x"), "ping");
    assert_eq!(reply.header["ok"], true);
    let actors = client.status();
    let x = actors.iter().find(|a| a["account"] == "sudo:x").unwrap();
    assert_eq!(x["state"], "idle", "{x}");
}

#[test]
fn invalid_max_interpreters_exits_2() {
    for bad in ["0", "lots"] {
        let err = serve_with_invalid_setting("MITOGEN_MAX_INTERPRETERS", bad);
        assert!(err.contains(bad), "{err}");
    }
}

// --- Stack dumps (issue 5) -----------------------------------------------------------------

#[test]
fn kill_segv_dumps_stacks_and_actors_and_keeps_serving() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mux = Mux::start_full(&[], Stdio::from(log.reopen().unwrap()));
    let mut client = mux.client();
    client.call(local(), "ping", json!({}), &[], b"");
    client.send(
        Frame::new("call")
            .with("id", 100)
            .with("target", local())
            .with("op", "exec_command")
            .with(
                "args",
                json!({"cmd": "sleep 2; echo done", "emulate_tty": false}),
            ),
    );
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        let status = Command::new("kill")
            .args(["-SEGV", &mux.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let reply = client.reply_to(100);
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.body.as_ref(), b"done\n");
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true);

    // The first dump loads the binary's debug info to symbolize, which can take seconds on a
    // loaded machine: wait for both dumps to be complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if text.matches("=== end of dump ===").count() >= 2 || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        text.matches("stack dump (requested with kill -SEGV)")
            .count(),
        2,
        "{text}"
    );
    assert!(text.contains("\"stack-dump\" ---"), "{text}");
    assert!(text.contains("\"stdin-watch\" ---"), "{text}");
    assert!(text.contains("tokio::runtime"), "{text}");
    assert!(!text.contains("(no answer"), "{text}");
    let actors = &text[text.find("=== actors ===").expect("actor table")..];
    assert!(
        actors.contains("running exec_command for localhost"),
        "{actors}"
    );
    assert!(actors.contains("=== end of dump ==="), "{actors}");
}

#[test]
fn periodic_dumps_go_to_the_log() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mux = Mux::start_full(
        &[
            ("MITOGEN_DUMP_THREAD_STACKS", "0.3"),
            ("FERROGEN_LOG", "warn,ferrogen::dump=info"),
        ],
        Stdio::from(log.reopen().unwrap()),
    );
    let mut client = mux.client();
    client.call(local(), "ping", json!({}), &[], b"");
    // Symbolizing a debug build's stacks takes a while: wait for two dumps.
    let started = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if text.matches("=== end of dump ===").count() >= 2 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.contains("stack dump (MITOGEN_DUMP_THREAD_STACKS)"),
        "{text}"
    );
    assert!(text.contains("localhost"), "{text}");
}

#[test]
fn invalid_dump_interval_exits_2() {
    serve_with_invalid_setting("MITOGEN_DUMP_THREAD_STACKS", "-1");
}

/// A worker killed mid-call, against the real agent: that task's process is killed on the
/// target and the interpreter serves the next worker at once.
#[test]
fn departed_worker_task_is_killed_by_the_real_agent() {
    let mux = Mux::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("task.pid");
    let mut first = mux.client();
    assert_eq!(
        first.call(local(), "ping", json!({}), &[], b"").header["ok"],
        true
    );
    first.send(
        Frame::new("call")
            .with("id", 99u64)
            .with("target", local())
            .with("op", "exec_command")
            .with(
                "args",
                json!({"cmd": format!("echo $$ > {}; exec sleep 60", pid_file.display())}),
            )
            .with("blobs", json!([])),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "task {pid} still runs after its worker left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = mux.client();
    let started = Instant::now();
    let reply = second.call(
        local(),
        "exec_command",
        json!({"cmd": "echo next"}),
        &[],
        b"",
    );
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.body.as_ref(), b"next\n");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// --- Detached calls and interpreter_info (issue 4: round trips per file) --------------------

#[test]
fn interpreter_info_is_answered_from_the_agents_ready_frame() {
    let mux = Mux::start();
    let mut client = mux.client();
    let reply = client.call(local(), "interpreter_info", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    let info = &reply.header["result"];
    let tmpdir = info["tmpdir"].as_str().unwrap();
    assert!(std::path::Path::new(tmpdir).is_dir(), "{info}");
    let ping = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(info["pid"], ping.header["result"]["pid"]);
}

#[test]
fn detached_calls_are_acknowledged_at_once_and_a_failure_fails_the_next_call() {
    let mux = Mux::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("made-by-detached-call");
    let mut client = mux.client();
    let detached = |client: &mut Client, id: u64, args: Value| {
        client.send(
            Frame::new("call")
                .with("id", id)
                .with("target", local())
                .with("op", "exec_command")
                .with("args", args)
                .with("detached", true),
        );
        let ack = client.reply_to(id);
        assert_eq!(ack.header["result"]["detached"], true, "{:?}", ack.header);
    };
    // Acknowledged before it runs, yet it runs before the next call on that interpreter.
    let slow = format!("sleep 0.3; touch {}", marker.display());
    detached(&mut client, 100, json!({"cmd": slow}));
    let args = json!({"cmd": format!("test -e {}", marker.display())});
    let reply = client.call(local(), "exec_command", args.clone(), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    // A detached call that fails (here: a malformed one) fails the next answered call...
    detached(&mut client, 101, json!({"no_cmd": true}));
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(error_kind(&reply), "detached_failed", "{:?}", reply.header);
    let message = reply.header["error"]["message"].as_str().unwrap();
    assert!(message.contains("exec_command"), "{message}");
    // ...once only.
    let reply = client.call(local(), "ping", json!({}), &[], b"");
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    // Streams cannot be detached.
    client.send(
        Frame::new("call")
            .with("id", 102)
            .with("target", local())
            .with("op", "put_begin")
            .with("args", json!({"path": "/nonexistent"}))
            .with("detached", true),
    );
    assert_eq!(error_kind(&client.reply_to(102)), "bad_request");
}
