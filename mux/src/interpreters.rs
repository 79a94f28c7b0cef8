//! `Interpreters`: one Target's table of its remote interpreters and the calls running on
//! them, held in this one place: each interpreter's state (spawning or ready), the blobs
//! already sent to it, its calls in flight by mux id, the LRU that bounds become interpreters
//! (`MITOGEN_MAX_INTERPRETERS`, [`InterpreterLru`]), and the status rows.
//!
//! Plain data with no actors in it: the Target asks it what to do (which frames to send, which
//! interpreters to stop) and does it, so every rule here is tested without a connection.
//! Id 0 is the login interpreter; become interpreters get 1, 2, ... and ids are never reused
//! on one connection, so a late frame from a stopped interpreter cannot reach a new one.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use bytes::Bytes;
use worker_ipc::{
    AgentBlob, AgentCall, BecomeKey, InterpId, InterpreterCall, InterpreterRow, InterpreterState,
    Op, StatusRow, TargetCall, ToAgent, LOGIN_INTERP,
};

use crate::{interpreter_lru::InterpreterLru, messages::CallSink};

/// Idle become interpreters to stop (already forgotten by the table), least recently used
/// first.
pub type Evicted = Vec<(InterpId, BecomeKey)>;

/// A call sent to an interpreter and not yet answered.
pub struct InFlight {
    /// The worker's id for it.
    pub worker_id: u64,
    /// Where its events go.
    pub sink: CallSink,
    /// The op, for status and error messages.
    pub op: Op,
    /// The Ansible task, when the worker named it, for status.
    pub task: Option<String>,
    /// When it was sent.
    pub since: Instant,
    /// Which interpreter runs it.
    pub interp: InterpId,
    /// The WorkerSession that sent it, for cancels.
    pub session: u64,
    /// Whether it streams a file (its sink takes the agent's `ack`/`chunk` frames).
    pub streams: bool,
    /// Bytes it has carried so far (body and relayed transfer frames), for status.
    pub bytes: usize,
}

/// One remote interpreter.
#[derive(Debug)]
struct Interpreter {
    /// The account of a become interpreter; `None` for the login one.
    account: Option<BecomeKey>,
    /// Set while the agent has not answered `spawned` (never for the login interpreter): when
    /// the mux gives up waiting.
    spawn_deadline: Option<tokio::time::Instant>,
    /// Its process id on the target, once known.
    pid: Option<u64>,
    /// When it was created.
    created: Instant,
    /// When a call last started or finished here (or it was created).
    last_used: Instant,
    /// When it last answered a heartbeat or a call (or came up): a become interpreter silent
    /// for the keepalive deadline is declared dead on its own (see the heartbeat module).
    last_heard: Instant,
    /// Hashes of blobs already sent to it.
    sent_blobs: HashSet<String>,
}

impl Interpreter {
    fn new(
        account: Option<BecomeKey>,
        spawn_deadline: Option<tokio::time::Instant>,
    ) -> Interpreter {
        Interpreter {
            account,
            spawn_deadline,
            pid: None,
            created: Instant::now(),
            last_used: Instant::now(),
            last_heard: Instant::now(),
            sent_blobs: HashSet::new(),
        }
    }
}

/// What [`Interpreters::interpreter_for`] found or made for an account.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// The account has an interpreter (spawning or ready).
    Existing(InterpId),
    /// A new interpreter was entered as spawning: the Target sends `spawn` for it, and
    /// `stop` for each of `evict` first.
    New {
        /// Its id.
        id: InterpId,
        /// Idle interpreters to stop to make room, least recently used first.
        evict: Evicted,
        /// Every live one is busy, so the new one goes over the limit.
        over_limit: bool,
    },
}

/// A Target's interpreters and calls.
pub struct Interpreters {
    /// Interpreters by id.
    entries: HashMap<InterpId, Interpreter>,
    /// Become interpreters by account.
    by_account: HashMap<BecomeKey, InterpId>,
    /// Which become interpreters to stop, and when.
    lru: InterpreterLru<BecomeKey>,
    /// The id the next become interpreter gets.
    next_interp: InterpId,
    /// Hashes of blobs the login agent holds: every blob for any interpreter passes through it
    /// and it keeps a copy, so after the first crossing a blob travels as a reference.
    login_blobs: HashSet<String>,
    /// Calls sent and not yet answered, by mux id.
    calls: HashMap<u64, InFlight>,
    /// Mux ids of calls given up on (cancelled, or failed by the mux): their replies may still
    /// come and are dropped quietly.
    abandoned: HashSet<u64>,
    /// The next mux-side call id.
    next_id: u64,
}

