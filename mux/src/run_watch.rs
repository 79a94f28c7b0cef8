//! `serve --watch-pid PID`: the lifeline of a mux that a worker started (connection-only mode,
//! or a replacement for a mux that died mid-run). Such a mux is no child of ansible-playbook
//! and holds no pipe from it, so it watches that process instead and exits when it does,
//! however it ends.

use std::{
    os::fd::{AsFd, FromRawFd, OwnedFd},
    time::Duration,
};

use nix::{
    errno::Errno,
    libc,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::signal::kill,
    unistd::Pid,
};
use tracing::{debug, warn};

/// How often the fallback (a kernel without pidfd_open) checks that the process is there.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Resolves once process `pid` has exited (at once if it is already gone).
pub fn exited(pid: u32) -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread: both waits block.
    let spawned = std::thread::Builder::new()
        .name("run-watch".into())
        .spawn(move || {
            wait_for_exit(pid);
            let _ = tx.send(());
        });
    if let Err(err) = spawned {
        // Without the watcher the mux would outlive the run; the sender is gone, so the
        // receiver resolves at once and the mux exits rather than leak.
        warn!("cannot watch process {pid}: {err}");
    }
    rx
}

fn wait_for_exit(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // A pidfd turns readable when its process exits; EINTR (the stack dumper's signals)
        // only means poll again.
        while let Err(Errno::EINTR) | Ok(0) = poll(&mut fds, PollTimeout::NONE) {}
        debug!(pid, "watched process exited");
        return;
    }
    if Errno::last() == Errno::ESRCH {
        return;
    }
    debug!(pid, "no pidfd_open ({}); polling", Errno::last());
    while kill(Pid::from_raw(raw), None).is_ok() {
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_the_watched_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let watch = exited(child.id());
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the watch resolves once the process is gone")
            .unwrap();
        waiter.join().unwrap();
    }

    #[tokio::test]
    async fn resolves_at_once_for_a_process_that_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(10), exited(pid))
            .await
            .expect("resolves at once")
            .unwrap();
    }
}
