//! ssh's prompts, answered by the mux: ssh reads passwords and host key answers from its
//! controlling terminal, never from stdin (which carries the agent link). A connection with a
//! password starts ssh in a session of its own whose controlling terminal is a pty the mux
//! holds ([`Terminal`]); [`answer_prompts`] reads what ssh prints there and types the answers
//! that [`PromptReader`] decides on. No sshpass, and the password is on no command line, in no
//! environment and in no log: the terminal's echo is off, and the only place the password is
//! read is [`PromptReader::feed`]'s [`Reply::Password`].
//!
//! One answer per prompt kind: a second password prompt means ssh did not accept the first, so
//! the mux declines it (end of input) and ssh reports "Permission denied" itself. A host key
//! prompt gets `yes` only where host key checking is off (ssh is then told not to ask anyway),
//! else `no`, and ssh says "Host key verification failed.".

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag, OFlag},
    pty::openpty,
    sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg},
};
use tokio::{io::unix::AsyncFd, sync::oneshot};
use tracing::debug;
use worker_ipc::{RoutePrompts, Secret};

use super::StderrTail;

/// What the terminal's end-of-input character (VEOF, ^D) is by default: typed at a prompt,
/// ssh reads an empty line's end and gives the prompt up.
const END_OF_INPUT: &[u8] = b"\x04";

/// How much of the terminal's latest text is kept to recognise a prompt in.
const PROMPT_WINDOW: usize = 1024;

/// What the mux answers on one ssh's terminal.
#[derive(Clone)]
pub struct PromptAnswers {
    /// The login password, typed at the first password prompt.
    password: Secret,
    /// Whether an unknown host key is accepted (host key checking off).
    accept_host_key: bool,
}

impl PromptAnswers {
    /// Answers with `password`; host keys refused where `host_key_checking` is on.
    pub fn new(password: Secret, host_key_checking: bool) -> PromptAnswers {
        PromptAnswers {
            password,
            accept_host_key: !host_key_checking,
        }
    }

    /// The same answers for a hop's agent to type, where the ssh runs on a hop
    /// (`mitogen_via`): sent in the route's `route_open` frame.
    pub fn for_route(&self) -> RoutePrompts {
        RoutePrompts {
            password: self.password.clone(),
            accept_host_key: self.accept_host_key,
        }
    }
}

/// What to type at the prompt ssh just printed.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The password and a newline.
    Password,
    /// `yes`: record the host key.
    AcceptHostKey,
    /// `no`: the host key is not trusted.
    RefuseHostKey,
    /// End of input: a prompt asked again, or one the mux has no answer for.
    Decline,
}

/// Recognises ssh's prompts in its terminal output.
pub struct PromptReader {
    /// What the mux may answer.
    answers: PromptAnswers,
    /// The terminal's text since the last answer (at most [`PROMPT_WINDOW`] bytes).
    text: Vec<u8>,
    /// Whether the password was typed already: a second password prompt is a refusal.
    password_sent: bool,
}

impl PromptReader {
    /// A reader for a terminal that has printed nothing yet.
    pub fn new(answers: PromptAnswers) -> PromptReader {
        PromptReader {
            answers,
            text: Vec::new(),
            password_sent: false,
        }
    }

    /// Takes what ssh printed; the reply to type if that completes a prompt.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Reply> {
        self.text.extend_from_slice(bytes);
        if self.text.len() > PROMPT_WINDOW {
            let excess = self.text.len() - PROMPT_WINDOW;
            self.text.drain(..excess);
        }
        let text = String::from_utf8_lossy(&self.text).to_lowercase();
        // A prompt is the last line, not yet ended, waiting for input.
        let last = text.rsplit('\n').next().unwrap_or_default().trim();
        let reply = if last.contains("(yes/no") {
            Some(if self.answers.accept_host_key {
                Reply::AcceptHostKey
            } else {
                Reply::RefuseHostKey
            })
        } else if last.ends_with(':') && last.contains("password") && !self.password_sent {
            self.password_sent = true;
            Some(Reply::Password)
        } else if last.ends_with(':') || last.ends_with('?') {
            Some(Reply::Decline)
        } else {
            None
        };
        if reply.is_some() {
            self.text.clear();
        }
        reply
    }

    /// The bytes to type for `reply`.
    fn typed(&self, reply: &Reply) -> Vec<u8> {
        match reply {
            Reply::Password => format!("{}\n", self.answers.password.expose()).into_bytes(),
            Reply::AcceptHostKey => b"yes\n".to_vec(),
            Reply::RefuseHostKey => b"no\n".to_vec(),
            Reply::Decline => END_OF_INPUT.to_vec(),
        }
    }
}

/// A pty for one ssh: ssh's controlling terminal is its slave side, the mux reads the master.
pub struct Terminal {
    /// The side the mux reads and types on.
    master: OwnedFd,
    /// ssh's side. The mux keeps it open as long as ssh runs, so reading the master never
    /// fails between prompts (ssh opens and closes `/dev/tty` around each one).
    slave: OwnedFd,
}

