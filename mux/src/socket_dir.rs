//! The directory the mux's socket lives in: checked before the mux listens there, held with a
//! lock for the mux's life, removed when it exits, and swept of the dirs crashed muxes left.
//!
//! The plugin makes one `ferrogen-XXXX` directory per run beside the others in the system's
//! temp dir. A mux that dies by SIGKILL cannot remove its own, so each mux, at start, removes
//! its siblings whose muxes are provably dead: every lock file (the socket's path plus
//! [`LOCK_SUFFIX`]) that a live mux holds an exclusive `flock` on is free. A sibling without a
//! lock file (a run starting right now, or a mux older than the lock) is left alone unless it
//! is empty and older than [`ABANDONED_AFTER`].

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, info};

use crate::MuxError;

/// A live mux holds its socket's path with this suffix locked.
pub const LOCK_SUFFIX: &str = ".lock";

/// The name the plugin gives socket directories; only such directories are removed at exit,
/// and only their siblings of that name are swept.
pub const DIR_PREFIX: &str = "ferrogen-";

/// An empty socket directory without a lock file is taken as abandoned after this long: the
/// plugin starts its mux within seconds of making the directory.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// The socket directory of this mux, its lock held until [`SocketDir::remove`].
#[derive(Debug)]
pub struct SocketDir {
    dir: PathBuf,
    lock_path: PathBuf,
    lock: Flock<File>,
}

/// The lock file of the mux serving on `socket`.
fn lock_path_of(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(LOCK_SUFFIX);
    PathBuf::from(path)
}

fn is_lock_file(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| name.ends_with(LOCK_SUFFIX))
}

/// The directory `socket` is in.
pub fn dir_of(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that `dir` is private to this user: a directory (not a symlink to one) owned by the
/// mux's uid, with no access for group or others. Otherwise another account could replace
/// the socket.
pub fn check(dir: &Path) -> Result<(), MuxError> {
    let unsafe_dir = |why: String| MuxError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    let meta = fs::symlink_metadata(dir)
        .map_err(|err| MuxError::Io(format!("socket directory {}", dir.display()), err))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to the mux's uid {uid}",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(MuxError::InsecureDir {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

impl SocketDir {
    /// Checks `socket`'s directory, sweeps its dead siblings and takes the directory's lock.
    pub fn claim(socket: &Path) -> Result<SocketDir, MuxError> {
        let dir = dir_of(socket);
        check(&dir)?;
        if is_ours_by_name(&dir) {
            if let Some(parent) = dir.parent() {
                sweep_dead_siblings(parent, &dir);
            }
        }
        let lock_path = lock_path_of(socket);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|err| MuxError::Io(format!("opening {}", lock_path.display()), err))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            MuxError::Io(
                format!(
                    "locking {} (is another mux serving on that socket?)",
                    lock_path.display()
                ),
                errno.into(),
            )
        })?;
        Ok(SocketDir {
            dir,
            lock_path,
            lock,
        })
    }

    /// Removes the socket, its lock file and, if the plugin made it and nothing else is in
    /// it, the directory.
    pub fn remove(self, socket: &Path) {
        let _ = fs::remove_file(socket);
        let _ = fs::remove_file(&self.lock_path);
        drop(self.lock);
        if is_ours_by_name(&self.dir) {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

fn is_ours_by_name(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(DIR_PREFIX))
}

/// Removes the socket directories beside `own` whose mux is dead (see the module comment).
fn sweep_dead_siblings(parent: &Path, own: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let path = entry.path();
        if path == own || !is_ours_by_name(&path) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            continue;
        }
        if remove_if_dead(&path) {
            info!(dir = %path.display(), "removed the socket directory of a mux that died");
        }
    }
}

/// Removes `dir` if its muxes are provably dead; whether it did.
fn remove_if_dead(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let entries: Vec<_> = entries.flatten().collect();
    let mut locks = Vec::new();
    for entry in entries
        .iter()
        .filter(|entry| is_lock_file(&entry.file_name()))
    {
        let Ok(file) = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(entry.path())
        else {
            return false;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => locks.push(lock),
            Err(_) => return false, // a mux lives there
        }
    }
    if locks.is_empty() {
        return remove_if_abandoned(dir);
    }
    // Only what a mux leaves there: sockets and lock files. Anything else keeps the
    // directory (remove_dir fails).
    for entry in &entries {
        let is_socket = entry.file_type().is_ok_and(|kind| kind.is_socket());
        if is_socket || is_lock_file(&entry.file_name()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    drop(locks);
    fs::remove_dir(dir).is_ok()
}

/// An empty directory left by a mux older than the lock file, once old enough.
fn remove_if_abandoned(dir: &Path) -> bool {
    let old = fs::symlink_metadata(dir)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > ABANDONED_AFTER);
    if !old {
        return false;
    }
    let removed = fs::remove_dir(dir).is_ok();
    if removed {
        debug!(dir = %dir.display(), "removed an abandoned empty socket directory");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_dir(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_symlink_to_a_private_dir_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let real = private_dir(parent.path(), "real");
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = SocketDir::claim(&link.join("mux.sock")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_dir_of_another_uid_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can make a directory another account owns
        }
        let parent = tempfile::tempdir().unwrap();
        let theirs = private_dir(parent.path(), "theirs");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = SocketDir::claim(&theirs.join("mux.sock")).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn removed_at_exit_and_dead_siblings_swept_at_start() {
        let parent = tempfile::tempdir().unwrap();
        // A crashed mux's directory: its lock file is there, nobody holds it.
        let crashed = private_dir(parent.path(), "ferrogen-crashed");
        File::create(crashed.join("mux.sock.lock")).unwrap();
        std::os::unix::net::UnixListener::bind(crashed.join("mux.sock")).unwrap();
        // A live mux's, and one whose mux is starting (no lock file yet).
        let live = private_dir(parent.path(), "ferrogen-live");
        let live_mux = SocketDir::claim(&live.join("mux.sock")).unwrap();
        let starting = private_dir(parent.path(), "ferrogen-starting");
        // Not a socket directory of ours by name.
        let other = private_dir(parent.path(), "other");
        File::create(other.join("mux.sock.lock")).unwrap();

        let own = private_dir(parent.path(), "ferrogen-own");
        let socket = own.join("mux.sock");
        let mux = SocketDir::claim(&socket).unwrap();
        assert!(!crashed.exists());
        assert!(live.join("mux.sock.lock").exists() && starting.exists() && other.exists());

        std::os::unix::net::UnixListener::bind(&socket).unwrap();
        mux.remove(&socket);
        assert!(!own.exists());
        live_mux.remove(&live.join("mux.sock"));
        assert!(!live.exists());
    }

    #[test]
    fn muxes_may_share_a_dir_but_not_a_socket() {
        let parent = tempfile::tempdir().unwrap();
        let dir = private_dir(parent.path(), "ferrogen-shared");
        let first = SocketDir::claim(&dir.join("a.sock")).unwrap();
        let second = SocketDir::claim(&dir.join("b.sock")).unwrap();
        let err = SocketDir::claim(&dir.join("a.sock")).unwrap_err();
        assert!(err.to_string().contains("another mux"), "{err}");
        first.remove(&dir.join("a.sock"));
        assert!(dir.exists(), "the other mux's files are still there");
        second.remove(&dir.join("b.sock"));
        assert!(!dir.exists());
    }
}
