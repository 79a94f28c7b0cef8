//! `Registry`: the mux's map of targets and its blob store.
//!
//! Creates a [`Target`] on the first call for a TargetSpec key and reuses it until it dies;
//! resolves the blobs a call names; answers `status` by asking every target; closes a
//! target on `reset`; passes a departed worker's cancellations on to its targets.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::prelude::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use worker_ipc::{ErrorInfo, ErrorKind, Op, Reply, StatusRow, TargetKey, TargetSpec};

use crate::{
    blob_store::BlobStore,
    bootstrap::Bootstrap,
    messages::{
        CallEvent, CallReply, Cancel, CancelCalls, Connect, DescribeTarget, Dispatch, DumpStatus,
        OpenRoute, Redispatch, ResetTarget, ShutdownAll, ShutdownTarget, Status, StoreBlob, Submit,
        TargetGone,
    },
    target::{Shared, Target},
    transport::{Connector, Routed},
};

/// How long shutdown waits for all targets to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1200);

/// How long one target gets to say goodbye at the mux's exit (inside [`SHUTDOWN_GRACE`]).
const TARGET_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a `reset` waits for the old connection to be gone before answering anyway
/// (the Target kills its transport after 2 s in any case).
const RESET_GRACE: Duration = Duration::from_secs(5);

/// The mux's central actor.
pub struct Registry {
    /// Live targets by key, with the serial number each was created with.
    targets: HashMap<TargetKey, (u64, Addr<Target>)>,
    /// Serial number for the next Target; names it in logs and guards `TargetGone`.
    next_serial: u64,
    /// Uploaded blobs, bounded by bytes.
    blobs: BlobStore,
    /// What every Target shares: the agent, the set-up permits, the connector, the limit.
    shared: Shared,
    /// Set by [`ShutdownAll`]: later calls are refused instead of starting connections.
    shutting_down: bool,
}

impl Registry {
    /// A registry with no targets.
    pub fn new(
        bootstrap: Bootstrap,
        pool_size: usize,
        max_interpreters: usize,
        blob_capacity: usize,
        connector: Arc<dyn Connector>,
    ) -> Registry {
        Registry {
            targets: HashMap::new(),
            next_serial: 1,
            blobs: BlobStore::new(blob_capacity),
            shared: Shared {
                bootstrap,
                pool: Arc::new(Semaphore::new(pool_size)),
                pool_size,
                hop_pools: Default::default(),
                connector,
                max_interpreters,
            },
            shutting_down: false,
        }
    }
}

impl Registry {
    /// The live Target for `spec`'s key, started if there is none.
    fn target_for(&mut self, spec: &TargetSpec, ctx: &mut Context<Self>) -> Addr<Target> {
        let key = spec.key();
        if let Some((_, addr)) = self.targets.get(&key) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        debug!(target = %key, serial, "starting target");
        let addr = Target::new(
            serial,
            spec.clone(),
            self.shared.clone(),
            ctx.address().recipient(),
            ctx.address().recipient(),
        )
        .start();
        self.targets.insert(key, (serial, addr.clone()));
        addr
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    /// Targets with a `via` hop are connected through it, whatever reaches the others.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.connector = Arc::new(Routed {
            direct: self.shared.connector.clone(),
            registry: ctx.address().recipient(),
        });
    }
}

/// Handler for OpenRoute: the hop's Target (started, or shared, like any other) carries it.
impl Handler<OpenRoute> for Registry {
    type Result = ();

    fn handle(&mut self, msg: OpenRoute, ctx: &mut Self::Context) {
        if self.shutting_down {
            let _ = msg.reply.send(Err("the mux is shutting down".into()));
            return;
        }
        let hop = self.target_for(&msg.via, ctx);
        hop.do_send(msg);
    }
}

/// Handler for Submit: resolve blobs, find or create the target, forward.
impl Handler<Submit> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        let Submit {
            call,
            body,
            session,
            sink,
            streams,
        } = msg;
        if self.shutting_down {
            sink.do_send(CallEvent::Reply(CallReply::error(
                call.id,
                ErrorKind::ConnectionLost,
                "the mux is shutting down",
            )));
            return;
        }
        let mut blobs = Vec::with_capacity(call.blobs.len());
        let mut missing = Vec::new();
        for hash in &call.blobs {
            match self.blobs.get(hash) {
                Some(content) => blobs.push((hash.to_ascii_lowercase(), content)),
                None => missing.push(Value::String(hash.clone())),
            }
        }
        if !missing.is_empty() {
            let mut error = ErrorInfo::new(
                ErrorKind::MissingBlob,
                format!("{} blob(s) not held by the mux", missing.len()),
            );
            error.extra.insert("hashes".into(), Value::Array(missing));
            sink.do_send(CallEvent::Reply(CallReply::from_reply(Reply {
                id: call.id,
                ok: false,
                result: None,
                error: Some(error),
            })));
            return;
        }
        let addr = self.target_for(&call.target, ctx);
        addr.do_send(Dispatch {
            worker_id: call.id,
            op: Op::from_wire(&call.op),
            args: call.args,
            body,
            blobs,
            become_spec: call.become_spec,
            session,
            sink,
            streams,
            task: call.task,
        });
    }
}

