//! Build script: joins the Python agent's parts (the files `mux/agent/parts.txt` names, in
//! that order) into one source in `OUT_DIR`, which the binary embeds with `include_bytes!` as
//! the bootstrap blob. The lines by which the parts import each other (`from .PART import`,
//! `from ansible_ferrogen.MODULE import`) are left out: in the blob the parts share one
//! namespace (`mux/agent/ferrogen_agent/__init__.py` joins them the same way for the agent's
//! tests). A part missing, or the list, fails the build.

use std::{env, fs, path::PathBuf};

/// The lines of a part that the blob leaves out.
const LINK_PREFIXES: [&str; 2] = ["from .", "from ansible_ferrogen."];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    let list = manifest.join("agent").join("parts.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let names = fs::read_to_string(&list)
        .unwrap_or_else(|err| panic!("the agent's parts list {}: {err}", list.display()));
    let mut parts = Vec::new();
    for name in names
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        let path = root.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("agent part {name} ({}): {err}", path.display()));
        let kept: String = text
            .split_inclusive('\n')
            .filter(|line| !LINK_PREFIXES.iter().any(|prefix| line.starts_with(prefix)))
            .collect();
        parts.push(kept);
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("agent.py");
    fs::write(&out, parts.join("\n")).expect("write the joined agent");
}
