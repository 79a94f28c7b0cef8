"""The worker's connection to ferrogen-mux: one socket per process, opened lazily after fork."""

from __future__ import annotations

import itertools
import os
import socket

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.utils.display import Display

from ansible_ferrogen import frames

display = Display()

SOCKET_ENV = 'FERROGEN_MUX_SOCKET'

# The Ansible task this worker process runs, named in every call for the mux's actor table
# (set by the strategy's WorkerProcess hook; None outside a worker).
current_task: str | None = None


class MuxError(Exception):
    """A call failed; kind says how (docs/protocol.md lists the kinds)."""

    def __init__(self, kind: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.detail = detail


class StreamError(Exception):
    """The mux or agent broke the transfer protocol (transfer.py)."""


class MuxGone(AnsibleConnectionFailure):
    """No mux listens on the socket."""


class MuxClient:
    """Blocking request/response client; Ansible workers make one call at a time."""

    _instance: MuxClient | None = None

    def __init__(self, path: str):
        self.path = path
        self.pid = os.getpid()
        # The socket the strategy named (SOCKET_ENV) when this client was made, if any.
        self.named_path: str | None = None
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise MuxGone(f'cannot reach ferrogen-mux at {path}: {exc}') from exc
        try:
            self._sock.sendall(frames.encode({'type': 'hello', 'version': frames.PROTOCOL_VERSION,
                                              'pid': self.pid}))
            header, _ = frames.read_frame(self._sock.recv)
        except (OSError, EOFError, frames.FrameError) as exc:
            self._sock.close()
            raise AnsibleConnectionFailure(f'cannot reach ferrogen-mux at {path}: {exc}') from exc
        if header.get('type') != 'hello':
            self._sock.close()
            raise AnsibleError(f'ferrogen-mux at {path} refused this worker: {header.get("message", header)}')
        self.mux_pid: int | None = header.get('mux_pid')

    @classmethod
    def get(cls, start: bool = True) -> MuxClient | None:
        """The client for this process; a forked worker gets its own socket. The mux is the one
        the strategy started (SOCKET_ENV), else the run's own (run_mux.py), started now unless
        it runs or start is false (then None)."""
        named = os.environ.get(SOCKET_ENV)
        current = cls._instance
        if current is not None and current.pid == os.getpid() and current.named_path == named:
            return current
        client = None
        if named:
            try:
                client = cls(named)
            except MuxGone as exc:
                display.vvv(f'ferrogen: {exc}; using the mux a worker starts in its place')
        if client is None:
            # Imported only where no strategy's mux answers, run_mux only by the worker that
            # starts the run's mux (it needs mux_process, which needs this module).
            from ansible_ferrogen import run_socket

            try:
                client = cls(run_socket.socket_path())
            except MuxGone:
                if not start:
                    return None
                from ansible_ferrogen import run_mux

                client = cls(run_mux.find_or_start())
        client.named_path = named
        cls._instance = client
        return client

    def call(self, target: dict, op: str, args: dict, body: bytes = b'',
             blobs: dict[str, bytes] | None = None, become: dict | None = None,
             detached: bool = False, while_waiting=None) -> tuple[dict, bytes]:
        """Run op on target (as the become account, if given); upload any blob the mux lacks
        and retry once. A detached call is only acknowledged (docs/protocol.md).
        while_waiting() runs once the call is sent, before its reply is read."""
        blobs = blobs or {}
        request = {'type': 'call', 'target': target, 'op': op, 'args': args, 'blobs': list(blobs)}
        if detached:
            request['detached'] = True
        if current_task:
            request['task'] = current_task
        if become is not None:
            request['become'] = become
        header, reply_body = self._roundtrip(request, body, while_waiting)
        if not header.get('ok') and header.get('error', {}).get('kind') == frames.MISSING_BLOB:
            for digest in header['error'].get('hashes') or list(blobs):
                self._send(frames.encode({'type': 'blob', 'hash': digest}, blobs[digest]))
            header, reply_body = self._roundtrip(request, body)
        result = self._result(header)
        if result.get('output') is not None:
            reply_body = self.fetch_output(target, op, result['output'], become)
        return result, reply_body

    def fetch_output(self, target: dict, op: str, output: int, become: dict | None) -> bytes:
        """A task output too large for one frame, fetched in chunks from the interpreter that
        ran the task (docs/protocol.md, "Streamed output")."""
        from ansible_ferrogen import transfer  # most workers transfer nothing

        sink = transfer.OutputSink()
        self._stream(transfer.fetch_stream, target, {'output': output, 'path': f'output of {op}'}, become, sink)
        return bytes(sink.data)

    def connect_ahead(self, target: dict) -> None:
        """Have the mux start connecting to target now; nothing comes back, and a failure
        reaches the next call (docs/protocol.md, "Connecting ahead")."""
        self._send(frames.encode({'type': 'connect', 'target': target}))

    def put_stream(self, target: dict, args: dict, source, size: int, become: dict | None = None,
                   report=None) -> dict:
        """Stream an open file to args['path'] on target (transfer.put_stream)."""
        from ansible_ferrogen import transfer  # most workers transfer nothing

        return self._stream(transfer.put_stream, target, args, become, source, size, report)

    def fetch_stream(self, target: dict, path: str, sink, become: dict | None = None, report=None) -> dict:
        """Stream a target file into sink, an uncommitted transfer.AtomicFile."""
        from ansible_ferrogen import transfer  # most workers transfer nothing

        return self._stream(transfer.fetch_stream, target, {'path': path}, become, sink, report)

    def _stream(self, run, target: dict, args: dict, become: dict | None, *rest):
        request = {'type': 'call', 'target': target, 'args': args}
        if become is not None:
            request['become'] = become
        try:
            return run(self, request, *rest)
        except (MuxError, StreamError):
            raise  # the transfer is over; the socket is in step
        except BaseException:
            # Stopped mid-stream (local disk full, interrupted): closing the socket makes the
            # mux cancel the transfer and the agent remove its temp file.
            self._forget()
            raise

    # Primitives for the streaming loops in transfer.py.

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, data: bytes) -> None:
        self._send(data)

    def read(self) -> tuple[dict, bytes]:
        try:
            return frames.read_frame(self._sock.recv)
        except (OSError, EOFError, frames.FrameError) as exc:
            raise self._lost(exc) from exc

    def result(self, header: dict) -> dict:
        return self._result(header)

    def reset(self, target: dict) -> None:
        """Shut the target's connection and interpreters down."""
        header, _ = self._roundtrip({'type': 'reset', 'target': target})
        self._result(header)

    @staticmethod
    def _result(header: dict) -> dict:
        if not header.get('ok'):
            error = header.get('error') or {}
            raise MuxError(error.get('kind', 'unknown'), error.get('message', 'no message'), error.get('detail'))
        return header.get('result') or {}

    def _roundtrip(self, request: dict, body: bytes = b'', while_waiting=None):
        call_id = next(self._ids)
        self._send(frames.encode(dict(request, id=call_id), body))
        if while_waiting is not None:
            while_waiting()
        while True:
            header, reply_body = self.read()
            if header.get('type') == 'reply' and header.get('id') == call_id:
                return header, reply_body

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> AnsibleConnectionFailure:
        """The error for a mux that went away mid-call, saying how it ended where that can be
        told; the next call finds or starts another."""
        from ansible_ferrogen import run_mux

        self._forget()
        how = run_mux.how_it_ended(self.mux_pid, os.path.dirname(self.path))
        which = f', which {how}' if how else ''
        return AnsibleConnectionFailure(f'lost ferrogen-mux at {self.path}{which}: {exc}')

    def _forget(self) -> None:
        self._sock.close()
        if MuxClient._instance is self:
            MuxClient._instance = None
