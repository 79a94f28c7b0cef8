//! The process groups of every transport child still alive.
//!
//! Each transport (ssh or `/bin/sh`) is started as the leader of its own process group, so
//! that killing the group also kills anything it started. The set is global, not owned by
//! an actor, because the exit paths (stdin EOF, SIGTERM, a panic in an actor) must be able
//! to kill every child without going through actor mailboxes that may no longer run.

use std::collections::BTreeSet;

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use parking_lot::Mutex;

/// Process-group ids of live transport children. A `parking_lot` mutex: held only for a
/// set insert/remove or a loop of `killpg` calls, never across an `.await`.
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Records a new transport child, the leader of process group `pgid`.
pub fn register(pgid: u32) {
    // 0 would mean "our own group" to killpg(2), and 1 is init's: never record them.
    if pgid > 1 {
        GROUPS.lock().insert(pgid as i32);
    }
}

/// Sends SIGKILL to the group `pgid` and forgets it.
pub fn kill(pgid: u32) {
    let pgid = pgid as i32;
    if GROUPS.lock().remove(&pgid) {
        // ESRCH (already gone) is the expected outcome for a child that exited.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Sends SIGKILL to every registered group: the last step before the mux exits.
pub fn kill_all() {
    let groups = std::mem::take(&mut *GROUPS.lock());
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}