impl Interpreters {
    /// An empty table for at most `max_become` become interpreters; the login interpreter is
    /// entered with its first call.
    pub fn new(max_become: usize) -> Interpreters {
        Interpreters {
            entries: HashMap::new(),
            by_account: HashMap::new(),
            lru: InterpreterLru::new(max_become),
            next_interp: LOGIN_INTERP + 1,
            login_blobs: HashSet::new(),
            calls: HashMap::new(),
            abandoned: HashSet::new(),
            next_id: 1,
        }
    }

    /// The interpreter for `account`, entering a new one if it has none, spawning until
    /// `spawn_deadline`. Either way the account counts as busy until the call is over.
    pub fn interpreter_for(
        &mut self,
        account: &BecomeKey,
        spawn_deadline: tokio::time::Instant,
    ) -> Placement {
        if let Some(&id) = self.by_account.get(account) {
            self.lru.start_call(account);
            return Placement::Existing(id);
        }
        let admission = self.lru.admit(account.clone());
        let evict = admission
            .evict
            .into_iter()
            .filter_map(|key| {
                let id = self.by_account.get(&key).copied()?;
                self.forget(id);
                Some((id, key))
            })
            .collect();
        self.lru.start_call(account);
        let id = self.next_interp;
        self.next_interp += 1;
        let entry = Interpreter::new(Some(account.clone()), Some(spawn_deadline));
        self.entries.insert(id, entry);
        self.by_account.insert(account.clone(), id);
        Placement::New {
            id,
            evict,
            over_limit: admission.over_limit,
        }
    }

    /// How many become interpreters are alive (or spawning).
    pub fn become_count(&self) -> usize {
        self.lru.len()
    }

    /// Whether interpreter `id` is still waiting for `spawned` past its deadline.
    pub fn spawn_overdue(&self, id: InterpId, now: tokio::time::Instant) -> bool {
        self.entries
            .get(&id)
            .and_then(|i| i.spawn_deadline)
            .is_some_and(|deadline| deadline <= now)
    }

    /// The account of become interpreter `id`, if it is known.
    pub fn account_of(&self, id: InterpId) -> Option<&BecomeKey> {
        self.entries.get(&id).and_then(|i| i.account.as_ref())
    }

    /// The agent answered `spawned` with `ok`: interpreter `id` takes calls.
    pub fn spawned(&mut self, id: InterpId, pid: Option<u64>) {
        if let Some(interp) = self.entries.get_mut(&id) {
            interp.spawn_deadline = None;
            interp.pid = pid;
            interp.last_used = Instant::now();
            interp.last_heard = Instant::now();
        }
    }

    /// Interpreter `id` said something (a heartbeat's answer, a reply).
    pub fn heard_from(&mut self, id: InterpId) {
        if let Some(interp) = self.entries.get_mut(&id) {
            interp.last_heard = Instant::now();
        }
    }

