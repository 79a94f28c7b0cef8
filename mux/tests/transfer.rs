//! Streamed file transfer through the real `ferrogen-mux` and a local agent
//! (docs/protocol.md, "File transfer"): a put the mux reads from its source file, a fetch with
//! flow control, the status row of a transfer in progress, and a worker that goes away mid-put.

use std::{
    io::{Read, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use worker_ipc::{Frame, CHUNK_MAX, TRANSFER_WINDOW};

/// A running mux, killed on drop.
struct Mux {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mux {
    fn start() -> Mux {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.path().join("mux.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogen-mux"))
            .args(["serve", "--socket"])
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {}
        Mux {
            child,
            socket,
            _dir: dir,
        }
    }

    fn client(&self) -> UnixStream {
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        send(
            &mut stream,
            Frame::new("hello").with("version", 1).with("pid", 1),
        );
        assert_eq!(recv(&mut stream).kind(), "hello");
        stream
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(stream: &mut UnixStream, frame: Frame) {
    stream.write_all(&frame.to_bytes().unwrap()).unwrap();
}

fn recv(stream: &mut UnixStream) -> Frame {
    Frame::read_from(stream).unwrap()
}

fn local() -> Value {
    json!({"transport": "local", "name": "localhost", "timeout": 20})
}

fn begin(stream: &mut UnixStream, id: u64, op: &str, args: Value) {
    send(
        stream,
        Frame::new("call")
            .with("id", id)
            .with("target", local())
            .with("op", op)
            .with("args", args),
    );
}

fn sha1_hex(data: &[u8]) -> String {
    sha1_smol::Sha1::from(data).digest().to_string()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".ferrogen-"))
        .collect()
}

/// Writes `content` to a source file in `dir`; returns `put_begin`'s `source` argument for it.
fn source_file(dir: &Path, content: &[u8]) -> Value {
    let path = dir.join("source");
    std::fs::write(&path, content).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    json!({"path": path, "dev": meta.dev(), "ino": meta.ino()})
}

/// Begins put 1 of a 5-byte `source` to `dest`, which the mux must refuse at once: its error.
fn put_refused(stream: &mut UnixStream, dest: &Path, source: Value) -> Value {
    begin(
        stream,
        1,
        "put_begin",
        json!({"path": dest, "size": 5, "source": source}),
    );
    let reply = recv(stream);
    assert_eq!(reply.kind(), "reply");
    reply.header["error"].clone()
}

/// Puts `content` as a worker does: `put_begin` naming a file holding it, which the mux reads
/// itself, then `put_end` at once; returns the reply once the acks have come.
fn put(stream: &mut UnixStream, id: u64, path: &Path, content: &[u8]) -> Frame {
    let sources = tempfile::tempdir().unwrap();
    let source = source_file(sources.path(), content);
    begin(
        stream,
        id,
        "put_begin",
        json!({"path": path, "size": content.len(), "mode": 0o640, "source": source}),
    );
    send(
        stream,
        Frame::new("put_end")
            .with("id", id)
            .with("size", content.len())
            .with("sha1", sha1_hex(content)),
    );
    let mut acked = 0;
    loop {
        let frame = recv(stream);
        if frame.kind() == "reply" {
            assert_eq!(
                acked,
                content.len(),
                "every byte acknowledged before the reply"
            );
            return frame;
        }
        assert_eq!(frame.kind(), "ack");
        assert_eq!(frame.header["id"], id);
        acked = frame.header["bytes"].as_u64().unwrap() as usize;
    }
}

#[test]
fn put_then_fetch_a_streamed_file() {
    let mux = Mux::start();
    let mut stream = mux.client();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, b"old").unwrap();
    let content = data(9 * CHUNK_MAX + 123);

    let reply = put(&mut stream, 1, &dest, &content);
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.header["result"]["sha1"], sha1_hex(&content));
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(temps(dir.path()).is_empty());

    begin(&mut stream, 2, "fetch_begin", json!({"path": dest}));
    let mut got = Vec::new();
    let reply = loop {
        let frame = recv(&mut stream);
        if frame.kind() == "reply" {
            break frame;
        }
        assert_eq!(frame.kind(), "chunk");
        assert_eq!(frame.header["id"], 2);
        assert_eq!(frame.header["offset"], got.len());
        got.extend_from_slice(&frame.body);
        send(
            &mut stream,
            Frame::new("ack").with("id", 2).with("bytes", got.len()),
        );
    };
    assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
    assert_eq!(reply.header["result"]["size"], content.len());
    assert_eq!(got, content);
}

