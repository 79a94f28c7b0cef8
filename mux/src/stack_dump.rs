//! Stack dumps for hang diagnosis: `kill -SEGV <mux pid>` and `MITOGEN_DUMP_THREAD_STACKS`.
//!
//! Not an actor: the point is to work when the actors are stuck. Pieces:
//!
//! - a SIGSEGV handler (through `signal-hook-registry`, which allows the signal with
//!   `register_unchecked`). It looks at `si_code`: a signal *sent* with `kill`/`tkill`/
//!   `sigqueue` (`si_code <= 0`) only writes one byte to a wake-up socket and returns, so the
//!   mux keeps serving. A real fault (`si_code > 0`) asks for the same dump, waits for it
//!   (bounded), then restores the default action and returns, so the faulting instruction
//!   runs again and the kernel ends the process as it would have;
//! - a SIGUSR2 handler that records the interrupted thread's raw return addresses into a
//!   static slot (`backtrace::trace_unsynchronized`, no allocation), used to reach every
//!   thread: the dumper walks `/proc/self/task`, signals each thread in turn with `tgkill`
//!   and symbolizes what the handler recorded;
//! - the `stack-dump` thread, which waits on the wake-up socket (or the dump interval),
//!   writes every thread's name and symbolized stack, then the actor table (asked of the
//!   [`Registry`] with a deadline: if the actors are the thing that hangs, the dump says so
//!   instead of hanging too), to stderr and to the log (target `ferrogen::dump`, info).
//!
//! Rust's own SIGSEGV handler (stack-overflow detection) is removed first: chained before
//! ours, it resets the disposition to the default on any SIGSEGV that is not a guard-page
//! hit, so a second `kill -SEGV` would have killed the mux. A stack overflow now ends the
//! process by plain SIGSEGV without Rust's "has overflowed its stack" line.