    /// The become interpreters that are up (not spawning), which get heartbeats of their own.
    pub fn become_ready(&self) -> Vec<InterpId> {
        let mut ids: Vec<InterpId> = self
            .entries
            .iter()
            .filter(|(_, i)| i.account.is_some() && i.spawn_deadline.is_none())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The become interpreters that are up and have said nothing for `deadline` or longer,
    /// with how long each has been silent.
    pub fn silent_become(&self, deadline: Duration) -> Vec<(InterpId, Duration)> {
        self.become_ready()
            .into_iter()
            .filter_map(|id| {
                let silent = self.entries.get(&id)?.last_heard.elapsed();
                (silent >= deadline).then_some((id, silent))
            })
            .collect()
    }

    /// Forgets interpreter `id` (failed, lost or stopped). Its calls stay until taken.
    pub fn forget(&mut self, id: InterpId) {
        if id == LOGIN_INTERP {
            return;
        }
        if let Some(key) = self.entries.remove(&id).and_then(|i| i.account) {
            self.by_account.remove(&key);
            self.lru.remove(&key);
        }
    }

    /// Records `call` as sent to `interp` and returns its mux id with the frames to write:
    /// the blobs it needs that `interp` has not had yet, then the call itself.
    pub fn send(
        &mut self,
        interp: InterpId,
        op: Op,
        args: serde_json::Value,
        body: Bytes,
        blobs: Vec<(String, Bytes)>,
        call: InFlight,
    ) -> (u64, Vec<(ToAgent, Bytes)>) {
        let mux_id = self.next_id;
        self.next_id += 1;
        let mut frames = Vec::with_capacity(blobs.len() + 1);
        if interp == LOGIN_INTERP {
            self.entries
                .entry(LOGIN_INTERP)
                .or_insert_with(|| Interpreter::new(None, None));
        }
        if let Some(entry) = self.entries.get_mut(&interp) {
            for (hash, content) in blobs {
                if entry.sent_blobs.insert(hash.clone()) {
                    let cached = !self.login_blobs.insert(hash.clone());
                    let blob = ToAgent::Blob(AgentBlob {
                        hash,
                        interp,
                        cached,
                        at_hop: false,
                    });
                    frames.push((blob, if cached { Bytes::new() } else { content }));
                }
            }
            entry.last_used = Instant::now();
        }
        let bytes = body.len();
        frames.push((
            ToAgent::Call(AgentCall {
                id: mux_id,
                interp,
                op,
                args,
            }),
            body,
        ));
        self.calls.insert(mux_id, InFlight { bytes, ..call });
        (mux_id, frames)
    }

    /// The call `mux_id`, if it is still in flight.
    pub fn call(&self, mux_id: u64) -> Option<&InFlight> {
        self.calls.get(&mux_id)
    }

    /// Counts relayed transfer bytes against call `mux_id`; false if it is over.
    pub fn relay(&mut self, mux_id: u64, bytes: usize) -> bool {
        match self.calls.get_mut(&mux_id) {
            Some(call) => {
                call.bytes += bytes;
                true
            }
            None => false,
        }
    }

    /// Call `mux_id` was answered: returns it, and idle become interpreters to stop now that it
    /// is over. `Err(true)` when it had been given up on (its reply is dropped quietly),
    /// `Err(false)` when it is unknown.
    pub fn finish(&mut self, mux_id: u64) -> Result<(InFlight, Evicted), bool> {
        let Some(call) = self.calls.remove(&mux_id) else {
            return Err(self.abandoned.remove(&mux_id));
        };
        let evict = self.call_over(call.interp);
        Ok((call, evict))
    }

    /// Removes the calls of `session` among `worker_ids` and marks them given up on; returns
    /// them with their mux ids, and idle become interpreters to stop now that they are over.
    pub fn cancel(&mut self, session: u64, worker_ids: &[u64]) -> (Vec<(u64, InFlight)>, Evicted) {
        let mut ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.session == session && worker_ids.contains(&c.worker_id))
            .map(|(mux_id, _)| *mux_id)
            .collect();
        ids.sort_unstable();
        let mut cancelled = Vec::new();
        let mut evict = Vec::new();
        for mux_id in ids {
            if let Some(call) = self.calls.remove(&mux_id) {
                self.abandoned.insert(mux_id);
                evict.extend(self.call_over(call.interp));
                cancelled.push((mux_id, call));
            }
        }
        (cancelled, evict)
    }

