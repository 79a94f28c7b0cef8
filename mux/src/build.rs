//! Build script: copies the Python agent (`mux/agent/agent.py`) into `OUT_DIR` so the binary
//! can embed it with `include_bytes!`. If the agent is missing the binary still builds, with
//! a stand-in that fails the bootstrap with a clear message.

use std::{env, fs, path::PathBuf};

const MISSING_AGENT: &str = "import sys\n\
sys.stderr.write('ferrogen: this ferrogen-mux was built without mux/agent/agent.py\\n')\n\
sys.exit(1)\n";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let agent = manifest.join("agent").join("agent.py");
    println!("cargo:rerun-if-changed={}", agent.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("agent").display()
    );
    let source = match fs::read(&agent) {
        Ok(bytes) => bytes,
        Err(err) => {
            println!(
                "cargo:warning=no agent at {} ({err}); embedding a stand-in",
                agent.display()
            );
            MISSING_AGENT.as_bytes().to_vec()
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("agent.py");
    fs::write(&out, source).expect("write embedded agent");
}
