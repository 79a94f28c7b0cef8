//! The mux started in-process, its timers on tokio's paused clock: each test starts the
//! Registry (the mux's central actor) with an in-memory stand-in agent behind every target
//! connection, submits calls as worker sessions do, and looks at the frames the agent received.
//! Time moves only when a test advances it, so timeouts are exact and nothing sleeps.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::prelude::*;
use bytes::Bytes;
use ferrogen_mux::{
    bootstrap::Bootstrap,
    messages::{CallEvent, CallReply, CallSink, CancelCalls, StoreBlob, Submit},
    registry::Registry,
    transport::{ConnectRequest, Connecting, Connector, Started, TransportExit},
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncWriteExt, DuplexStream, WriteHalf},
    sync::{oneshot, watch},
};
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;
use worker_ipc::{Call, Frame, FrameCodec, TargetSpec};

/// How many times a wait lets the actors run before it gives up.
const PATIENCE: usize = 10_000;

/// What the stand-in agents received, shared with the test.
#[derive(Clone, Default)]
struct AgentLog(Arc<Mutex<Vec<Frame>>>);

impl AgentLog {
    fn frames(&self) -> Vec<Frame> {
        self.0.lock().unwrap().clone()
    }

    /// `(type, interp, op)` of each frame received, in order.
    fn summary(&self) -> Vec<(String, u64, String)> {
        self.frames()
            .iter()
            .map(|frame| {
                let field = |k: &str| frame.header.get(k).cloned().unwrap_or(Value::Null);
                (
                    frame.kind().to_owned(),
                    field("interp").as_u64().unwrap_or(0),
                    field("op").as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// Connects every target to an in-memory stand-in agent, which says `ready` once `gate` is
/// open and then answers: `ping` with its interpreter, `hold` never (until cancelled),
/// `spawn` with a `spawned` (except for accounts named `never...`), `stop` with a `stopped`.
struct InMemory {
    log: AgentLog,
    gate: watch::Receiver<bool>,
}

impl Connector for InMemory {
    fn connect(&self, _: ConnectRequest) -> Connecting {
        let (mux_side, agent_side) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(mux_side);
        let (exit_tx, exit) = oneshot::channel();
        let log = self.log.clone();
        let gate = self.gate.clone();
        tokio::spawn(async move {
            standin_agent(agent_side, log, gate).await;
            let _ = exit_tx.send(TransportExit::Exited(0));
        });
        Box::pin(async move {
            Ok(Started {
                pid: None,
                stdin: Box::new(write),
                stdin_pipe: None,
                stdout: Box::new(read),
                exit,
                hop_blobs: None,
            })
        })
    }
}

async fn send(writer: &mut WriteHalf<DuplexStream>, header: Value) {
    let Value::Object(header) = header else {
        unreachable!()
    };
    let frame = Frame {
        header,
        body: Bytes::new(),
    };
    let _ = writer.write_all(&frame.to_bytes().unwrap()).await;
}

async fn standin_agent(stream: DuplexStream, log: AgentLog, mut gate: watch::Receiver<bool>) {
    let (read, mut writer) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    let mut early = Vec::new();
    let mut ready = false;
    let mut silent = HashSet::new();
    loop {
        if !ready && *gate.borrow() {
            ready = true;
            send(
                &mut writer,
                json!({"type": "ready", "pid": 4242, "user": "login",
                                     "home": "/home/login", "tmpdir": "/tmp/agent"}),
            )
            .await;
            for frame in std::mem::take(&mut early) {
                answer(&mut writer, frame, &mut silent).await;
            }
        }
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = gate.changed(), if !ready => continue,
        };
        let Some(Ok(frame)) = frame else {
            return;
        };
        log.0.lock().unwrap().push(frame.clone());
        if frame.kind() == "shutdown" {
            return;
        }
        if ready {
            answer(&mut writer, frame, &mut silent).await;
        } else {
            early.push(frame);
        }
    }
}

/// Answers one frame; `silent` holds the interpreters that never came up, whose calls the
/// agent holds for ever.
async fn answer(writer: &mut WriteHalf<DuplexStream>, frame: Frame, silent: &mut HashSet<u64>) {
    let header = &frame.header;
    let interp = header.get("interp").cloned().unwrap_or(json!(0));
    if silent.contains(&interp.as_u64().unwrap_or(0)) {
        return;
    }
    match (frame.kind(), header.get("op").and_then(Value::as_str)) {
        ("call", Some("ping")) => {
            let result = json!({"interp": interp});
            send(
                writer,
                json!({"type": "reply", "id": header["id"], "ok": true, "result": result}),
            )
            .await;
        }
        // An account named "never..." never comes up: the agent says nothing.
        ("spawn", _)
            if header["become"]["user"]
                .as_str()
                .unwrap_or("")
                .starts_with("never") =>
        {
            silent.insert(interp.as_u64().unwrap_or(0));
        }
        ("spawn", _) => {
            let ready = json!({"pid": 5000 + interp.as_u64().unwrap_or(0)});
            send(
                writer,
                json!({"type": "spawned", "interp": interp, "ok": true, "ready": ready}),
            )
            .await;
        }
        ("stop", _) => send(writer, json!({"type": "stopped", "interp": interp})).await,
        _ => {}
    }
}

/// Collects the replies a sink receives.
#[derive(Clone, Default)]
struct Replies(Arc<Mutex<Vec<CallReply>>>);

struct ReplySink(Replies);

impl Actor for ReplySink {
    type Context = Context<Self>;
}

impl Handler<CallEvent> for ReplySink {
    type Result = ();

    fn handle(&mut self, msg: CallEvent, _: &mut Self::Context) {
        if let CallEvent::Reply(reply) = msg {
            self.0 .0.lock().unwrap().push(reply);
        }
    }
}

/// A mux in-process: its Registry, the stand-ins' log, the gate they say `ready` behind, and
/// the sink of the worker session the test plays.
struct Mux {
    registry: Addr<Registry>,
    log: AgentLog,
    gate: watch::Sender<bool>,
    replies: Replies,
    sink: CallSink,
    next_id: u64,
}

/// Runs `test` on a current-thread runtime whose clock is paused, inside an actix system.
fn paused<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    })
    .block_on(test());
}

impl Mux {
    fn start(max_interpreters: usize, ready_at_once: bool) -> Mux {
        let log = AgentLog::default();
        let (gate, gate_rx) = watch::channel(ready_at_once);
        let connector = InMemory {
            log: log.clone(),
            gate: gate_rx,
        };
        let registry = Registry::new(
            Bootstrap::from_source(b""),
            4,
            max_interpreters,
            1 << 20,
            Arc::new(connector),
        )
        .start();
        let replies = Replies::default();
        let sink = CallSink::plain(ReplySink(replies.clone()).start().recipient());
        Mux {
            registry,
            log,
            gate,
            replies,
            sink,
            next_id: 1,
        }
    }

