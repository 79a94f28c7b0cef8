"""Connection delegation: the next hop's transport, started and relayed by this agent (mitogen_via)."""

import fcntl
import os
import selectors
import signal

from ansible_ferrogen.frames import TRANSFER_WINDOW
from .link import write_all
from .route_terminal import RouteTerminal
from .transfers import F_SETPIPE_SZ


# -- connection delegation (mitogen_via) -------------------------------------------------------
# The mux reaches a target behind this host by asking this agent to start that target's
# transport here (argv built by the mux) and relay its stdio as route frames.

ROUTE_FRAMES = ('route_open', 'route_data', 'route_close')
ROUTE_READ = 1 << 16
ROUTE_STDERR_TAIL = 4096


class RouteStream:
    """The selector's tag of one of a route's output pipes."""

    def __init__(self, route, fd, name):
        self.route = route
        self.fd = fd
        self.name = name


class Route:
    """A next hop's transport, started in a session of its own with piped stdio; with
    `prompts` (an ssh that logs in with a password), a terminal whose prompts this agent
    answers is its controlling one."""

    def __init__(self, number, argv, prompts=None, selector=None):
        self.number = number
        self.stderr = bytearray()
        self.status = None
        self.open_streams = 2
        self.terminal = RouteTerminal(prompts) if prompts else None
        stdin_r, self.stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setsid()
                if self.terminal is not None:
                    self.terminal.become_controlling()
                for fd, target in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
                    os.dup2(fd, target)
                os.execvp(argv[0], argv)
            except Exception as exc:
                os.write(2, ('cannot run %r: %s\n' % (argv[0], exc)).encode())
            os._exit(127)
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        # Writes to the next hop block this agent while its pipe is full: make that rare.
        for fd in (self.stdin_w, stdout_r):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, TRANSFER_WINDOW)
            except (OSError, ValueError):
                pass
        self.streams = [RouteStream(self, stdout_r, 'stdout'), RouteStream(self, stderr_r, 'stderr')]
        for stream in self.streams:
            os.set_blocking(stream.fd, False)
        # A process that waits at a prompt reads no stdin, and this agent must stay free to
        # answer it: with a terminal, stdin is written without blocking, the rest kept until
        # the process reads (`pending`, flushed when the selector says it is writable).
        self.selector = selector
        self.pending = None
        self.write_waits = False
        self.closing = False
        if self.terminal is not None:
            self.streams.append(RouteStream(self, self.terminal.master, 'terminal'))
            self.pending = bytearray()
            os.set_blocking(self.stdin_w, False)
            self.stdin_stream = RouteStream(self, self.stdin_w, 'stdin')

    def write(self, data):
        if self.pending is not None:
            if self.stdin_w is not None:
                self.pending += data
                self.flush_pending()
        elif self.stdin_w is not None:
            try:
                write_all(self.stdin_w, data)
            except OSError:
                self.close_input()

    def flush_pending(self):
        try:
            while self.pending:
                del self.pending[:os.write(self.stdin_w, self.pending)]
        except BlockingIOError:
            pass
        except OSError:
            self.pending.clear()
            self.closing = True
        if self.pending and not self.write_waits:
            self.selector.register(self.stdin_w, selectors.EVENT_WRITE, self.stdin_stream)
        elif not self.pending and self.write_waits:
            self.selector.unregister(self.stdin_w)
        self.write_waits = bool(self.pending)
        if self.closing and not self.pending:
            self.close_input()

    def close_input(self):
        if self.pending:
            # The mux is done: what it sent still goes, then stdin closes.
            self.closing = True
            return
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def on_output(self, agent, stream):
        if stream.name == 'stdin':
            if self.stdin_w == stream.fd:
                self.flush_pending()
            return
        if stream.name == 'terminal':
            self.on_terminal(agent, stream)
            return
        try:
            data = os.read(stream.fd, ROUTE_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b''
        if not data:
            agent.selector.unregister(stream.fd)
            os.close(stream.fd)
            self.open_streams -= 1
            self.maybe_closed(agent)
        elif stream.name == 'stdout':
            agent.channel.send({'type': 'route_data', 'route': self.number}, data)
        else:
            self.keep_stderr(data)

    def on_terminal(self, agent, stream):
        # The terminal may have closed (the process ended) earlier in this round of events.
        if self.terminal is None or self.terminal.master != stream.fd:
            return
        text = self.terminal.on_readable()
        if text is None:
            self.close_terminal(agent)
        else:
            self.keep_stderr(text)

    def close_terminal(self, agent):
        if self.terminal is not None:
            agent.selector.unregister(self.terminal.master)
            self.terminal.close()
            self.terminal = None

    def keep_stderr(self, data):
        self.stderr += data
        del self.stderr[:-ROUTE_STDERR_TAIL]

    def exited(self, agent, status):
        self.status = status
        self.drop_pending()
        self.close_input()
        self.close_terminal(agent)
        self.maybe_closed(agent)

    def maybe_closed(self, agent):
        if self.status is None or self.open_streams:
            return
        frame = {'type': 'route_closed', 'route': self.number,
                 'stderr': self.stderr.decode('utf-8', 'replace')}
        if os.WIFEXITED(self.status):
            frame['status'] = os.WEXITSTATUS(self.status)
        elif os.WIFSIGNALED(self.status):
            frame['signal'] = os.WTERMSIG(self.status)
        agent.routes.pop(self.number, None)
        agent.channel.send(frame)

    def drop_pending(self):
        if self.write_waits:
            self.pending.clear()
            self.selector.unregister(self.stdin_w)
            self.write_waits = False

    def stop(self):
        self.drop_pending()
        self.close_input()
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except OSError:
            pass


def on_route_frame(agent, kind, header, body):
    number = header.get('route')
    if kind == 'route_open':
        try:
            route = Route(number, [str(arg) for arg in header.get('argv') or ()], header.get('prompts'),
                          agent.selector)
        except Exception as exc:
            agent.channel.send({'type': 'route_closed', 'route': number, 'error': str(exc), 'stderr': ''})
            return
        agent.log('debug', 'route %s: started %s (pid %d)' % (number, header['argv'][0], route.pid))
        agent.routes[number] = route
        agent.route_pids[route.pid] = route
        for stream in route.streams:
            agent.selector.register(stream.fd, selectors.EVENT_READ, stream)
        route.write(body)
        return
    route = agent.routes.get(number)
    if route is None:
        return
    if kind == 'route_data':
        route.write(body)
    else:
        route.close_input()


def stop_routes(agent):
    for route in agent.routes.values():
        route.stop()