#[test]
fn concurrent_puts_from_several_workers_each_land_whole() {
    let mux = Mux::start();
    let dir = tempfile::tempdir().unwrap();
    let puts: Vec<_> = (0..4usize)
        .map(|n| {
            let mut stream = mux.client();
            let dest = dir.path().join(format!("dest-{n}"));
            let content = data(6 * CHUNK_MAX + n);
            std::thread::spawn(move || {
                let reply = put(&mut stream, 1, &dest, &content);
                assert_eq!(reply.header["ok"], true, "{:?}", reply.header);
                assert_eq!(std::fs::read(&dest).unwrap(), content);
            })
        })
        .collect();
    for put in puts {
        put.join().unwrap();
    }
    assert!(temps(dir.path()).is_empty());
}

#[test]
fn fetch_without_acks_stops_at_the_window_and_shows_in_status() {
    let mux = Mux::start();
    let mut stream = mux.client();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, data(10 * CHUNK_MAX)).unwrap();
    begin(&mut stream, 1, "fetch_begin", json!({"path": source}));
    let mut got = 0u64;
    while got < TRANSFER_WINDOW {
        let frame = recv(&mut stream);
        assert_eq!(frame.kind(), "chunk");
        got += frame.body.len() as u64;
    }
    assert_eq!(got, TRANSFER_WINDOW);
    // Nothing beyond the window: the next frame is the status answer.
    send(&mut stream, Frame::new("status"));
    let status = recv(&mut stream);
    assert_eq!(status.kind(), "status");
    let rows = status.header["actors"].as_array().unwrap().clone();
    let transfer = rows
        .iter()
        .find(|r| r["kind"] == "transfer")
        .unwrap_or_else(|| panic!("no transfer row in {rows:?}"));
    assert_eq!(transfer["direction"], "fetch");
    assert_eq!(transfer["total"], 10 * CHUNK_MAX);
    assert_eq!(transfer["sent"], TRANSFER_WINDOW);
    assert!(transfer["doing"].as_str().unwrap().contains("MB/s"));
}

#[test]
fn a_worker_gone_mid_put_leaves_no_temp_file() {
    let mux = Mux::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, b"old").unwrap();
    let sources = tempfile::tempdir().unwrap();
    let source = source_file(sources.path(), &data(8 * CHUNK_MAX));
    {
        let mut stream = mux.client();
        // No put_end: the agent keeps its temp file until the worker goes away.
        begin(
            &mut stream,
            1,
            "put_begin",
            json!({"path": dest, "size": 8 * CHUNK_MAX, "source": source}),
        );
        assert_eq!(recv(&mut stream).kind(), "ack");
        assert_eq!(temps(dir.path()).len(), 1);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !temps(dir.path()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(temps(dir.path()).is_empty(), "{:?}", temps(dir.path()));
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
}

#[test]
fn a_put_into_a_missing_directory_fails_at_once() {
    let mux = Mux::start();
    let mut stream = mux.client();
    let dir = tempfile::tempdir().unwrap();
    let source = source_file(dir.path(), b"hello");
    let error = put_refused(&mut stream, &dir.path().join("no/such/dir"), source);
    assert_eq!(error["kind"], "not_found");
    // A put_end still in flight for it is dropped; the session goes on.
    send(
        &mut stream,
        Frame::new("put_end")
            .with("id", 1)
            .with("size", 5)
            .with("sha1", sha1_hex(b"hello")),
    );
    send(&mut stream, Frame::new("status"));
    assert_eq!(recv(&mut stream).kind(), "status");
}

#[test]
fn a_put_whose_source_is_gone_fails_at_once_naming_it() {
    let mux = Mux::start();
    let mut stream = mux.client();
    let dir = tempfile::tempdir().unwrap();
    let mut source = source_file(dir.path(), b"hello");
    std::fs::remove_file(dir.path().join("source")).unwrap();
    source["path"] = json!(dir.path().join("source"));
    let error = put_refused(&mut stream, &dir.path().join("dest"), source);
    assert_eq!(error["kind"], "not_found");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("source"), "{message}");
    assert!(!dir.path().join("dest").exists());
}
