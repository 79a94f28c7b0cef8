"""Where the run's mux listens when no strategy started it: every connection-only worker asks,
and only the first one starts the mux (run_mux.py, which describes the run's directory), so this
is kept apart from the starting."""

from __future__ import annotations

import multiprocessing
import os
import tempfile

RUN_DIR_PREFIX = 'ferrogen-run-'
SOCKET_NAME = 'mux.sock'


def run_pid() -> int:
    """The ansible-playbook process this process works for: a worker's parent, else itself."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else os.getpid()


def start_time(pid: int) -> str:
    """The process's start time (in clock ticks since boot), which a reused pid does not share."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as handle:
            return handle.read().rsplit(b')', 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return '0'


def run_dir(pid: int | None = None) -> str:
    pid = run_pid() if pid is None else pid
    return os.path.join(tempfile.gettempdir(), f'{RUN_DIR_PREFIX}{os.getuid()}-{pid}-{start_time(pid)}')


def socket_path() -> str:
    """Where this run's mux listens (or will)."""
    return os.path.join(run_dir(), SOCKET_NAME)
