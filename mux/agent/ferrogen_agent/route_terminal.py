"""A route's ssh prompts, answered by this agent: a hop's ssh that logs in with a password
reads it from its controlling terminal, which is a pty this agent opens for it.

The same decisions as the mux's for the ssh it starts itself (mux/src/transport/ssh_prompts.rs):
one password per connection (a second prompt means it was refused, and ssh then says
"Permission denied" itself), host keys accepted only where host key checking is off, any other
prompt declined. The password comes in the route_open frame and goes to the terminal only;
echo is off, so it never comes back as text.
"""

import fcntl
import os
import termios

# The terminal's end-of-input character (VEOF, ^D): typed at a prompt, ssh gives it up.
END_OF_INPUT = b'\x04'

# How much of the terminal's latest text is kept to recognise a prompt in.
PROMPT_WINDOW = 1024

TERMINAL_READ = 4096


class PromptReader:
    """Recognises ssh's prompts in what it prints on its terminal."""

    def __init__(self, password, accept_host_key):
        self.password = password
        self.accept_host_key = accept_host_key
        self.text = b''
        self.password_sent = False

    def feed(self, data):
        """The reply ('password', 'accept_host_key', 'refuse_host_key', 'decline') if `data`
        completes a prompt, else None."""
        self.text = (self.text + data)[-PROMPT_WINDOW:]
        # A prompt is the last line, not yet ended, waiting for input.
        last = self.text.decode('utf-8', 'replace').lower().rsplit('\n', 1)[-1].strip()
        if '(yes/no' in last:
            reply = 'accept_host_key' if self.accept_host_key else 'refuse_host_key'
        elif last.endswith(':') and 'password' in last and not self.password_sent:
            self.password_sent = True
            reply = 'password'
        elif last.endswith(':') or last.endswith('?'):
            reply = 'decline'
        else:
            return None
        self.text = b''
        return reply

    def typed(self, reply):
        """The bytes to type for `reply`."""
        if reply == 'password':
            return self.password.encode('utf-8') + b'\n'
        if reply == 'decline':
            return END_OF_INPUT
        return b'yes\n' if reply == 'accept_host_key' else b'no\n'


class RouteTerminal:
    """The pty of one route's process, with what to answer on it."""

    def __init__(self, prompts):
        self.reader = PromptReader(str(prompts.get('password') or ''), bool(prompts.get('accept_host_key')))
        self.master, self.slave = os.openpty()
        modes = termios.tcgetattr(self.slave)
        modes[3] &= ~(termios.ECHO | termios.ECHONL)
        termios.tcsetattr(self.slave, termios.TCSANOW, modes)
        os.set_blocking(self.master, False)

    def become_controlling(self):
        """In the child, after setsid: the pty is its controlling terminal (ssh's /dev/tty)."""
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)

    def on_readable(self):
        """What ssh printed, for the stderr tail (so that a refusal shows the prompt), its
        prompt answered; None once the terminal has nothing more to give."""
        try:
            data = os.read(self.master, TERMINAL_READ)
        except BlockingIOError:
            return b''
        except OSError:
            return None
        if not data:
            return None
        reply = self.reader.feed(data)
        if reply is None:
            return data
        try:
            os.write(self.master, self.reader.typed(reply))
        except OSError:
            pass
        # ssh ends a password prompt's line itself; other answers end theirs here, so that the
        # next text starts a line of its own.
        return data if reply == 'password' else data + b'\n'

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