    /// Submits a call as worker session 7 would; returns its id.
    fn submit(&mut self, op: &str, become_user: Option<&str>, blobs: &[&str]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let call = Call {
            id,
            target: target(),
            become_spec: become_user.map(|user| {
                serde_json::from_value(json!({"method": "sudo", "user": user})).unwrap()
            }),
            op: op.into(),
            args: json!({}),
            blobs: blobs.iter().map(|b| b.to_string()).collect(),
            task: None,
            detached: false,
        };
        self.registry.do_send(Submit {
            call,
            body: Bytes::new(),
            session: 7,
            sink: self.sink.clone(),
            streams: false,
        });
        id
    }

    /// Lets the actors run until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Mux) -> bool) {
        for _ in 0..PATIENCE {
            if done(self) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "never happened: {what}; the agent got {:?}",
            self.log.summary()
        );
    }

    /// Waits for the reply to call `id`.
    async fn reply(&self, id: u64) -> CallReply {
        self.until(&format!("reply {id}"), |mux| {
            mux.replies.0.lock().unwrap().iter().any(|r| r.id() == id)
        })
        .await;
        let replies = self.replies.0.lock().unwrap();
        replies.iter().find(|r| r.id() == id).unwrap().clone()
    }

    /// Moves the paused clock on and lets the actors handle what fell due.
    async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    fn replied(&self) -> usize {
        self.replies.0.lock().unwrap().len()
    }
}

fn target() -> TargetSpec {
    let mut spec = TargetSpec::local();
    spec.name = Some("web1".into());
    spec.timeout = 10.0;
    spec
}

fn frame_summary(kind: &str, interp: u64, op: &str) -> (String, u64, String) {
    (kind.to_owned(), interp, op.to_owned())
}

#[test]
fn calls_wait_for_ready_except_login_calls_which_follow_the_bootstrap() {
    paused(|| async {
        let mut mux = Mux::start(20, false);
        let ping = mux.submit("ping", None, &[]);
        let info = mux.submit("interpreter_info", None, &[]);
        let become_ping = mux.submit("ping", Some("pg"), &[]);
        mux.until("the first call reaches the agent", |mux| {
            !mux.log.frames().is_empty()
        })
        .await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // Before `ready`: the login call went out behind the bootstrap; the call answered from
        // `ready` and the become call wait in the queue, and nothing is answered.
        assert_eq!(mux.log.summary(), vec![frame_summary("call", 0, "ping")]);
        assert_eq!(mux.replied(), 0);

        mux.gate.send(true).unwrap();
        assert!(mux.reply(ping).await.is_ok());
        let info = mux.reply(info).await;
        assert_eq!(info.reply.result.as_ref().unwrap()["tmpdir"], "/tmp/agent");
        let become_reply = mux.reply(become_ping).await;
        assert_eq!(become_reply.reply.result.as_ref().unwrap()["interp"], 1);
        assert_eq!(
            mux.log.summary(),
            vec![
                frame_summary("call", 0, "ping"),
                frame_summary("spawn", 1, ""),
                frame_summary("call", 1, "ping"),
            ]
        );
    });
}

