//! The ferrogen worker link: the wire protocol between an Ansible worker process and
//! `ferrogen-mux`, as specified in `docs/protocol.md`.
//!
//! # Layout
//!
//! - [`frame`]: the frame format (`u32` BE header length, `u32` BE body length, JSON header,
//!   raw body), its limits and the [`FrameCodec`] used on both the worker and agent links;
//! - [`message`]: typed worker-link messages (`hello`, `call`, `blob`, `reply`, `error`,
//!   `status`, `reset`, and the file-transfer `chunk`, `put_end`, `ack`);
//! - [`target`]: [`TargetSpec`], the description of a target connection, and its sharing key;
//! - [`compression`]: [`AgentLinkCodec`], the agent link's codec, which deflates what crosses
//!   the network where that pays;
//! - [`become_spec`]: [`BecomeSpec`], the account a call runs as, its [`BecomeKey`], and the
//!   redacted [`Secret`] holding its password.
//!
//! - [`agent_link`]: the mux <-> agent vocabulary, [`ToAgent`] and [`FromAgent`], decoded and
//!   encoded at the edge of the link;
//! - [`error_kind`]: [`ErrorKind`], the kind of a failed call on either link;
//! - [`status`]: [`StatusRow`], one line of the mux's actor table.
//!
//! Frames are plain data: the same bytes are produced and checked by the Python client
//! (golden files under `tests/golden/`).

#![deny(missing_docs)]

pub mod agent_link;
pub mod become_spec;
pub mod compression;
pub mod error_kind;
pub mod frame;
pub mod message;
pub mod status;
pub mod target;

pub use agent_link::{
    AgentAck, AgentBlob, AgentCall, AgentChunk, AgentInfo, AgentLog, AgentPutEnd, CallRef,
    FromAgent, Heartbeat, InterpId, InterpLost, InterpRef, LogLevel, Op, RouteClosed, RouteOpen,
    RoutePrompts, RouteRef, Spawn, Spawned, ToAgent, LOGIN_INTERP,
};
pub use become_spec::{BecomeKey, BecomeSpec, Secret};
pub use compression::AgentLinkCodec;
pub use error_kind::ErrorKind;
pub use frame::{Frame, FrameCodec, FrameError, FramePart};
pub use message::{
    Ack, Blob, Call, Chunk, Connect, ErrorInfo, ErrorMessage, Hello, HelloReply, PutEnd, Reply,
    Request, Reset, Response, StatusReport,
};
pub use status::{
    Direction, InterpreterCall, InterpreterRow, InterpreterState, StatusRow, TargetCall, TargetRow,
    TargetState, TransferRow, TransferState,
};
pub use target::{ContainerSpec, SetnsKind, TargetKey, TargetSpec, Transport};

/// Version of the worker link spoken by this crate, checked in the `hello` handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest accepted JSON header, in bytes (16 MiB).
pub const MAX_HEADER: usize = 16 * 1024 * 1024;

/// Largest accepted frame body, in bytes (256 MiB).
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// Files up to this size (124 KiB) ride inside one `put_file` call; larger ones stream
/// (docs/protocol.md, "File transfer").
pub const SMALL_FILE_LIMIT: u64 = 126_976;

/// Largest body of a transfer `chunk` frame (1 MiB).
pub const CHUNK_MAX: usize = 1024 * 1024;

/// Most bytes of one transfer a sender may have sent and not had acknowledged (4 MiB): the
/// bound on what the mux and the agent buffer per transfer.
pub const TRANSFER_WINDOW: u64 = 4 * 1024 * 1024;