    /// Removes interpreter `id`'s calls, in the order they were sent. With `abandon`, replies
    /// that still come for them are dropped quietly (the agent answers them too).
    pub fn take_calls_of(&mut self, id: InterpId, abandon: bool) -> Vec<InFlight> {
        let mut ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.interp == id)
            .map(|(mux_id, _)| *mux_id)
            .collect();
        ids.sort_unstable();
        if abandon {
            self.abandoned.extend(ids.iter().copied());
        }
        ids.into_iter()
            .filter_map(|mux_id| self.calls.remove(&mux_id))
            .collect()
    }

    /// Removes every call in flight, in the order they were sent, and every become
    /// interpreter (the connection is gone).
    pub fn take_all_calls(&mut self) -> Vec<InFlight> {
        let mut ids: Vec<u64> = self.calls.keys().copied().collect();
        ids.sort_unstable();
        let calls = ids
            .into_iter()
            .filter_map(|mux_id| self.calls.remove(&mux_id))
            .collect();
        let become_ids: Vec<InterpId> = self.by_account.values().copied().collect();
        for id in become_ids {
            self.forget(id);
        }
        calls
    }

    /// A call of `interp` is over: it was used now, and the LRU may stop idle ones.
    fn call_over(&mut self, interp: InterpId) -> Evicted {
        let Some(entry) = self.entries.get_mut(&interp) else {
            return Vec::new();
        };
        entry.last_used = Instant::now();
        let Some(key) = entry.account.clone() else {
            return Vec::new();
        };
        self.lru
            .finish_call(&key)
            .into_iter()
            .filter_map(|victim| {
                let id = self.by_account.get(&victim).copied()?;
                self.forget(id);
                Some((id, victim))
            })
            .collect()
    }

    /// The target row's calls, by mux id.
    pub fn target_calls(&self) -> Vec<TargetCall> {
        let mut calls: Vec<TargetCall> = self
            .calls
            .iter()
            .map(|(mux_id, c)| TargetCall {
                id: c.worker_id,
                mux_id: *mux_id,
                op: c.op.to_string(),
                interp: c.interp,
                elapsed: c.since.elapsed().as_secs_f64(),
            })
            .collect();
        calls.sort_by_key(|c| c.mux_id);
        calls
    }

    /// Whether any call is in flight.
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
    }

    /// The sinks of streamed calls in flight, by mux id.
    pub fn streams(&self) -> Vec<CallSink> {
        let mut streams: Vec<(u64, &CallSink)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.streams)
            .map(|(mux_id, c)| (*mux_id, &c.sink))
            .collect();
        streams.sort_by_key(|(mux_id, _)| *mux_id);
        streams.into_iter().map(|(_, sink)| sink.clone()).collect()
    }

    /// One row per interpreter, by id (the login interpreter's once it has had a call).
    pub fn rows(&self, target_name: &str) -> Vec<StatusRow> {
        let mut ids: Vec<InterpId> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| Some(self.row(id, self.entries.get(&id)?, target_name)))
            .collect()
    }

    fn row(&self, id: InterpId, interp: &Interpreter, target_name: &str) -> StatusRow {
        let mut calls: Vec<(u64, &InFlight)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.interp == id)
            .map(|(mux_id, c)| (*mux_id, c))
            .collect();
        calls.sort_by_key(|(mux_id, _)| *mux_id);
        let calls: Vec<InterpreterCall> = calls
            .into_iter()
            .map(|(mux_id, call)| InterpreterCall {
                mux_id,
                op: call.op.to_string(),
                doing: doing(call, target_name),
                elapsed: call.since.elapsed().as_secs_f64(),
            })
            .collect();
        let spawning = interp.spawn_deadline.is_some();
        let state = match (spawning, calls.is_empty()) {
            (true, _) => InterpreterState::Spawning,
            (false, true) => InterpreterState::Idle,
            (false, false) => InterpreterState::Busy,
        };
        let last_used = interp.last_used.elapsed().as_secs_f64();
        StatusRow::Interpreter(InterpreterRow {
            name: format!("{target_name}/{id}"),
            interp: id,
            account: interp
                .account
                .as_ref()
                .map_or_else(|| "login".to_owned(), ToString::to_string),
            state,
            since: spawning.then(|| interp.created.elapsed().as_secs_f64()),
            last_used,
            idle: calls.is_empty().then_some(last_used),
            pid: interp.pid,
            blobs: interp.sent_blobs.len(),
            calls,
        })
    }
}