/// Handler for Connect: the Target starts connecting as it is created; one that exists
/// already is left alone.
impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Connect, ctx: &mut Self::Context) {
        if !self.shutting_down {
            self.target_for(&msg.target, ctx);
        }
    }
}

/// Handler for ResetTarget: the Target is forgotten at once (the next call connects
/// afresh) and the worker is answered once it is gone.
impl Handler<ResetTarget> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ResetTarget, ctx: &mut Self::Context) {
        let ResetTarget {
            id,
            target,
            reply_to,
        } = msg;
        let ok = move || reply_to.do_send(CallReply::ok(id, json!({})));
        let Some((_, addr)) = self.targets.remove(&target.key()) else {
            debug!(target = %target.key(), "reset of a target with no connection");
            ok();
            return;
        };
        debug!(target = %target.key(), "resetting connection");
        addr.send(ShutdownTarget {
            reason: "the connection was reset (meta: reset_connection)",
            grace: RESET_GRACE,
        })
        .into_actor(self)
        .then(move |_, _, _| {
            ok();
            fut::ready(())
        })
        .spawn(ctx);
    }
}

/// Handler for CancelCalls.
impl Handler<CancelCalls> for Registry {
    type Result = ();

    fn handle(&mut self, msg: CancelCalls, _: &mut Self::Context) {
        for (spec, worker_ids) in msg.calls {
            if let Some((_, addr)) = self.targets.get(&spec.key()) {
                addr.do_send(Cancel {
                    session: msg.session,
                    worker_ids,
                });
            }
        }
    }
}

/// Handler for Redispatch. The dying Target sent [`TargetGone`] before this, so the
/// call goes to a new Target.
impl Handler<Redispatch> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Redispatch, ctx: &mut Self::Context) {
        if self.shutting_down {
            msg.call.sink.do_send(CallEvent::Reply(CallReply::error(
                msg.call.worker_id,
                ErrorKind::ConnectionLost,
                "the mux is shutting down",
            )));
            return;
        }
        self.target_for(&msg.spec, ctx).do_send(msg.call);
    }
}

/// Handler for StoreBlob.
impl Handler<StoreBlob> for Registry {
    type Result = ();

    fn handle(&mut self, msg: StoreBlob, _: &mut Self::Context) {
        let len = msg.body.len();
        match self.blobs.insert(&msg.hash, msg.body) {
            Ok(()) => debug!(hash = %msg.hash, len, total = self.blobs.bytes(), "stored blob"),
            Err(err) => warn!("dropped uploaded blob: {err}"),
        }
    }
}

impl Registry {
    /// Asks every target for its rows; resolves to them in serial order.
    fn collect_status(&self) -> impl std::future::Future<Output = Vec<StatusRow>> + 'static {
        let mut targets: Vec<_> = self.targets.values().cloned().collect();
        targets.sort_by_key(|(serial, _)| *serial);
        let asks: Vec<_> = targets
            .into_iter()
            .map(|(_, addr)| addr.send(DescribeTarget))
            .collect();
        async move {
            join_all(asks)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .flatten()
                .collect()
        }
    }
}

/// Handler for Status: every target's rows, in serial order.
impl Handler<Status> for Registry {
    type Result = ResponseFuture<Vec<StatusRow>>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.collect_status())
    }
}

/// Handler for DumpStatus.
impl Handler<DumpStatus> for Registry {
    type Result = ();

    fn handle(&mut self, msg: DumpStatus, ctx: &mut Self::Context) {
        let rows = self.collect_status();
        ctx.spawn(fut::wrap_future(async move {
            let _ = msg.respond_to.send(rows.await);
        }));
    }
}

/// Handler for TargetGone.
impl Handler<TargetGone> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TargetGone, _: &mut Self::Context) {
        if self
            .targets
            .get(&msg.key)
            .is_some_and(|(serial, _)| *serial == msg.serial)
        {
            self.targets.remove(&msg.key);
        }
    }
}

/// Handler for ShutdownAll: tell every target, wait (bounded) for them to finish.
impl Handler<ShutdownAll> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: ShutdownAll, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        let asks: Vec<_> = self
            .targets
            .drain()
            .map(|(_, (_, addr))| {
                addr.send(ShutdownTarget {
                    reason: "the mux is shutting down",
                    grace: TARGET_SHUTDOWN_GRACE,
                })
            })
            .collect();
        Box::pin(async move {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, join_all(asks)).await;
        })
    }
}
