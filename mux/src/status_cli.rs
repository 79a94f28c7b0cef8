//! `ferrogen-mux status`: asks a running mux for its actor table and prints it.

use std::{io::Write, os::unix::net::UnixStream, path::Path, time::Duration};

use bytes::Bytes;
use serde_json::Value;
use worker_ipc::{Frame, Hello, Request, Response, PROTOCOL_VERSION};

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

fn fetch(socket: &Path) -> Result<Vec<Value>, MuxError> {
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

/// Formats status rows as an aligned table: one line per target and interpreter, saying
/// what it is doing and for how long (also the actor table of a stack dump).
pub fn render(actors: &[Value]) -> String {
    let header = [
        "KIND",
        "NAME",
        "KEY/ACCOUNT",
        "STATE",
        "PID",
        "FOR",
        "DOING",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for actor in actors {
        let text = |k: &str| match &actor[k] {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let secs = |v: &Value| format!("{:.1}s", v.as_f64().unwrap_or(0.0));
        let calls = actor["calls"].as_array().cloned().unwrap_or_default();
        let mut doing: Vec<String> = calls
            .iter()
            .map(|c| {
                let what = c["doing"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| c["op"].as_str().unwrap_or("?").to_owned());
                format!("{what} ({})", secs(&c["elapsed"]))
            })
            .collect();
        if let Some(what) = actor["doing"].as_str() {
            if actor["kind"] == "target" && (calls.is_empty() || what != "serving calls") {
                doing.insert(0, what.to_owned());
            } else if actor["kind"] == "target" {
                doing = vec![format!("{} call(s) in flight", calls.len())];
            } else if actor["kind"] == "transfer" {
                doing.insert(0, what.to_owned());
            }
        }
        match actor["queued"].as_u64() {
            Some(n) if n > 0 => doing.push(format!("{n} queued")),
            _ => {}
        }
        let doing = if doing.is_empty() {
            "-".to_owned()
        } else {
            doing.join(", ")
        };
        let since = if !actor["since"].is_null() {
            secs(&actor["since"])
        } else if !actor["idle"].is_null() {
            format!("idle {}", secs(&actor["idle"]))
        } else if actor["kind"] == "transfer" {
            secs(&actor["elapsed"])
        } else if let Some(longest) = calls
            .iter()
            .filter_map(|c| c["elapsed"].as_f64())
            .reduce(f64::max)
        {
            secs(&Value::from(longest))
        } else {
            "-".into()
        };
        let key = if actor["kind"] == "interpreter" {
            text("account")
        } else {
            text("key")
        };
        rows.push([
            text("kind"),
            text("name"),
            key,
            text("state"),
            text("pid"),
            since,
            doing,
        ]);
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_aligned_rows() {
        let table = render(&[
            json!({"kind": "target", "name": "web1", "key": "root@h:22", "state": "ready",
                   "doing": "serving calls", "pid": 12, "since": 3.25,
                   "calls": [{"op": "exec_command", "elapsed": 1.0}]}),
            json!({"kind": "interpreter", "name": "web1/0", "account": "login", "state": "busy",
                   "calls": [{"op": "exec_command", "doing": "running exec_command for web1",
                              "elapsed": 1.0}]}),
            json!({"kind": "interpreter", "name": "web1/3", "account": "sudo:pg",
                   "state": "idle", "idle": 0.5, "calls": []}),
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
