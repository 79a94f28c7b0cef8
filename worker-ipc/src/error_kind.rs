//! [`ErrorKind`]: the machine-readable kind of a failed call, shared by the worker link and
//! the agent link (docs/protocol.md, "Replies").

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a call failed, as the `kind` of a reply's `error` object.
///
/// The mux raises some kinds itself; the agent raises others, and the mux passes those through
/// unchanged. A kind this crate does not know (a newer agent's) survives as [`ErrorKind::Other`]
/// so that it still reaches the worker as the agent wrote it. The Python agent and plugin name
/// the same kinds in their constants blocks; `tests/python_names.rs` checks they agree.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The transport could not be started or the agent did not come up: host UNREACHABLE.
    Unreachable,
    /// The transport or agent (or a become interpreter) died while the call was in flight.
    ConnectionLost,
    /// The call names a blob the mux (or agent) does not hold; the worker uploads and retries.
    MissingBlob,
    /// The call is malformed (unknown op, bad arguments, a detached stream).
    BadRequest,
    /// An earlier detached call of this worker failed; this call fails in its place.
    DetachedFailed,
    /// A file the call names does not exist (Ansible's file-not-found error).
    NotFound,
    /// A put's controller-side file cannot be read or is not the one the worker opened.
    SourceError,
    /// The op raised an exception on the target.
    AgentError,
    /// A become interpreter could not be started (wrong password, unknown user, timeout).
    BecomeFailed,
    /// A streamed transfer was cancelled on the agent.
    Cancelled,
    /// ssh connected, but the remote shell found no Python to run the agent: the worker runs
    /// the task's operations over plain ssh instead (docs/protocol.md, "no_interpreter").
    NoInterpreter,
    /// The module was built for another Python than the persistent interpreter: the worker
    /// runs it through the shell, as vanilla Ansible would.
    OtherInterpreter,
    /// A kind this crate does not name, kept as it was written.
    Other(String),
}

impl ErrorKind {
    /// Every kind this crate names, in the order of docs/protocol.md.
    pub const KNOWN: [ErrorKind; 12] = [
        ErrorKind::Unreachable,
        ErrorKind::ConnectionLost,
        ErrorKind::MissingBlob,
        ErrorKind::BadRequest,
        ErrorKind::DetachedFailed,
        ErrorKind::NotFound,
        ErrorKind::SourceError,
        ErrorKind::AgentError,
        ErrorKind::BecomeFailed,
        ErrorKind::Cancelled,
        ErrorKind::NoInterpreter,
        ErrorKind::OtherInterpreter,
    ];

    /// The kind as it is written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::MissingBlob => "missing_blob",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::DetachedFailed => "detached_failed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::SourceError => "source_error",
            ErrorKind::AgentError => "agent_error",
            ErrorKind::BecomeFailed => "become_failed",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::NoInterpreter => "no_interpreter",
            ErrorKind::OtherInterpreter => "other_interpreter",
            ErrorKind::Other(kind) => kind,
        }
    }

    /// The kind written `name` on the wire.
    pub fn from_wire(name: &str) -> ErrorKind {
        ErrorKind::KNOWN
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .unwrap_or_else(|| ErrorKind::Other(name.to_owned()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ErrorKind, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(ErrorKind::from_wire(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds_round_trip_and_unknown_ones_survive() {
        for kind in ErrorKind::KNOWN {
            assert_eq!(ErrorKind::from_wire(kind.as_str()), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        }
        let newer = ErrorKind::from_wire("quota_exceeded");
        assert_eq!(newer, ErrorKind::Other("quota_exceeded".into()));
        assert_eq!(serde_json::to_string(&newer).unwrap(), "\"quota_exceeded\"");
    }
}