use std::{
    fmt::Write as _,
    io::{self, Read, Write},
    os::{fd::IntoRawFd, unix::net::UnixStream},
    sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use actix::Addr;
use nix::libc;
use tracing::{info, warn};
use worker_ipc::StatusRow;

use crate::{messages, registry::Registry, status_cli};

/// Most return addresses recorded per thread.
const MAX_FRAMES: usize = 128;

/// How long the dumper waits for one thread to record its stack.
const THREAD_ANSWER: Duration = Duration::from_millis(300);

/// How long the dumper waits for the actor table.
const TABLE_ANSWER: Duration = Duration::from_secs(2);

/// How long a real fault waits for the dump before the process dies.
const FAULT_DUMP_WAIT: Duration = Duration::from_secs(4);

/// Write end of the wake-up socket, for the SIGSEGV handler (-1 until installed).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The dumper thread's tid: a fault on it must not wait for itself.
static DUMPER_TID: AtomicI32 = AtomicI32::new(0);

/// Incremented by the dumper after each dump, so a faulting thread knows when it is done.
static DUMPS_DONE: AtomicU64 = AtomicU64::new(0);

/// The thread the dumper asked for its stack; the SIGUSR2 handler ignores other threads
/// (a stray SIGUSR2 from outside must not scribble over a capture).
static CAPTURE_TID: AtomicI32 = AtomicI32::new(0);

/// Return addresses recorded by the SIGUSR2 handler.
static CAPTURE_IPS: [AtomicUsize; MAX_FRAMES] = [const { AtomicUsize::new(0) }; MAX_FRAMES];

/// How many of [`CAPTURE_IPS`] are valid.
static CAPTURE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Set by the SIGUSR2 handler when [`CAPTURE_IPS`] is complete.
static CAPTURE_DONE: AtomicBool = AtomicBool::new(false);

/// What a byte on the wake-up socket asks for.
const WAKE_KILL: u8 = b'K';
/// A real fault: dump, then the faulting thread lets the process die.
const WAKE_FAULT: u8 = b'F';

/// Installs the handlers and starts the `stack-dump` thread.
///
/// # Errors
///
/// The wake-up socket, a signal handler or the thread could not be set up.
pub fn install(registry: Addr<Registry>, interval: Option<Duration>) -> io::Result<()> {
    let (mut wake_rx, wake_tx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    WAKE_FD.store(wake_tx.into_raw_fd(), Ordering::SeqCst);
    // SAFETY: both handlers only use async-signal-safe calls on the kill path (atomics,
    // write(2), gettid); the fault path is documented as best effort.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        signal_hook_registry::register_unchecked(libc::SIGSEGV, on_sigsegv)?;
        signal_hook::low_level::register(libc::SIGUSR2, on_sigusr2)?;
    }
    std::thread::Builder::new()
        .name("stack-dump".into())
        .spawn(move || {
            DUMPER_TID.store(gettid(), Ordering::SeqCst);
            let _ = wake_rx.set_read_timeout(interval);
            let mut byte = [0u8; 1];
            loop {
                let why = match wake_rx.read(&mut byte) {
                    Ok(1) if byte[0] == WAKE_FAULT => Reason::Fault,
                    Ok(1) => Reason::Kill,
                    Ok(_) => return,
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        Reason::Periodic
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        warn!("stack dump thread stops: {err}");
                        return;
                    }
                };
                dump(why, &registry);
                DUMPS_DONE.fetch_add(1, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

/// Why a dump is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// `kill -SEGV`: stderr and log.
    Kill,
    /// A real segmentation fault: stderr and log, then the process dies.
    Fault,
    /// `MITOGEN_DUMP_THREAD_STACKS`: log only.
    Periodic,
}

/// The SIGSEGV handler.
fn on_sigsegv(info: &libc::siginfo_t) {
    // SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6)...: sent by a process, not a fault.
    if info.si_code <= 0 {
        wake(WAKE_KILL);
        return;
    }
    const MSG: &[u8] =
        b"ferrogen-mux: fatal SIGSEGV (a real fault); dumping stacks, then exiting\n";
    // SAFETY: write(2) on stderr is async-signal-safe.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
    if DUMPER_TID.load(Ordering::SeqCst) != gettid() {
        let before = DUMPS_DONE.load(Ordering::SeqCst);
        wake(WAKE_FAULT);
        let started = Instant::now();
        while DUMPS_DONE.load(Ordering::SeqCst) == before && started.elapsed() < FAULT_DUMP_WAIT {
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            // SAFETY: nanosleep is async-signal-safe.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
    }
    // Back to the default action: returning re-runs the faulting instruction, and the
    // kernel ends the process (with a core dump where enabled).
    // SAFETY: signal(2) to SIG_DFL is async-signal-safe.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
}

/// The SIGUSR2 handler: records this thread's return addresses if the dumper asked for them.
fn on_sigusr2() {
    if CAPTURE_TID.load(Ordering::SeqCst) != gettid() {
        return;
    }
    let mut n = 0;
    // SAFETY: the dumper asks one thread at a time, so nothing else traces concurrently
    // through this slot; the unwinder does not allocate.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            CAPTURE_IPS[n].store(frame.ip() as usize, Ordering::Relaxed);
            n += 1;
            n < MAX_FRAMES
        });
    }
    CAPTURE_LEN.store(n, Ordering::SeqCst);
    CAPTURE_DONE.store(true, Ordering::SeqCst);
}

/// Writes one byte to the wake-up socket (async-signal-safe).
fn wake(what: u8) {
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full socket just drops the request
        // (a dump is already pending).
        unsafe { libc::write(fd, (&what as *const u8).cast(), 1) };
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Writes the dump for `why`.
fn dump(why: Reason, registry: &Addr<Registry>) {
    let mut text = String::new();
    let headline = match why {
        Reason::Kill => "requested with kill -SEGV",
        Reason::Fault => "after a fatal SIGSEGV",
        Reason::Periodic => "MITOGEN_DUMP_THREAD_STACKS",
    };
    let pid = std::process::id();
    // Capture first, symbolize last: loading the debug info can take seconds, and the stacks
    // and the actor table should both show the moment of the request.
    let stacks = capture_threads();
    let actors = actor_table(registry);
    let _ = writeln!(text, "=== ferrogen-mux {pid}: stack dump ({headline}) ===");
    text.push_str(&render_stacks(&stacks));
    let _ = writeln!(text, "=== actors ===");
    text.push_str(&actors);
    let _ = writeln!(text, "=== end of dump ===");
    if why != Reason::Periodic {
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    }
    info!(target: "ferrogen::dump", "\n{text}");
}

/// One thread's raw stack: its id, name and return addresses (`None`: it did not answer).
type ThreadStack = (i32, String, Option<Vec<usize>>);

/// Every thread's name and return addresses.
fn capture_threads() -> Vec<ThreadStack> {
    let me = gettid();
    let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    let mut stacks = Vec::with_capacity(tids.len());
    for tid in tids {
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| "?".into());
        let ips = if tid == me {
            let mut ips = Vec::new();
            backtrace::trace(|frame| {
                ips.push(frame.ip() as usize);
                ips.len() < MAX_FRAMES
            });
            Some(ips)
        } else {
            capture(tid)
        };
        stacks.push((tid, name, ips));
    }
    stacks
}

/// Every thread's name and symbolized stack.
fn render_stacks(stacks: &[ThreadStack]) -> String {
    let mut out = String::new();
    for (tid, name, ips) in stacks {
        let _ = writeln!(out, "--- thread {tid} \"{name}\" ---");
        match ips {
            Some(ips) => out.push_str(&symbolize(ips)),
            None => out.push_str("    (no answer: the thread did not take the signal)\n"),
        }
    }
    out
}

/// Asks thread `tid` to record its stack; `None` if it does not answer in time.
fn capture(tid: i32) -> Option<Vec<usize>> {
    CAPTURE_DONE.store(false, Ordering::SeqCst);
    CAPTURE_LEN.store(0, Ordering::SeqCst);
    CAPTURE_TID.store(tid, Ordering::SeqCst);
    let pid = std::process::id() as libc::pid_t;
    // SAFETY: tgkill(2) with our own pid only reaches our own threads.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR2) } == 0;
    let started = Instant::now();
    let answered = sent
        && loop {
            if CAPTURE_DONE.load(Ordering::SeqCst) {
                break true;
            }
            if started.elapsed() > THREAD_ANSWER {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
    CAPTURE_TID.store(0, Ordering::SeqCst);
    if !answered {
        return None;
    }
    let len = CAPTURE_LEN.load(Ordering::SeqCst).min(MAX_FRAMES);
    Some(
        CAPTURE_IPS[..len]
            .iter()
            .map(|ip| ip.load(Ordering::Relaxed))
            .collect(),
    )
}

/// `    #3 0xADDR name` and `at file:line` per frame, without the signal-handling frames on
/// top.
fn symbolize(ips: &[usize]) -> String {
    let mut frames: Vec<(usize, String, Option<String>)> = Vec::new();
    for &ip in ips {
        let mut resolved = false;
        backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
            resolved = true;
            let name = symbol
                .name()
                .map(|n| format!("{n:#}"))
                .unwrap_or_else(|| "<unknown>".into());
            let place = match (symbol.filename(), symbol.lineno()) {
                (Some(file), Some(line)) => Some(format!("{}:{line}", file.display())),
                _ => None,
            };
            frames.push((ip, name, place));
        });
        if !resolved {
            frames.push((ip, "<unknown>".into(), None));
        }
    }
    // Drop the capture itself: everything up to signal-hook's handler, then the kernel's
    // signal trampoline (`__restore_rt`, often unnamed) after it.
    let start = match frames
        .iter()
        .position(|(_, name, _)| name.starts_with("signal_hook_registry::handler"))
    {
        Some(i) => {
            let next = frames.get(i + 1).map(|(_, name, _)| name.as_str());
            if matches!(next, Some("<unknown>" | "__restore_rt")) {
                i + 2
            } else {
                i + 1
            }
        }
        None => 0,
    };
    let mut out = String::new();
    for (n, (ip, name, place)) in frames[start..].iter().enumerate() {
        let _ = writeln!(out, "    #{n:<3} {ip:#014x} {name}");
        if let Some(place) = place {
            let _ = writeln!(out, "                           at {place}");
        }
    }
    out
}

/// The actor table, as `ferrogen-mux status` prints it.
fn actor_table(registry: &Addr<Registry>) -> String {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<StatusRow>>();
    registry.do_send(messages::DumpStatus { respond_to: tx });
    match rx.recv_timeout(TABLE_ANSWER) {
        Ok(rows) => status_cli::render(&rows),
        Err(_) => format!(
            "(the actors did not answer within {}s: the actor thread is busy or stuck; see \
             its stack above)\n",
            TABLE_ANSWER.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_this_threads_stack() {
        let mut ips = Vec::new();
        backtrace::trace(|frame| {
            ips.push(frame.ip() as usize);
            true
        });
        let text = symbolize(&ips);
        assert!(text.contains("symbolizes_this_threads_stack"), "{text}");
        assert!(text.contains("stack_dump.rs"), "{text}");
    }

    #[test]
    fn other_threads_answer_the_capture_signal() {
        // SAFETY: registering a handler that only touches atomics.
        unsafe { signal_hook::low_level::register(libc::SIGUSR2, on_sigusr2) }.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("parked-test".into())
            .spawn(move || {
                tx.send(gettid()).unwrap();
                let _ = stop_rx.recv();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let ips = capture(tid).expect("the thread answers");
        assert!(!ips.is_empty());
        let text = symbolize(&ips);
        assert!(
            text.contains("other_threads_answer_the_capture_signal"),
            "{text}"
        );
        stop_tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