impl Terminal {
    /// A new pty with echo off (nothing typed comes back as text) and both ends close-on-exec
    /// (ssh reaches its terminal as `/dev/tty`).
    ///
    /// # Errors
    ///
    /// No pty could be had.
    pub fn open() -> io::Result<Terminal> {
        let pty = openpty(None, None)?;
        let mut modes = tcgetattr(&pty.slave)?;
        modes
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ECHONL);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &modes)?;
        for fd in [&pty.master, &pty.slave] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        fcntl(pty.master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Terminal {
            master: pty.master,
            slave: pty.slave,
        })
    }

    /// The slave's descriptor, for the child to make its controlling terminal
    /// ([`make_controlling_terminal`]).
    pub fn slave_fd(&self) -> RawFd {
        self.slave.as_raw_fd()
    }
}

/// In the child, between fork and exec: a new session whose controlling terminal is `slave`.
///
/// # Errors
///
/// `setsid` or `TIOCSCTTY` failed.
pub fn make_controlling_terminal(slave: RawFd) -> io::Result<()> {
    // SAFETY: setsid(2) and ioctl(2) are async-signal-safe and touch no memory of ours.
    unsafe {
        if nix::libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if nix::libc::ioctl(slave, nix::libc::TIOCSCTTY, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads ssh's terminal until ssh ends (`ended`), answering its prompts; what ssh printed there
/// goes to the stderr tail, so that a refusal's message shows the prompt.
pub async fn answer_prompts(
    terminal: Terminal,
    answers: PromptAnswers,
    tail: StderrTail,
    name: String,
    mut ended: oneshot::Receiver<()>,
) {
    let Terminal { master, slave } = terminal;
    // SAFETY: an OwnedFd is an open descriptor that stays the same, and open, until the
    // AsyncFd that owns it is dropped.
    let master = match unsafe { AsyncFd::register(master) } {
        Ok(master) => master,
        Err(err) => {
            debug!(target = %name, "cannot watch ssh's terminal: {err}");
            return;
        }
    };
    let mut reader = PromptReader::new(answers);
    let mut buf = vec![0u8; 4096];
    loop {
        let mut ready = tokio::select! {
            ready = master.readable() => match ready {
                Ok(ready) => ready,
                Err(_) => break,
            },
            _ = &mut ended => break,
        };
        let n = match ready
            .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(io::Error::from))
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_would_block) => continue,
        };
        debug!(target = %name, "ssh terminal: {}", String::from_utf8_lossy(&buf[..n]).trim_end());
        tail.push(&buf[..n]);
        if let Some(reply) = reader.feed(&buf[..n]) {
            debug!(target = %name, ?reply, "answering ssh's prompt");
            let typed = reader.typed(&reply);
            if let Err(err) = nix::unistd::write(master.get_ref(), &typed) {
                debug!(target = %name, "cannot answer ssh's prompt: {err}");
            }
            if reply != Reply::Password {
                // Ends the prompt's line in the tail: the next text starts a line of its own.
                tail.push(b"\n");
            }
        }
    }
    drop(slave);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(host_key_checking: bool) -> PromptReader {
        PromptReader::new(PromptAnswers::new(
            Secret::new("hunter2"),
            host_key_checking,
        ))
    }

    #[test]
    fn the_password_goes_once_then_a_second_prompt_is_declined() {
        let mut r = reader(true);
        assert_eq!(r.feed(b"(ferropw@127.0.0.1) Pass"), None);
        assert_eq!(r.feed(b"word: "), Some(Reply::Password));
        assert_eq!(r.typed(&Reply::Password), b"hunter2\n");
        assert_eq!(
            r.feed(b"\nferropw@127.0.0.1's password: "),
            Some(Reply::Decline)
        );
        assert_eq!(r.typed(&Reply::Decline), END_OF_INPUT);
    }

    #[test]
    fn host_keys_follow_host_key_checking() {
        let prompt = b"The authenticity of host '[127.0.0.1]:2299' can't be established.\n\
            ED25519 key fingerprint is SHA256:abc.\n\
            Are you sure you want to continue connecting (yes/no/[fingerprint])? ";
        assert_eq!(reader(true).feed(prompt), Some(Reply::RefuseHostKey));
        assert_eq!(reader(false).feed(prompt), Some(Reply::AcceptHostKey));
    }

    #[test]
    fn lines_that_are_no_prompt_wait_and_unknown_prompts_are_declined() {
        let mut r = reader(true);
        assert_eq!(r.feed(b"Welcome to the bastion\n"), None);
        assert_eq!(r.feed(b"Verification code: "), Some(Reply::Decline));
    }

    #[tokio::test]
    async fn a_child_on_the_terminal_gets_its_answer() {
        use std::os::unix::process::CommandExt as _;
        let terminal = Terminal::open().unwrap();
        let slave = terminal.slave_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "printf 'Password: ' >/dev/tty; read -r answer </dev/tty; echo \"got $answer\"",
        ])
        .stdout(std::process::Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || make_controlling_terminal(slave));
        }
        let child = cmd.spawn().unwrap();
        let tail = StderrTail::default();
        let (done, ended) = oneshot::channel();
        let answering = tokio::spawn(answer_prompts(
            terminal,
            PromptAnswers::new(Secret::new("hunter2"), true),
            tail.clone(),
            "t".into(),
            ended,
        ));
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let _ = done.send(());
        answering.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "got hunter2\n");
        assert!(tail.lines().iter().all(|l| !l.contains("hunter2")));
        assert_eq!(tail.lines(), vec!["Password:".to_owned()]);
    }
}
