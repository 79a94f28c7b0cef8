"""Connection delegation: the next hop's transport, started and relayed by this agent (mitogen_via)."""

import fcntl
import json
import os
import selectors
import signal
import zlib

from ansible_ferrogen.frames import FRAME_PREFIX, MAX_BODY, MAX_HEADER, TRANSFER_WINDOW, encode_frame, take_frame
from .link import INCREMENT_PREFIX, INCREMENT_TAG, PATCH_PREFIX, PATCH_TAG, segment_size, write_all
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


class RouteInput:
    """What the mux sends the agent behind this hop, read as it goes by: each blob (module zip)
    whose content crosses is kept here, and a blob sent `at_hop` (content this hop holds) gets
    that content in a blob frame of ours right behind it, so module code crosses the hop once.

    The stream is the mux's agent link: plain frames and deflate segments (link.py). Every unit
    goes on byte for byte; segments are inflated beside it only to see their frames, and a
    plain frame's body streams through without being held. A frame of ours goes in only where
    a frame ends. A reference to a blob whose content another route still carries holds the
    stream back until that content arrives. A stream that turns out not to be a link (what a
    test pipes through `cat`) passes as it is from there on."""

    def __init__(self, route):
        self.route = route
        self.pending = bytearray()
        self.inflater = zlib.decompressobj(-15)
        self.inflated = bytearray()
        # Bytes of a plain frame's body still to pass.
        self.passing = 0
        # (hash, interp) of the blobs to put in at the next frame boundary.
        self.served = []
        # Set while feed() runs, so that a blob it keeps resumes the other routes only.
        self.feeding = False
        # The mux closed the route while this input was held back: close once it drained.
        self.closing = False
        # Set at the first thing that is no frame of the link: the rest passes as it is.
        self.opaque = False

    def held_back(self):
        """Whether the stream waits for a blob another route brings."""
        return bool(self.served)

    def rest(self):
        """What is left at the end of the stream (nothing, from the mux)."""
        return self.take(len(self.pending))

    def feed(self, agent, data):
        """The bytes to write for what arrived, with the blobs this hop serves put in."""
        self.pending += data
        self.feeding = True
        try:
            return self.feed_pending(agent)
        finally:
            self.feeding = False

    def feed_pending(self, agent):
        out = []
        while not self.opaque:
            if self.passing:
                piece = self.take(min(self.passing, len(self.pending)))
                if not piece:
                    break
                out.append(piece)
                self.passing -= len(piece)
                continue
            if self.served and not self.inflated and not self.serve(agent, out):
                break
            unit = self.next_unit(agent)
            if unit is None:
                break
            out.append(unit)
        if self.opaque:
            out.append(self.rest())
        return b''.join(out)

    def serve(self, agent, out):
        """Put in the blobs referred to; False while one of them has not arrived."""
        while self.served:
            digest, interp = self.served[0]
            content = agent.held_blob(digest)
            if content is None:
                return False
            agent.log('debug', 'route %s: blob %s served from this hop' % (self.route, digest))
            out.append(encode_frame({'type': 'blob', 'hash': digest, 'interp': interp}, content))
            self.served.pop(0)
        return True

    def next_unit(self, agent):
        """The next whole segment, patch or increment (link.py: they remake a call, never a
        blob), a plain frame's prefix and header (its body then passes), or a whole plain blob
        frame; None until it has arrived."""
        pending = self.pending
        if not pending:
            return None
        if pending[0] == PATCH_TAG:
            if len(pending) < PATCH_PREFIX.size:
                return None
            end = PATCH_PREFIX.size + PATCH_PREFIX.unpack_from(pending)[3]
            return self.take(end) if len(pending) >= end else None
        if pending[0] == INCREMENT_TAG:
            return self.take(INCREMENT_PREFIX.size) if len(pending) >= INCREMENT_PREFIX.size else None
        try:
            prefix, size = segment_size(pending)
        except ValueError:
            self.opaque = True
            return None
        if prefix is not None:
            if not prefix or len(pending) < prefix + size:
                return None
            unit = self.take(prefix + size)
            try:
                self.inflated += self.inflater.decompress(unit[prefix:])
            except zlib.error:
                self.opaque = True
                return unit
            frame = take_frame(self.inflated)
            while frame is not None:
                self.observe(agent, *frame)
                frame = take_frame(self.inflated)
            return unit
        if len(pending) < FRAME_PREFIX.size:
            return None
        header_len, body_len = FRAME_PREFIX.unpack_from(pending)
        if header_len > MAX_HEADER or body_len > MAX_BODY:
            self.opaque = True
            return None
        header_end = FRAME_PREFIX.size + header_len
        if len(pending) < header_end:
            return None
        try:
            header = json.loads(bytes(pending[FRAME_PREFIX.size:header_end]).decode('utf-8'))
        except ValueError:
            self.opaque = True
            return None
        if not isinstance(header, dict):
            self.opaque = True
            return None
        if header.get('type') == 'blob':
            if len(pending) < header_end + body_len:
                return None
            unit = self.take(header_end + body_len)
            self.observe(agent, header, unit[header_end:])
            return unit
        self.passing = body_len
        return self.take(header_end)

    def observe(self, agent, header, body):
        if header.get('type') != 'blob':
            return
        if header.get('at_hop'):
            self.served.append((header['hash'], header.get('interp') or 0))
        elif body and agent.held_blob(header['hash']) is None:
            agent.store_blob(header['hash'], body)
            agent.log('debug', 'route %s: kept blob %s (%d bytes) for the targets behind this hop'
                      % (self.route, header['hash'], len(body)))
            resume_routes(agent)

    def take(self, size):
        unit = bytes(self.pending[:size])
        del self.pending[:size]
        return unit


class Route:
    """A next hop's transport, started in a session of its own with piped stdio; with
    `prompts` (an ssh that logs in with a password), a terminal whose prompts this agent
    answers is its controlling one."""

    def __init__(self, number, argv, prompts=None, selector=None):
        self.number = number
        self.input = RouteInput(number)
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

    def relay(self, agent, data):
        """Bytes from the mux for the agent behind this hop, served blobs put in."""
        self.write(self.input.feed(agent, data))
        if self.input.closing and not self.input.held_back():
            self.end_input()

    def end_input(self):
        self.write(self.input.rest())
        self.close_input()

    def write(self, data):
        if not data:
            return
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
        route.relay(agent, body)
    elif route.input.held_back():
        route.input.closing = True
    else:
        route.end_input()


def resume_routes(agent):
    """A blob arrived: the routes held back waiting for it go on."""
    for route in list(agent.routes.values()):
        if route.input.held_back() and not route.input.feeding:
            route.relay(agent, b'')


def stop_routes(agent):
    for route in agent.routes.values():
        route.stop()
