//! Logging set-up: `tracing` to stderr, plus a debug file when asked.

use std::{
    fs::{File, OpenOptions},
    io::{self, IsTerminal},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::fcntl::OFlag;
use tracing::warn;
use tracing_subscriber::{
    filter::LevelFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

/// Filter for stderr logs (`tracing_subscriber::EnvFilter` syntax; default `warn`).
pub const LOG_ENV: &str = "FERROGEN_LOG";

/// When set to anything but `0` or empty, debug logs also go to `/tmp/mitogen.<pid>.log`.
pub const ROUTER_DEBUG_ENV: &str = "MITOGEN_ROUTER_DEBUG";

/// Where the debug files go: the documented place, shared by every account on the host.
const DEBUG_LOG_DIR: &str = "/tmp";

/// How many `mitogen.<pid>.<n>.log` names are tried when `mitogen.<pid>.log` is not ours.
const DEBUG_LOG_DETOURS: u32 = 100;

/// Whether [`ROUTER_DEBUG_ENV`] asks for per-process debug log files.
pub fn router_debug() -> bool {
    std::env::var(ROUTER_DEBUG_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Installs the global subscriber. Returns the debug log path when one was opened.
///
/// A debug log that cannot be opened is a warning, never a reason not to serve.
pub fn init() -> Option<PathBuf> {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter);

    let debug_log =
        router_debug().then(|| open_debug_log(Path::new(DEBUG_LOG_DIR), std::process::id()));
    let (opened, detour) = debug_log.map_or((None, None), |log| (log.opened, log.detour));
    let (path, file_layer) = opened
        .map(|(path, file)| {
            let layer = fmt::layer()
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .with_filter(LevelFilter::DEBUG);
            (path, layer)
        })
        .unzip();
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .init();
    if let Some(detour) = detour {
        warn!("{detour}");
    }
    path
}

/// The outcome of opening a debug log.
struct DebugLog {
    /// Where the log is, for the "serving" record, and the log; `None` when no name could be used.
    opened: Option<(PathBuf, File)>,
    /// Why the log is not at `mitogen.<pid>.log`, to be logged once logging is up.
    detour: Option<String>,
}

/// Opens `dir/mitogen.<pid>.log`, or the first free `dir/mitogen.<pid>.<n>.log` when that name
/// is not ours to write.
///
/// The directory outlives processes and pids are reused, so the name may be another account's
/// file from an earlier process with our pid, or a link someone planted.
fn open_debug_log(dir: &Path, pid: u32) -> DebugLog {
    let path = dir.join(format!("mitogen.{pid}.log"));
    let refused = match open_own_file(&path) {
        Ok(file) => {
            return DebugLog {
                opened: Some((path, file)),
                detour: None,
            }
        }
        Err(err) => format!(
            "not writing the debug log to {}: {}",
            path.display(),
            why_not_ours(&path, &err)
        ),
    };
    for number in 1..=DEBUG_LOG_DETOURS {
        let detour = dir.join(format!("mitogen.{pid}.{number}.log"));
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&detour);
        match created {
            Ok(file) => {
                let why = format!("{refused}; it is {}", detour.display());
                return DebugLog {
                    opened: Some((detour, file)),
                    detour: Some(why),
                };
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                let why = format!(
                    "{refused}; nor to {}: {err}; no debug log",
                    detour.display()
                );
                return DebugLog {
                    opened: None,
                    detour: Some(why),
                };
            }
        }
    }
    DebugLog {
        opened: None,
        detour: Some(format!(
            "{refused}; the {DEBUG_LOG_DETOURS} other names are taken too; no debug log"
        )),
    }
}

/// `path` opened for writing and emptied, when it is a regular file of ours or is free.
///
/// No link is followed and no FIFO blocks the open; another account's file is refused.
fn open_own_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() || metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::from(io::ErrorKind::PermissionDenied));
    }
    file.set_len(0)?;
    Ok(file)
}

