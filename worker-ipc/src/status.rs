//! [`StatusRow`]: one line of the mux's actor table, as `{"type": "status"}` answers it
//! (docs/protocol.md, "Status") and `ferrogen-mux status` and the stack dump print it.

use serde::{Deserialize, Serialize};

/// One target, interpreter or streamed transfer, with what it is doing and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusRow {
    /// A connection.
    Target(TargetRow),
    /// A remote interpreter of a target.
    Interpreter(InterpreterRow),
    /// A streamed file transfer.
    Transfer(TransferRow),
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Waiting for a pool slot, spawning, or waiting for `ready`.
    Connecting,
    /// The agent is up.
    Ready,
    /// Going away.
    Dead,
}

/// A target's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRow {
    /// Inventory name (or the key).
    pub name: String,
    /// The sharing key (`user@host:port`...).
    pub key: String,
    /// Lifecycle state.
    pub state: TargetState,
    /// What it is doing, in words.
    pub doing: String,
    /// Live become interpreters.
    pub interpreters: usize,
    /// Seconds in this state.
    pub since: f64,
    /// The transport's pid, once spawned.
    pub pid: Option<u32>,
    /// The login agent's pid on the target, once ready.
    pub agent_pid: Option<u64>,
    /// Calls waiting for the connection.
    pub queued: usize,
    /// Calls sent to the agent and not yet answered, by mux id.
    pub calls: Vec<TargetCall>,
}

/// A call in flight on a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCall {
    /// The worker's id.
    pub id: u64,
    /// The mux-side id.
    pub mux_id: u64,
    /// The op.
    pub op: String,
    /// Its interpreter.
    pub interp: u32,
    /// Seconds since it was sent.
    pub elapsed: f64,
}

/// Where an interpreter is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpreterState {
    /// `spawn` sent, `spawned` not yet received.
    Spawning,
    /// No call running.
    Idle,
    /// Running calls.
    Busy,
}

/// An interpreter's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterpreterRow {
    /// `<target>/<interp>`.
    pub name: String,
    /// Its number on the agent link.
    pub interp: u32,
    /// `sudo:postgres`, or `login`.
    pub account: String,
    /// Lifecycle state.
    pub state: InterpreterState,
    /// Seconds spent spawning (while spawning only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
    /// Seconds since a call last started or finished.
    pub last_used: f64,
    /// Seconds idle (when no call runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<f64>,
    /// Its pid on the target, once known.
    pub pid: Option<u64>,
    /// Blobs sent to it.
    pub blobs: usize,
    /// Calls running on it, by mux id.
    pub calls: Vec<InterpreterCall>,
}

/// A call running on an interpreter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterpreterCall {
    /// The mux-side id.
    pub mux_id: u64,
    /// The op.
    pub op: String,
    /// What it is doing, in words.
    pub doing: String,
    /// Seconds since it started.
    pub elapsed: f64,
}

/// Whether a transfer's call has reached its interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Waiting for its connection or interpreter.
    Queued,
    /// Data flowing.
    Streaming,
}

/// Which way a transfer's data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Controller to target (`put_begin`).
    Put,
    /// Target to controller (`fetch_begin`).
    Fetch,
}

impl Direction {
    /// `put` or `fetch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Put => "put",
            Direction::Fetch => "fetch",
        }
    }
}

/// A streamed transfer's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRow {
    /// `<target>/<interp>#<mux id>`, or `<target>#worker-<id>` while queued.
    pub name: String,
    /// Queued or streaming.
    pub state: TransferState,
    /// Put or fetch.
    pub direction: Direction,
    /// The path on the target.
    pub path: String,
    /// Bytes the receiver acknowledged.
    pub bytes: u64,
    /// Bytes the sender passed through the mux.
    pub sent: u64,
    /// The file's size, when known.
    pub total: Option<u64>,
    /// Bytes per second so far.
    pub rate: f64,
    /// Seconds since the call arrived.
    pub elapsed: f64,
    /// What it is doing, in words.
    pub doing: String,
}
