//! One source of truth for the names and limits the Python side shares with this crate: the
//! plugin and the agent keep theirs in one marked constants block, in
//! `plugin/ansible_ferrogen/frames.py` (a module of the plugin that is also the agent's first
//! part); this test reads that block and fails when a value differs from the Rust side, when a
//! kind is one [`ErrorKind`] does not name, when an error kind is written as a literal outside
//! the block, or when the agent's ops (`op_<name>` methods, `mux/agent/ferrogen_agent/`) differ
//! from [`Op::AGENT_OPS`].

use std::{collections::BTreeSet, collections::HashMap, fs, path::PathBuf};

use worker_ipc::{
    ErrorKind, Op, SetnsKind, Transport, CHUNK_MAX, MAX_BODY, MAX_HEADER, PROTOCOL_VERSION,
    SMALL_FILE_LIMIT, TRANSFER_WINDOW,
};

const BLOCK_START: &str = "# -- Names and limits shared with the mux";
const BLOCK_END: &str = "# -- end of the names and limits shared with the mux";

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A constant's value: an integer expression of `*` and `<<`, or a quoted string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Constant {
    Int(u64),
    Str(String),
}

fn evaluate(expr: &str) -> Constant {
    let expr = expr.trim();
    if let Some(text) = expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
        return Constant::Str(text.to_owned());
    }
    let int = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("not a constant: {expr:?}"))
    };
    if let Some((base, shift)) = expr.split_once("<<") {
        return Constant::Int(int(base) << int(shift));
    }
    Constant::Int(expr.split('*').map(int).product())
}

/// The `NAME = value` lines of `text` between the markers, and the text outside the block.
fn constants(text: &str) -> (HashMap<String, Constant>, String) {
    let start = text
        .find(BLOCK_START)
        .unwrap_or_else(|| panic!("no {BLOCK_START:?} block"));
    let end = text
        .find(BLOCK_END)
        .unwrap_or_else(|| panic!("no {BLOCK_END:?} marker"));
    let (block, outside) = (
        &text[start..end],
        format!("{}{}", &text[..start], &text[end..]),
    );
    let values = block
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with(' '))
        .filter_map(|line| line.split_once(" = "))
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(name, value)| (name.to_owned(), evaluate(value)))
        .collect();
    (values, outside)
}

fn int(values: &HashMap<String, Constant>, name: &str) -> u64 {
    match values.get(name) {
        Some(Constant::Int(value)) => *value,
        other => panic!("{name}: {other:?}"),
    }
}

/// The string constants of a block, which must all be error kinds the Rust side names.
fn error_kinds(values: &HashMap<String, Constant>) -> BTreeSet<String> {
    let kinds: BTreeSet<String> = values
        .values()
        .filter_map(|value| match value {
            Constant::Str(kind) => Some(kind.clone()),
            Constant::Int(_) => None,
        })
        .collect();
    for kind in &kinds {
        assert!(
            !matches!(ErrorKind::from_wire(kind), ErrorKind::Other(_)),
            "{kind:?} is not an ErrorKind"
        );
    }
    kinds
}

/// Fails if an error kind is written as a string literal outside the shared block.
fn assert_no_kind_literals(file: &str, outside: &str) {
    for kind in ErrorKind::KNOWN {
        let literal = format!("'{kind}'");
        assert!(
            !outside.contains(&literal),
            "{file} writes {literal} outside its shared constants block"
        );
    }
}

/// The agent's parts (`mux/agent/ferrogen_agent/*.py`), by file name.
fn agent_parts() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mux/agent/ferrogen_agent");
    let mut parts: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("agent part").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "py"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, fs::read_to_string(&path).expect("agent part"))
        })
        .collect();
    parts.sort();
    parts
}

#[test]
fn the_agent_shares_the_limits_error_kinds_and_ops() {
    let (values, _) = constants(&repo_file("plugin/ansible_ferrogen/frames.py"));
    assert_eq!(int(&values, "SMALL_FILE_LIMIT"), SMALL_FILE_LIMIT);
    assert_eq!(int(&values, "TRANSFER_CHUNK"), CHUNK_MAX as u64);
    assert_eq!(int(&values, "TRANSFER_WINDOW"), TRANSFER_WINDOW);
    let kinds = error_kinds(&values);
    assert!(kinds.contains("agent_error") && kinds.contains("become_failed"));

    let parts = agent_parts();
    assert!(
        parts.iter().any(|(name, _)| name == "ops.py"),
        "no ops.py part"
    );
    for (name, text) in &parts {
        assert_no_kind_literals(name, text);
    }
    let atomic_files = repo_file("plugin/ansible_ferrogen/atomic_files.py");
    assert_no_kind_literals("atomic_files.py", &atomic_files);

    let ops: BTreeSet<String> = parts
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|line| line.trim_start().strip_prefix("def op_"))
        .filter_map(|rest| rest.split_once('('))
        .map(|(name, _)| name.to_owned())
        .collect();
    let rust_ops: BTreeSet<String> = Op::AGENT_OPS.iter().map(|op| op.to_string()).collect();
    assert_eq!(ops, rust_ops, "agent ops and Op::AGENT_OPS differ");
}

#[test]
fn the_plugin_shares_the_version_limits_and_error_kinds() {
    let source = repo_file("plugin/ansible_ferrogen/frames.py");
    let (values, outside) = constants(&source);
    assert_eq!(
        int(&values, "PROTOCOL_VERSION"),
        u64::from(PROTOCOL_VERSION)
    );
    assert_eq!(int(&values, "MAX_HEADER"), MAX_HEADER as u64);
    assert_eq!(int(&values, "MAX_BODY"), MAX_BODY as u64);
    error_kinds(&values);
    assert_no_kind_literals("frames.py", &outside);
    for file in ["client.py", "connection.py", "transfer.py"] {
        let text = repo_file(&format!("plugin/ansible_ferrogen/{file}"));
        assert_no_kind_literals(file, &text);
    }
}

#[test]
fn the_block_reader_reads_what_the_files_write() {
    assert_eq!(evaluate("16 * 1024 * 1024"), Constant::Int(16 << 20));
    assert_eq!(evaluate("4 << 20"), Constant::Int(4 << 20));
    assert_eq!(evaluate("'not_found'"), Constant::Str("not_found".into()));
}

/// The quoted keys of the Python dict literal `name = {` in `text`, one per line.
fn dict_keys(text: &str, name: &str) -> BTreeSet<String> {
    let start = text
        .find(&format!("\n{name} = {{\n"))
        .unwrap_or_else(|| panic!("no {name} dict"));
    let body = &text[start..];
    let body = &body[..body.find("\n}").expect("the dict ends")];
    body.lines()
        .filter_map(|line| line.strip_prefix("    '"))
        .filter_map(|line| line.split_once("':"))
        .map(|(key, _)| key.to_owned())
        .collect()
}

#[test]
fn the_plugin_names_the_container_transports_and_setns_kinds() {
    let containers = repo_file("plugin/ansible_ferrogen/containers.py");
    let rust: BTreeSet<String> = Transport::ALL
        .iter()
        .filter(|t| !matches!(t, Transport::Ssh | Transport::Local))
        .map(|t| t.name().to_owned())
        .collect();
    assert_eq!(dict_keys(&containers, "KINDS"), rust);
    let setns: BTreeSet<String> = [
        SetnsKind::Docker,
        SetnsKind::Lxc,
        SetnsKind::Lxd,
        SetnsKind::Machinectl,
    ]
    .iter()
    .map(|kind| {
        serde_json::to_value(kind)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert_eq!(dict_keys(&containers, "SETNS_TOOLS"), setns);
}