/// Why [`open_own_file`] refused `path`, in words: what is there rather than the errno.
fn why_not_ours(path: &Path, err: &io::Error) -> String {
    let Ok(there) = path.symlink_metadata() else {
        return err.to_string();
    };
    if there.file_type().is_symlink() {
        "it is a symbolic link".into()
    } else if !there.file_type().is_file() {
        "it is not a regular file".into()
    } else if there.uid() != nix::unistd::geteuid().as_raw() {
        format!("it belongs to uid {}", there.uid())
    } else {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::fs::symlink};

    use super::*;

    fn contents(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    /// Where the log went, if anywhere.
    fn path_of(log: &DebugLog) -> Option<PathBuf> {
        log.opened.as_ref().map(|(path, _)| path.clone())
    }

    #[test]
    fn a_free_name_is_used_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_debug_log(dir.path(), 41);
        assert_eq!(path_of(&log), Some(dir.path().join("mitogen.41.log")));
        assert!(log.detour.is_none());
    }

    #[test]
    fn our_own_stale_log_is_emptied_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("mitogen.42.log");
        std::fs::write(&stale, "an earlier process with pid 42\n").unwrap();
        let mut file = open_debug_log(dir.path(), 42).opened.unwrap().1;
        file.write_all(b"ours\n").unwrap();
        assert_eq!(contents(&stale), "ours\n");
    }

    #[test]
    fn a_planted_link_is_not_followed_and_the_log_moves_aside() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        symlink(&victim, dir.path().join("mitogen.43.log")).unwrap();
        std::fs::write(dir.path().join("mitogen.43.1.log"), "taken\n").unwrap();

        let log = open_debug_log(dir.path(), 43);
        let detour = dir.path().join("mitogen.43.2.log");
        assert_eq!(path_of(&log), Some(detour.clone()));
        let why = log.detour.unwrap();
        assert!(
            why.contains("mitogen.43.log: it is a symbolic link"),
            "{why}"
        );
        assert!(why.contains(&detour.display().to_string()), "{why}");
        log.opened.unwrap().1.write_all(b"ours\n").unwrap();
        assert_eq!(contents(&victim), "precious\n");
        assert_eq!(contents(&dir.path().join("mitogen.43.1.log")), "taken\n");
        assert_eq!(contents(&detour), "ours\n");
    }

    #[test]
    fn a_fifo_in_the_way_neither_blocks_nor_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mitogen.44.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let log = open_debug_log(dir.path(), 44);
        assert_eq!(path_of(&log), Some(dir.path().join("mitogen.44.1.log")));
        assert!(log
            .detour
            .unwrap()
            .contains("mitogen.44.log: it is not a regular file"));
    }

    #[test]
    fn another_accounts_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("mitogen.45.log");
        std::fs::write(&theirs, "theirs\n").unwrap();
        let other = if nix::unistd::geteuid().is_root() {
            65534
        } else {
            0
        };
        if nix::unistd::chown(&theirs, Some(other.into()), None).is_err() {
            // Only root can give a file away; elsewhere this case is covered by CI, which is root.
            return;
        }
        let log = open_debug_log(dir.path(), 45);
        assert_eq!(path_of(&log), Some(dir.path().join("mitogen.45.1.log")));
        assert!(log
            .detour
            .unwrap()
            .contains(&format!("it belongs to uid {other}")));
        assert_eq!(contents(&theirs), "theirs\n");
    }

    #[test]
    fn no_usable_name_means_no_log_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mitogen.46.log")).unwrap();
        for number in 1..=DEBUG_LOG_DETOURS {
            std::fs::write(dir.path().join(format!("mitogen.46.{number}.log")), "").unwrap();
        }
        let log = open_debug_log(dir.path(), 46);
        assert!(log.opened.is_none());
        assert!(log
            .detour
            .unwrap()
            .ends_with("other names are taken too; no debug log"));
    }
}