#[test]
fn an_agent_that_never_gets_ready_times_out_on_the_paused_clock() {
    paused(|| async {
        let mut mux = Mux::start(20, false);
        let ping = mux.submit("ping", None, &[]);
        mux.until("the call reaches the agent", |mux| {
            !mux.log.frames().is_empty()
        })
        .await;
        mux.advance(Duration::from_millis(9_900)).await;
        assert_eq!(mux.replied(), 0, "answered before the target's timeout");
        // The timeout, then the grace the dying transport gets to exit and say why, then the
        // wait for the kill to be reported.
        for step in [200, 2_000, 500] {
            mux.advance(Duration::from_millis(step)).await;
        }
        let reply = mux.reply(ping).await.reply;
        let error = reply.error.unwrap();
        assert_eq!(error.kind.as_str(), "unreachable");
        assert!(
            error.message.contains("agent did not start within 10s"),
            "{}",
            error.message
        );
    });
}

#[test]
fn a_departed_workers_call_is_cancelled_on_the_agent() {
    paused(|| async {
        let mut mux = Mux::start(20, true);
        let held = mux.submit("hold", None, &[]);
        mux.until("the held call reaches the agent", |mux| {
            mux.log
                .summary()
                .contains(&frame_summary("call", 0, "hold"))
        })
        .await;
        let mux_id = mux.log.frames()[0].header["id"].clone();
        mux.registry.do_send(CancelCalls {
            session: 7,
            calls: vec![(target(), vec![held])],
        });
        mux.until("the cancel reaches the agent", |mux| {
            mux.log.frames().iter().any(|f| f.kind() == "cancel")
        })
        .await;
        let cancel = mux
            .log
            .frames()
            .into_iter()
            .find(|f| f.kind() == "cancel")
            .unwrap();
        assert_eq!(cancel.header["id"], mux_id);
        assert_eq!(cancel.header["interp"], 0);
        // The interpreter is free for the next call; the cancelled one is never answered.
        let ping = mux.submit("ping", None, &[]);
        assert!(mux.reply(ping).await.is_ok());
        assert!(mux.replies.0.lock().unwrap().iter().all(|r| r.id() != held));
    });
}

#[test]
fn the_least_recently_used_idle_become_interpreter_is_stopped_and_blobs_cross_once() {
    paused(|| async {
        let mut mux = Mux::start(2, true);
        let content = Bytes::from_static(b"bW9kdWxl");
        let hash = sha1_smol::Sha1::from(&content[..]).digest().to_string();
        mux.registry.do_send(StoreBlob {
            hash: hash.clone(),
            body: content,
        });
        for user in ["a", "b", "a"] {
            let id = mux.submit("ping", Some(user), &[&hash]);
            assert!(mux.reply(id).await.is_ok());
        }
        // b is the least recently used: c's interpreter takes its place.
        let id = mux.submit("ping", Some("c"), &[&hash]);
        assert_eq!(mux.reply(id).await.reply.result.unwrap()["interp"], 3);
        let summary = mux.log.summary();
        let stop_b = summary
            .iter()
            .position(|f| *f == frame_summary("stop", 2, ""));
        let spawn_c = summary
            .iter()
            .position(|f| *f == frame_summary("spawn", 3, ""));
        assert!(stop_b.is_some() && stop_b < spawn_c, "{summary:?}");
        assert!(
            !summary.contains(&frame_summary("stop", 1, "")),
            "{summary:?}"
        );
        // One blob frame per interpreter, its content crossing once.
        let blobs: Vec<(u64, bool, usize)> = mux
            .log
            .frames()
            .iter()
            .filter(|f| f.kind() == "blob")
            .map(|f| {
                let cached = f.header.get("cached") == Some(&Value::Bool(true));
                (f.header["interp"].as_u64().unwrap(), cached, f.body.len())
            })
            .collect();
        assert_eq!(blobs, vec![(1, false, 8), (2, true, 0), (3, true, 0)]);
    });
}

#[test]
fn a_become_interpreter_that_never_answers_fails_its_calls_at_the_spawn_deadline() {
    paused(|| async {
        let mut mux = Mux::start(20, true);
        let ping = mux.submit("ping", Some("never"), &[]);
        mux.until("the spawn reaches the agent", |mux| {
            mux.log.summary().contains(&frame_summary("spawn", 1, ""))
        })
        .await;
        // The target's timeout (10 s) and five seconds of slack.
        mux.advance(Duration::from_millis(14_900)).await;
        assert_eq!(mux.replied(), 0, "given up before the deadline");
        mux.advance(Duration::from_millis(200)).await;
        let error = mux.reply(ping).await.reply.error.unwrap();
        assert_eq!(error.kind.as_str(), "become_failed");
        assert!(
            error.message.contains("did not answer within 15s"),
            "{}",
            error.message
        );
        assert!(mux.log.summary().contains(&frame_summary("stop", 1, "")));
    });
}
