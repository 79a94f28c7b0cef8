//! `ferrogen-mux status`: asks a running mux for its actor table and prints it.

use std::{io::Write, os::unix::net::UnixStream, path::Path, time::Duration};

use bytes::Bytes;
use worker_ipc::{Frame, Hello, Request, Response, StatusRow, PROTOCOL_VERSION};

use crate::MuxError;

/// Connects to the mux at `socket`, requests status and prints it as a table to `out`.
///
/// # Errors
///
/// The socket cannot be reached, or the mux answers something unexpected.
pub fn run(socket: &Path, out: &mut impl Write) -> Result<(), MuxError> {
    let actors = fetch(socket)?;
    out.write_all(render(&actors).as_bytes())
        .map_err(|err| MuxError::Io("writing status".into(), err))
}

fn fetch(socket: &Path) -> Result<Vec<StatusRow>, MuxError> {
    let io_err = |what: &str| {
        let what = format!("{what} {}", socket.display());
        move |err| MuxError::Io(what, err)
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err("connecting to"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err("configuring"))?;
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    });
    for msg in [hello, Request::Status] {
        let frame = Frame::from_message(&msg, Bytes::new()).map_err(MuxError::Protocol)?;
        let bytes = frame.to_bytes().map_err(MuxError::Protocol)?;
        stream.write_all(&bytes).map_err(io_err("writing to"))?;
    }
    loop {
        let frame = Frame::read_from(&mut stream).map_err(MuxError::Protocol)?;
        match frame.parse::<Response>().map_err(MuxError::Protocol)? {
            Response::Hello(_) => continue,
            Response::Status(report) => return Ok(report.actors),
            Response::Error(err) => return Err(MuxError::Remote(err.message)),
            Response::Reply(_) | Response::Ack(_) | Response::Chunk(_) => continue,
        }
    }
}

/// One row of the table before it is aligned.
type Line = [String; 7];

/// Formats status rows as an aligned table: one line per target and interpreter, saying
/// what it is doing and for how long (also the actor table of a stack dump).
pub fn render(actors: &[StatusRow]) -> String {
    let header = [
        "KIND",
        "NAME",
        "KEY/ACCOUNT",
        "STATE",
        "PID",
        "FOR",
        "DOING",
    ];
    let mut rows: Vec<Line> = vec![header.map(str::to_owned)];
    rows.extend(actors.iter().map(line));
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if actors.is_empty() {
        out.push_str("(no targets)\n");
    }
    out
}

/// Seconds as the table shows them.
fn secs(value: f64) -> String {
    format!("{value:.1}s")
}

/// A value or `-`.
fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A state's wire name.
fn state_name<T: serde::Serialize>(state: T) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "-".to_owned(),
    }
}

/// What is being done, joined, or `-`.
fn joined(doing: Vec<String>) -> String {
    if doing.is_empty() {
        "-".to_owned()
    } else {
        doing.join(", ")
    }
}

/// One actor's line.
fn line(actor: &StatusRow) -> Line {
    match actor {
        StatusRow::Target(t) => {
            let mut doing: Vec<String> = t
                .calls
                .iter()
                .map(|c| format!("{} ({})", c.op, secs(c.elapsed)))
                .collect();
            if t.calls.is_empty() || t.doing != "serving calls" {
                doing.insert(0, t.doing.clone());
            } else {
                doing = vec![format!("{} call(s) in flight", t.calls.len())];
            }
            if t.queued > 0 {
                doing.push(format!("{} queued", t.queued));
            }
            [
                "target".to_owned(),
                t.name.clone(),
                t.key.clone(),
                state_name(t.state),
                or_dash(t.pid),
                secs(t.since),
                joined(doing),
            ]
        }
        StatusRow::Interpreter(i) => {
            let doing: Vec<String> = i
                .calls
                .iter()
                .map(|c| format!("{} ({})", c.doing, secs(c.elapsed)))
                .collect();
            let since = match (i.since, i.idle) {
                (Some(since), _) => secs(since),
                (None, Some(idle)) => format!("idle {}", secs(idle)),
                (None, None) => i
                    .calls
                    .iter()
                    .map(|c| c.elapsed)
                    .reduce(f64::max)
                    .map_or_else(|| "-".to_owned(), secs),
            };
            [
                "interpreter".to_owned(),
                i.name.clone(),
                i.account.clone(),
                state_name(i.state),
                or_dash(i.pid),
                since,
                joined(doing),
            ]
        }
        StatusRow::Transfer(t) => [
            "transfer".to_owned(),
            t.name.clone(),
            "-".to_owned(),
            state_name(t.state),
            "-".to_owned(),
            secs(t.elapsed),
            t.doing.clone(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use worker_ipc::{
        InterpreterCall, InterpreterRow, InterpreterState, TargetCall, TargetRow, TargetState,
    };

    use super::*;

    fn interpreter(name: &str, account: &str, state: InterpreterState) -> InterpreterRow {
        InterpreterRow {
            name: name.into(),
            interp: 0,
            account: account.into(),
            state,
            since: None,
            last_used: 0.0,
            idle: None,
            pid: None,
            blobs: 0,
            calls: Vec::new(),
        }
    }

    #[test]
    fn renders_aligned_rows() {
        let target = TargetRow {
            name: "web1".into(),
            key: "root@h:22".into(),
            state: TargetState::Ready,
            doing: "serving calls".into(),
            interpreters: 1,
            since: 3.25,
            pid: Some(12),
            agent_pid: None,
            queued: 0,
            calls: vec![TargetCall {
                id: 1,
                mux_id: 1,
                op: "exec_command".into(),
                interp: 0,
                elapsed: 1.0,
            }],
        };
        let mut login = interpreter("web1/0", "login", InterpreterState::Busy);
        login.calls.push(InterpreterCall {
            mux_id: 1,
            op: "exec_command".into(),
            doing: "running exec_command for web1".into(),
            elapsed: 1.0,
        });
        let mut become_pg = interpreter("web1/3", "sudo:pg", InterpreterState::Idle);
        become_pg.idle = Some(0.5);
        let table = render(&[
            StatusRow::Target(target),
            StatusRow::Interpreter(login),
            StatusRow::Interpreter(become_pg),
        ]);
        let lines: Vec<_> = table.lines().collect();
        assert!(
            lines[0].starts_with("KIND         NAME    KEY/ACCOUNT  STATE"),
            "{table}"
        );
        assert!(lines[1].contains("1 call(s) in flight"), "{table}");
        assert!(
            lines[1].contains("3.2s") || lines[1].contains("3.3s"),
            "{table}"
        );
        assert!(
            lines[2].contains("running exec_command for web1 (1.0s)"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("interpreter  web1/3  sudo:pg"),
            "{table}"
        );
        assert!(lines[3].contains("idle 0.5s"), "{table}");
    }
}