/// What a call is doing, in words, for the status table.
fn doing(call: &InFlight, target_name: &str) -> String {
    let len = call.bytes;
    match &call.op {
        Op::PutFile => format!("transferring {len} bytes to {target_name}"),
        Op::PutBegin => {
            format!("receiving a streamed file ({len} bytes relayed) on {target_name}")
        }
        Op::FetchBegin => format!("sending a streamed file from {target_name}"),
        op => match &call.task {
            Some(task) => format!("running task {task:?} ({op}) for {target_name}"),
            None => format!("running {op} for {target_name}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use actix::prelude::*;

    use super::*;
    use crate::messages::CallEvent;

    /// A sink that drops what it gets: the table only stores it.
    struct Nowhere;

    impl Actor for Nowhere {
        type Context = Context<Self>;
    }

    impl Handler<CallEvent> for Nowhere {
        type Result = ();
        fn handle(&mut self, _: CallEvent, _: &mut Self::Context) {}
    }

    fn account(user: &str) -> BecomeKey {
        BecomeKey {
            method: "sudo".into(),
            user: user.into(),
            exe: None,
            flags: None,
            python: None,
            password_digest: None,
        }
    }

    fn call(interp: InterpId, worker_id: u64) -> InFlight {
        InFlight {
            worker_id,
            sink: CallSink::plain(Nowhere.start().recipient()),
            op: Op::Ping,
            task: None,
            since: Instant::now(),
            interp,
            session: 1,
            streams: false,
            bytes: 0,
        }
    }

    /// Sends a call without blobs; returns its mux id.
    fn send(table: &mut Interpreters, interp: InterpId, worker_id: u64) -> u64 {
        let (mux_id, _) = table.send(
            interp,
            Op::Ping,
            serde_json::json!({}),
            Bytes::new(),
            Vec::new(),
            call(interp, worker_id),
        );
        mux_id
    }

    #[actix::test]
    async fn blobs_go_once_per_interpreter_and_their_content_once_per_target() {
        let mut table = Interpreters::new(5);
        let deadline = tokio::time::Instant::now();
        let Placement::New { id, .. } = table.interpreter_for(&account("pg"), deadline) else {
            panic!("a new account gets a new interpreter");
        };
        let blob_frames = |table: &mut Interpreters, interp| {
            let (_, frames) = table.send(
                interp,
                Op::Ping,
                serde_json::json!({}),
                Bytes::new(),
                vec![("h".to_owned(), Bytes::from_static(b"zip"))],
                call(interp, 1),
            );
            frames
                .into_iter()
                .filter_map(|(frame, body)| match frame {
                    ToAgent::Blob(blob) => Some((blob.interp, blob.cached, body.len())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(blob_frames(&mut table, LOGIN_INTERP), vec![(0, false, 3)]);
        assert_eq!(blob_frames(&mut table, LOGIN_INTERP), vec![]);
        assert_eq!(blob_frames(&mut table, id), vec![(id, true, 0)]);
    }

    #[actix::test]
    async fn a_cancelled_calls_late_reply_is_dropped_quietly_and_an_unknown_one_is_not() {
        let mut table = Interpreters::new(5);
        let mux_id = send(&mut table, LOGIN_INTERP, 7);
        let (cancelled, evict) = table.cancel(1, &[7]);
        assert_eq!(cancelled.len(), 1);
        assert!(evict.is_empty());
        assert!(matches!(table.finish(mux_id), Err(true)));
        assert!(matches!(table.finish(mux_id), Err(false)));
        assert!(table.is_idle());
    }

    #[actix::test]
    async fn spawning_ends_with_spawned_and_is_overdue_only_after_its_deadline() {
        let mut table = Interpreters::new(5);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        let Placement::New { id, .. } = table.interpreter_for(&account("pg"), deadline) else {
            panic!("a new account gets a new interpreter");
        };
        assert!(!table.spawn_overdue(id, tokio::time::Instant::now()));
        assert!(table.spawn_overdue(id, deadline));
        table.spawned(id, Some(42));
        assert!(!table.spawn_overdue(id, deadline));
        assert_eq!(
            table.interpreter_for(&account("pg"), deadline),
            Placement::Existing(id)
        );
    }

    #[actix::test]
    async fn only_a_ready_become_interpreter_gets_heartbeats_and_is_silent_until_heard_from() {
        let mut table = Interpreters::new(5);
        send(&mut table, LOGIN_INTERP, 1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        let Placement::New { id, .. } = table.interpreter_for(&account("pg"), deadline) else {
            panic!("a new account gets a new interpreter");
        };
        assert!(
            table.become_ready().is_empty(),
            "a spawning one is not asked"
        );
        table.spawned(id, Some(42));
        assert_eq!(table.become_ready(), vec![id]);
        assert!(table.silent_become(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        let silent = table.silent_become(Duration::from_millis(10));
        assert_eq!(
            silent.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![id]
        );
        assert!(silent[0].1 >= Duration::from_millis(20));
        table.heard_from(id);
        assert!(table.silent_become(Duration::from_millis(10)).is_empty());
    }
}
