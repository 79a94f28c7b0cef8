//! Golden frames shared with the Python client: the bytes under `tests/golden/` must be
//! exactly what this crate encodes, and must decode back to the same frames.
//!
//! Regenerate after an intentional format change with
//! `FERROGEN_BLESS=1 cargo test -p worker-ipc --test golden`.

use std::{fs, path::PathBuf};

use bytes::Bytes;
use serde_json::json;
use worker_ipc::{
    Blob, Call, Frame, Hello, Reply, Request, Response, TargetSpec, Transport, PROTOCOL_VERSION,
};

/// The frames, by file stem.
fn golden_frames() -> Vec<(&'static str, Frame)> {
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        pid: 4242,
    });
    let mut target = TargetSpec::local();
    target.transport = Transport::Ssh;
    target.host = Some("127.0.0.1".into());
    target.port = Some(2222);
    target.user = Some("root".into());
    target.ssh_args = vec!["-o".into(), "ControlMaster=no".into()];
    target.host_key_checking = false;
    target.python = Some("/usr/bin/python3".into());
    target.name = Some("web1".into());
    let call = Request::Call(Box::new(Call {
        id: 7,
        target,
        become_spec: None,
        op: "exec_command".into(),
        args: json!({"cmd": "cat", "emulate_tty": false}),
        blobs: vec!["da39a3ee5e6b4b0d3255bfef95601890afd80709".into()],
        task: None,
        detached: false,
    }));
    let reply = Response::Reply(Reply {
        id: 7,
        ok: true,
        result: Some(json!({"rc": 0, "stdout_len": 6})),
        error: None,
    });
    let blob = Request::Blob(Blob {
        hash: "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into(),
    });
    vec![
        ("hello", Frame::from_message(&hello, Bytes::new()).unwrap()),
        (
            "call",
            Frame::from_message(&call, Bytes::from_static(b"stdin\n")).unwrap(),
        ),
        (
            "reply",
            Frame::from_message(&reply, Bytes::from_static(b"hello\n")).unwrap(),
        ),
        (
            "blob",
            Frame::from_message(&blob, Bytes::from_static(b"hello")).unwrap(),
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_frames_match_bytes() {
    let bless = std::env::var_os("FERROGEN_BLESS").is_some();
    for (name, frame) in golden_frames() {
        let path = golden_dir().join(format!("{name}.bin"));
        let bytes = frame.to_bytes().unwrap();
        if bless {
            fs::create_dir_all(golden_dir()).unwrap();
            fs::write(&path, &bytes).unwrap();
            continue;
        }
        let stored = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stored,
            bytes.as_ref(),
            "{} differs from the encoder's output",
            path.display()
        );
        let decoded = Frame::read_from(&mut &stored[..]).unwrap();
        assert_eq!(decoded, frame, "{name} does not decode back");
    }
}

#[test]
fn golden_blob_hash_is_sha1_of_body() {
    // sha1("hello"), so the Python side can check its hashing against the same file.
    let frames = golden_frames();
    let (_, blob) = frames.iter().find(|(n, _)| *n == "blob").unwrap();
    assert_eq!(blob.body.as_ref(), b"hello");
    assert_eq!(
        blob.header["hash"],
        "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
    );
}
