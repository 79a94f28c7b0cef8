//! `ferrogen-mux`: the ferrogen connection multiplexer (the library, `src/lib.rs`, is the
//! mux itself). This file only parses the command line and turns errors into exit codes.
//!
//! ```text
//! ferrogen-mux serve --socket PATH    serve workers on PATH until stdin reaches EOF
//!     [--watch-pid PID]               ... or, with this, until process PID exits
//! ferrogen-mux status --socket PATH   print a running mux's actors
//! ferrogen-mux --version
//! ```

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{error::ErrorKind as ClapErrorKind, Parser, Subcommand};
use ferrogen_mux::{serve, status_cli, MuxError};
use tracing::error;

/// The ferrogen connection multiplexer: one connection per target, one persistent Python
/// interpreter per account on it, shared by every Ansible worker of a run.
#[derive(Debug, Parser)]
#[command(name = "ferrogen-mux", version)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve workers on a UNIX socket until stdin reaches end of file (the run is over) or
    /// SIGTERM/SIGINT; prints `READY <pid>` once it listens. Settings come from the
    /// environment: MITOGEN_POOL_SIZE, MITOGEN_MAX_INTERPRETERS, MITOGEN_DUMP_THREAD_STACKS,
    /// MITOGEN_ROUTER_DEBUG.
    Serve {
        /// Where to listen; its directory must be private to this user (0700).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Serve until this process exits rather than until stdin reaches end of file (a mux
        /// that a worker started holds no pipe from ansible-playbook).
        #[arg(long, value_name = "PID")]
        watch_pid: Option<u32>,
    },
    /// Print a running mux's actors: targets, interpreters and transfers, what each is
    /// doing and for how long.
    Status {
        /// Where the mux listens.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Run the multiplexer.
    Serve {
        /// Where to listen.
        socket: PathBuf,
        /// Serve until this process exits rather than until stdin reaches EOF.
        watch_pid: Option<u32>,
    },
    /// Print a running mux's status.
    Status {
        /// Where the mux listens.
        socket: PathBuf,
    },
    /// Print the version.
    Version,
    /// Print this help text.
    Help(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, MuxError> {
    let argv = std::iter::once("ferrogen-mux".to_owned()).chain(args);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Sub::Serve { socket, watch_pid },
        }) => Ok(Command::Serve { socket, watch_pid }),
        Ok(Cli {
            command: Sub::Status { socket },
        }) => Ok(Command::Status { socket }),
        Err(err) if err.kind() == ClapErrorKind::DisplayVersion => Ok(Command::Version),
        Err(err) if err.kind() == ClapErrorKind::DisplayHelp => {
            Ok(Command::Help(err.render().to_string()))
        }
        Err(err) if err.kind() == ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Err(MuxError::Usage("missing command".into()))
        }
        Err(err) => Err(MuxError::Usage(usage_message(&err))),
    }
}

/// Clap's message for a usage error, without its own usage lines ([`MuxError::Usage`] adds
/// the synopsis).
fn usage_message(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let words: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    words.join(" ").trim_start_matches("error: ").to_owned()
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|command| match command {
        Command::Version => {
            println!(
                "ferrogen-mux {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                worker_ipc::PROTOCOL_VERSION
            );
            Ok(())
        }
        Command::Help(text) => {
            print!("{text}");
            Ok(())
        }
        Command::Status { socket } => status_cli::run(&socket, &mut std::io::stdout().lock()),
        Command::Serve { socket, watch_pid } => serve::serve(&socket, watch_pid),
    });
    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            error!("{err}");
            eprintln!("ferrogen-mux: {err}");
            err.exit_code()
        }
    };
    // Exit without waiting for the runtime's blocking threads (the stdin watcher may still
    // be parked in read(2)); every child was killed by now.
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, MuxError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            args(&["serve", "--socket", "/x/s"]).unwrap(),
            Command::Serve {
                socket: "/x/s".into(),
                watch_pid: None,
            }
        );
        assert_eq!(
            args(&["serve", "--socket", "/x/s", "--watch-pid", "42"]).unwrap(),
            Command::Serve {
                socket: "/x/s".into(),
                watch_pid: Some(42),
            }
        );
        assert_eq!(
            args(&["status", "--socket=/x/s"]).unwrap(),
            Command::Status {
                socket: "/x/s".into()
            }
        );
        assert_eq!(args(&["--version"]).unwrap(), Command::Version);
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            &[][..],
            &["serve"],
            &["serve", "--socket"],
            &["frob", "--socket", "x"],
            &["serve", "--socket", "x", "--watch-pid", "me"],
            &["status", "--socket", "x", "--watch-pid", "1"],
        ] {
            assert_eq!(args(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn help_describes_every_subcommand() {
        let Command::Help(top) = args(&["--help"]).unwrap() else {
            panic!("no help");
        };
        assert!(top.contains("serve") && top.contains("status"), "{top}");
        for sub in ["serve", "status"] {
            let Command::Help(text) = args(&[sub, "--help"]).unwrap() else {
                panic!("no help for {sub}");
            };
            assert!(text.contains("--socket <PATH>"), "{text}");
        }
    }
}
