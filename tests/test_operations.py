"""Mux operations (issue 5): connection pool, stack dumps, status, lifecycle, faults and hostile
input, each shown by real ansible-playbook runs over the test sshd.

Runs that the test acts on while they are going (kill -SEGV, kill -9, Ctrl-C, hostile frames,
`ferrogen-mux status`) are started with `LiveRun`; their long task touches
`<flags>/<host>.started` so the test knows when "mid-task" is.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import helpers
import pytest
from helpers import PLAYBOOKS, REPO, describe, ssh_host_line, write_inventory

pytestmark = pytest.mark.mux_only

TOOLS = REPO / "tests" / "tools"
MUX_BINARY = REPO / "target" / "release" / "ferrogen-mux"


# --------------------------------------------------------------------------- helpers


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    """Running (a zombie is as good as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains marker."""
    found = []
    for pid in helpers.live_pids():
        if pid == os.getpid():
            continue
        args = " ".join(_cmdline(pid))
        if marker in args and _alive(pid):
            found.append((pid, args[:200]))
    return found


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """predicate()'s first truthy value within timeout, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def debug_log(pid: int) -> Path:
    """A process's MITOGEN_ROUTER_DEBUG log: /tmp/mitogen.<pid>.log, or the
    /tmp/mitogen.<pid>.<n>.log it wrote instead when that name was not its own (the newest)."""
    candidates = [Path(f"/tmp/mitogen.{pid}.log"), *map(Path, glob.glob(f"/tmp/mitogen.{pid}.*.log"))]
    return max((path for path in candidates if path.is_file()), key=lambda path: path.stat().st_mtime)


def debug_logs_since(since: float) -> list[Path]:
    """The MITOGEN_ROUTER_DEBUG logs written on this machine since `since` (a time.time())."""
    return [Path(p) for p in glob.glob("/tmp/mitogen.*.log") if os.stat(p).st_mtime >= since]


def marked_inventory(tmp_path: Path, marker: str, hosts=("sshroot",), extra: str = "") -> Path:
    """The test sshd's hosts with `marker` on every ssh command line (as a harmless SetEnv), so
    the test can find the run's ssh processes."""
    users = {"sshroot": "root", "sshuser": "ferrotest"}
    lines = [
        ssh_host_line(host, user=users[host], extra=f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_OPS={marker}' {extra}")
        for host in hosts
    ]
    return write_inventory(tmp_path / f"inventory-{uuid.uuid4().hex[:6]}.ini", lines)


class LiveRun:
    """An ansible-playbook run in the background (its own process group), for tests that act
    on it while it runs."""

    def __init__(self, playbook: str, tmp_path: Path, inventory: Path, *, extra_env=None, extra_args=()):
        self.dir = Path(tmp_path) / f"live-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        # Outside pytest's private tmp dir: tasks run as other users must reach it.
        self.flags = Path(tempfile.mkdtemp(prefix="ferrogen-ops-", dir="/tmp"))
        self.flags.chmod(0o1777)
        self.results_file = self.dir / "results.jsonl"
        env = helpers.base_env(self.dir, ferrogen=True)
        env["FERROGEN_RESULTS"] = str(self.results_file)
        env.update(extra_env or {})
        cmd = [
            str(helpers.ansible_playbook_bin()), "-i", str(inventory), str(PLAYBOOKS / playbook),
            "-e", f"ops_flag_dir={self.flags}", *extra_args,
        ]  # fmt: skip
        self.stdout_path = self.dir / "stdout"
        self.stderr_path = self.dir / "stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        self.started = time.monotonic()

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + "\n" + self.stderr_path.read_text(errors="replace")

    def wait_started(self, host: str, timeout: float = 30) -> None:
        """Wait until the long task is running on host."""
        flag = self.flags / f"{host}.started"
        if not wait_until(lambda: flag.exists() or self.proc.poll() is not None, timeout) or not flag.exists():
            self.kill()
            raise AssertionError(f"the long task never started on {host}:\n{self.output()}")

    def mux_pid(self, timeout: float = 30) -> int:
        """The run's ferrogen-mux: the child of ansible-playbook running `ferrogen-mux serve`."""

        def find():
            for pid in helpers.live_pids():
                args = _cmdline(pid)
                if helpers.parent_pid(pid) == self.proc.pid and args[1:2] == ["serve"] and "ferrogen-mux" in args[0]:
                    return pid
            return None

        pid = wait_until(find, timeout)
        assert pid, f"no ferrogen-mux child of ansible-playbook {self.proc.pid}:\n{self.output()}"
        return pid

    def mux_socket(self) -> str:
        """The socket path, from the mux's command line (`serve --socket PATH`)."""
        args = _cmdline(self.mux_pid())
        return args[args.index("--socket") + 1]

    def finish(self, timeout: float = 120) -> helpers.PlaybookRun:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ansible-playbook did not finish in {timeout}s:\n{self.output()}") from None
        shutil.rmtree(self.flags, ignore_errors=True)
        results = []
        if self.results_file.exists():
            results = [json.loads(line) for line in self.results_file.read_text().splitlines() if line.strip()]
        return helpers.PlaybookRun(
            self.proc.returncode, results, self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.flags, ignore_errors=True)


def assert_all_gone(pids: list[int], marker: str, within: float, what: str) -> None:
    """Every process in pids, and every process with marker on its command line, is gone within
    `within` seconds."""

    def leftovers():
        alive = [(pid, " ".join(_cmdline(pid))[:120]) for pid in pids if _alive(pid)]
        return alive + processes_with(marker)

    wait_until(lambda: not leftovers(), within)
    remaining = leftovers()
    assert not remaining, f"{what}: still running after {within}s: {remaining}"


# --------------------------------------------------------------------------- 1. connection pool


def _max_overlap(starts: list[float], length: float) -> int:
    """Most intervals [s, s + length) open at one instant."""
    events = sorted([(s, 1) for s in starts] + [(s + length, -1) for s in starts])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def test_pool_bounds_simultaneous_setups(run_playbook, tmp_path):
    """40 distinct targets (the ssh options differ), 40 forks, MITOGEN_POOL_SIZE=8, and an ssh
    wrapper that records its start and waits 1 s before connecting: every set-up lasts at least
    that second, so no more than 8 of those seconds may overlap."""
    delay = 1.0
    starts_file = tmp_path / "ssh-starts"
    marker = uuid.uuid4().hex
    lines = [
        ssh_host_line(
            f"pool{n:02d}",
            extra=f"ansible_ssh_executable={TOOLS / 'slow_ssh'} "
            f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_OPS={marker}-{n:02d}'",
        )
        for n in range(40)
    ]
    inventory = write_inventory(tmp_path / "inventory.ini", lines)
    env = {
        "MITOGEN_POOL_SIZE": "8",
        "FERROGEN_SSH_STARTS": str(starts_file),
        "FERROGEN_SSH_DELAY": str(delay),
        "ANSIBLE_FORKS": "40",
    }
    run = run_playbook("ops_ping.yml", ferrogen=True, inventory=inventory, extra_env=env, timeout=120)
    assert run.returncode == 0, describe(run)
    hosts = {r["host"] for r in run.results if r["status"] == "ok" and r["task"] == "who am i"}
    assert hosts == {f"pool{n:02d}" for n in range(40)}, describe(run)

    starts = [float(line.split()[0]) for line in starts_file.read_text().splitlines()]
    assert len(starts) == 40, starts  # one connection per target, no retries
    overlap = _max_overlap(starts, delay)
    assert overlap <= 8, f"{overlap} set-ups at once with MITOGEN_POOL_SIZE=8"
    # 40 forks ask at once, so the pool (not Ansible's forks) is what held them back.
    assert overlap == 8, f"only {overlap} set-ups ran at once: the pool was never full"


# --------------------------------------------------------------------------- 9. invalid settings


@pytest.mark.parametrize(
    ("name", "value"),
    [("MITOGEN_POOL_SIZE", "0"), ("MITOGEN_POOL_SIZE", "eight"), ("MITOGEN_MAX_INTERPRETERS", "-1")],
)
def test_invalid_setting_stops_the_run_at_start(run_playbook, name, value):
    run = run_playbook("ops_ping.yml", ferrogen=True, limit="sshroot", extra_env={name: value}, timeout=60)
    assert run.returncode != 0, describe(run)
    assert run.results == [], "tasks ran despite the invalid setting"
    assert f"{name}={value!r}" in run.output or f'{name}="{value}"' in run.output, describe(run)
    assert "positive integer" in run.output, describe(run)


# --------------------------------------------------------------------------- 2. + 10. SEGV, status


def test_sigsegv_dumps_stacks_and_actors_and_the_run_goes_on(tmp_path):
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex)
    since = time.time() - 1
    live = LiveRun("ops_long_task.yml", tmp_path, inventory, extra_env={"MITOGEN_ROUTER_DEBUG": "1"})
    mux = live.mux_pid()
    live.wait_started("sshroot")
    os.kill(mux, signal.SIGSEGV)
    time.sleep(0.5)
    os.kill(mux, signal.SIGSEGV)  # a second one is answered the same way: the handler stays
    run = live.finish()
    assert run.returncode == 0, describe(run)
    assert run.task("sshroot", "long task")["stdout"] == "slept"
    assert run.task("sshroot", "after the long task")["stdout"] == "after"
    dump = run.stderr
    assert f"=== ferrogen-mux {mux}: stack dump (requested with kill -SEGV) ===" in dump, describe(run)
    assert '"stack-dump"' in dump and '"stdin-watch"' in dump, dump  # every thread, by name
    assert "ferrogen_mux::" in dump, dump  # symbolized
    assert dump.count("stack dump (requested with kill -SEGV)") == 2, dump
    table = dump.split("=== actors ===", 1)[1].split("=== end of dump ===", 1)[0]
    (target,) = [row for row in table.splitlines() if row.startswith("target")]
    assert " sshroot " in target and " ready " in target and "1 call(s) in flight" in target, table
    (interp,) = [row for row in table.splitlines() if row.startswith("interpreter")]
    assert 'running task "long task" (run_module) for sshroot' in interp, table
    # The same dump goes to the mux's log.
    log = debug_log(mux).read_text()
    assert log.count("stack dump (requested with kill -SEGV)") == 2, log[-2000:]
    for path in debug_logs_since(since):  # /tmp outlives the tests, and pids are reused
        path.unlink()


def test_status_prints_the_live_actor_table(tmp_path):
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex, hosts=("sshroot", "sshuser"))
    live = LiveRun("ops_long_task.yml", tmp_path, inventory)
    socket_path = live.mux_socket()
    live.wait_started("sshroot")
    live.wait_started("sshuser")
    status = subprocess.run(
        [str(MUX_BINARY), "status", "--socket", socket_path], capture_output=True, text=True, timeout=10
    )
    run = live.finish()
    assert status.returncode == 0, status.stderr
    rows = status.stdout.splitlines()
    assert rows[0].split()[:4] == ["KIND", "NAME", "KEY/ACCOUNT", "STATE"], status.stdout
    targets = [row for row in rows if row.startswith("target")]
    assert len(targets) == 2, status.stdout
    for host, user in (("sshroot", "root"), ("sshuser", "ferrotest")):
        rows_of_host = [r for r in targets if f" {host} " in r]
        assert len(rows_of_host) == 1, f"no target row named {host}:\n{status.stdout}"
        (row,) = rows_of_host
        assert f"{user}@127.0.0.1" in row and " ready " in row and "1 call(s) in flight" in row, row
        (interp,) = [r for r in rows if r.startswith("interpreter") and f" {host}/0 " in r]
        assert 'running task "long task" (run_module)' in interp, interp
    # Asking did not disturb the run.
    assert run.returncode == 0, describe(run)


# --------------------------------------------------------------------------- 5. hostile input


def _hostile_clients(path: str) -> list[str]:
    """Sends each kind of bad input on its own connection; returns what each got back."""
    hello = json.dumps({"type": "hello", "version": 1, "pid": os.getpid()}).encode()

    def frame(header: bytes, body: bytes = b"", header_len=None, body_len=None) -> bytes:
        return struct.pack(">II", len(header) if header_len is None else header_len,
                           len(body) if body_len is None else body_len) + header + body  # fmt: skip

    attempts = {
        # 0x7f first: a header length far over the limit, never a plausible frame by chance.
        "random bytes": b"\x7f" + os.urandom(4095),
        "oversized header": frame(b"{}", header_len=0xFFFFFFF0),
        "oversized body": frame(hello, body_len=0xFFFFFFF0),
        "zero-length header": frame(b""),
        "header not JSON": frame(b"\xff\xfe not json"),
        "header without type": frame(b'{"version": 1}'),
        "truncated frame": frame(hello)[:-5],
        "call before hello": frame(b'{"type": "call", "id": 1, "op": "ping"}'),
        "bad call after hello": frame(hello) + frame(b'{"type": "call", "id": "x", "target": 5}'),
        "unknown type after hello": frame(hello) + frame(b'{"type": "frobnicate"}'),
    }
    answers = []
    for what, data in attempts.items():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            try:
                sock.sendall(data)
                if what == "truncated frame":
                    sock.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                answers.append(f"{what}: closed after {len(got)} bytes")
            except (BrokenPipeError, ConnectionResetError):
                answers.append(f"{what}: reset")
            except socket.timeout:
                answers.append(f"{what}: STILL OPEN")
    return answers


def test_garbage_and_oversized_frames_do_not_harm_the_run(tmp_path):
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex, hosts=("sshroot", "sshuser"))
    live = LiveRun("ops_long_task.yml", tmp_path, inventory)
    socket_path = live.mux_socket()
    mux = live.mux_pid()
    live.wait_started("sshroot")
    answers = _hostile_clients(socket_path)
    assert _alive(mux)
    run = live.finish()
    assert run.returncode == 0, describe(run)
    for host in ("sshroot", "sshuser"):
        long_task = run.task(host, "long task")
        assert long_task["stdout"] == "slept", f"{host}: {long_task}\n{describe(run)}"
        assert run.task(host, "after the long task")["stdout"] == "after"
    # Every bad client was closed (none left hanging), each with a logged error.
    assert not [a for a in answers if "STILL OPEN" in a], answers
    assert run.stderr.count("closing worker connection") >= 8, run.stderr


def test_partial_frames_of_all_workers_share_one_budget(tmp_path):
    """Issue 20, item 6: connections that each hold part of a large frame are refused, with an
    error naming the budget, once their total would pass it; the mux and the run carry on."""
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex, hosts=("sshroot",))
    # The long task outlasts the probes below (up to 2 s for each connection left open), so the
    # mux is still the run's when it is checked.
    live = LiveRun("ops_long_task.yml", tmp_path, inventory, extra_env={"FERROGEN_FRAME_BUDGET_MIB": "8"},
                   extra_args=["-e", "ops_sleep=12"])
    socket_path = live.mux_socket()
    mux = live.mux_pid()
    live.wait_started("sshroot")
    hello = json.dumps({"type": "hello", "version": 1, "pid": os.getpid()}).encode()
    blob = b'{"type": "blob", "hash": "00"}'
    clients = []
    try:
        for _ in range(4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(socket_path)
            # 3 MiB of a 100 MiB frame each: the third passes the 8 MiB budget.
            sock.sendall(struct.pack(">II", len(hello), 0) + hello + struct.pack(">II", len(blob), 100 << 20) + blob)
            try:
                sock.sendall(b"\0" * (3 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass
            clients.append(sock)
        refused = []
        for sock in clients:
            sock.settimeout(2)
            got = b""
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except socket.timeout:
                continue  # still open: within the budget
            except ConnectionResetError:
                pass
            refused.append(got)
        assert len(refused) >= 2, f"{len(refused)} of 4 connections refused"
        assert any(b"over the budget of 8388608 bytes" in got for got in refused), refused
        assert _alive(mux)
    finally:
        for sock in clients:
            sock.close()
    run = live.finish()
    assert run.returncode == 0, describe(run)
    assert run.task("sshroot", "after the long task")["stdout"] == "after"


def test_output_beyond_a_reply_fails_its_task_and_the_host_stays_up(run_playbook):
    """Issue 20, item 2: 300 MB of output used to take the whole ssh link down."""
    run = run_playbook("big_output.yml", ferrogen=True, limit="sshroot", timeout=180)
    assert run.returncode == 0, describe(run)
    for name in ("too much output", "too much output as another account"):
        task = run.task("sshroot", name)
        assert task["status"] == "failed" and not task.get("unreachable"), task
        assert "more than the 268435456 bytes" in task["msg"], task["msg"]
    assert run.task("sshroot", "after the big output")["stdout"] == "after"


# --------------------------------------------------------------------------- 3. + 8. lifecycle


def _run_children(live: LiveRun, marker: str) -> tuple[int, list[int]]:
    mux = live.mux_pid()
    ssh = wait_until(lambda: [pid for pid, args in processes_with(marker) if "ssh" in args], 10)
    assert ssh, f"no ssh process with the marker:\n{live.output()}"
    return mux, ssh


def test_kill_9_of_ansible_playbook_takes_mux_and_ssh_down(tmp_path):
    marker = uuid.uuid4().hex
    inventory = marked_inventory(tmp_path, marker, hosts=("sshroot", "sshuser"))
    live = LiveRun("ops_long_task.yml", tmp_path, inventory, extra_args=["-e", "ops_sleep=30"])
    live.wait_started("sshroot")
    mux, ssh = _run_children(live, marker)
    live.proc.kill()  # SIGKILL to ansible-playbook alone; its workers live on
    live.proc.wait()
    try:
        assert_all_gone([mux, *ssh], marker, 2.0, "after kill -9 of ansible-playbook")
    finally:
        live.kill()


def test_ctrl_c_takes_mux_and_ssh_down(tmp_path):
    marker = uuid.uuid4().hex
    inventory = marked_inventory(tmp_path, marker, hosts=("sshroot", "sshuser"))
    live = LiveRun("ops_long_task.yml", tmp_path, inventory, extra_args=["-e", "ops_sleep=30"])
    live.wait_started("sshroot")
    mux, ssh = _run_children(live, marker)
    os.killpg(live.proc.pid, signal.SIGINT)
    try:
        live.proc.wait(timeout=20)
    finally:
        live.kill()
    assert_all_gone([mux, *ssh], marker, 2.0, "after Ctrl-C")


def _task_tree_inventory(tmp_path: Path, marker: str, connection_only: bool) -> Path:
    """An ssh login, the same login's become account and a local host, each running the tree."""
    ssh = ssh_host_line("sshroot", extra=f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_OPS={marker}'")
    local = "ferrogen.mux.local" if connection_only else "local"
    lines = [
        ssh,
        ssh.replace("sshroot", "sshbecome", 1) + " ansible_become=true ansible_become_user=ferronopw",
        f"localhost ansible_connection={local} ansible_python_interpreter={helpers.VENV / 'bin' / 'python'}",
    ]
    return write_inventory(tmp_path / "inventory.ini", lines)


@pytest.mark.parametrize("mode", ["strategy", "connection-only"])
@pytest.mark.parametrize("how", ["kill-9", "ctrl-c"])
def test_nothing_a_task_started_outlives_the_run(tmp_path, how, mode):
    """Issue 20, item 4: after kill -9 of ansible-playbook (or Ctrl-C) a command a task
    started, and its own child, used to go on running on the target; so did the run's
    workers. Now all of it, on ssh, local and become interpreters, is gone within seconds."""
    from test_connection_only import connection_only_env

    marker = uuid.uuid4().hex
    tree_id = str(int(time.time() * 1000) % 10**9)
    env = connection_only_env(tmp_path, "linear") if mode == "connection-only" else {}
    live = LiveRun("ops_task_tree.yml", tmp_path, _task_tree_inventory(tmp_path, marker, mode != "strategy"),
                   extra_env=env, extra_args=["-e", f"ops_tree_id={tree_id}"])  # fmt: skip
    tree = f"37.{tree_id}"
    try:
        for host in ("sshroot", "sshbecome", "localhost"):
            live.wait_started(host)
        sleeps = wait_until(lambda: [p for p, args in processes_with(tree) if args.startswith("sleep")], 10)
        assert len(sleeps) >= 6, f"{processes_with(tree)}\n{live.output()}"
        run_processes = helpers.descendants(live.proc.pid)
        workers = [pid for pid in run_processes if "ansible-playbook" in " ".join(_cmdline(pid))]
        assert workers, f"no worker below ansible-playbook: {run_processes}"
        if how == "kill-9":
            live.proc.kill()  # ansible-playbook alone; its workers live on
        else:
            os.killpg(live.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        live.proc.wait(timeout=20)
        assert_all_gone(run_processes, tree, 5.0, f"after {how} of ansible-playbook ({mode})")
    finally:
        live.kill()
        for pid, _ in processes_with(tree):
            os.kill(pid, signal.SIGKILL)


def test_normal_exit_ends_mux_and_ssh_and_removes_temp_dirs(tmp_path):
    marker = uuid.uuid4().hex
    lines = [
        ssh_host_line(host, user=user, extra=f"ansible_ssh_extra_args='-o SetEnv=FERROGEN_OPS={marker}'")
        for host, user in (("sshroot", "root"), ("sshuser", "ferrotest"))
    ]
    lines.append(f"localhost ansible_connection=local ansible_python_interpreter={helpers.VENV / 'bin' / 'python'}")
    inventory = write_inventory(tmp_path / "inventory.ini", lines)
    live = LiveRun("ops_tmpdir.yml", tmp_path, inventory)
    mux = live.mux_pid()
    run = live.finish()
    assert run.returncode == 0, describe(run)
    assert_all_gone([mux], marker, 2.0, "after ansible-playbook exited")
    tmpdirs = [run.task(host, "interpreter temp dir")["stdout"].strip() for host in ("sshroot", "sshuser", "localhost")]
    tmpdirs.append(run.task("sshroot", "become interpreter temp dir")["stdout"].strip())
    assert tmpdirs[-1].startswith("/home/ferronopw/"), tmpdirs
    for path in tmpdirs:
        assert "/ferrogen-" in path and "\n" not in path, tmpdirs
    wait_until(lambda: not any(os.path.exists(p) for p in tmpdirs), 2.0)
    leftover = [p for p in tmpdirs if os.path.exists(p)]
    assert not leftover, f"interpreter temp dirs left behind: {leftover}"


def test_the_socket_dir_goes_with_its_mux_and_crashed_muxes_dirs_go_at_the_next_start(tmp_path):
    """Issue 20, item 7: no run leaves its /tmp/ferrogen-* socket dir behind, and a dir whose
    mux was killed (its lock free) is removed by the next mux; a live mux's is not."""
    socket_parent = Path(tempfile.gettempdir())
    crashed = Path(tempfile.mkdtemp(prefix="ferrogen-", dir=socket_parent))
    (crashed / "mux.sock.lock").touch()
    dead_listener = socket.socket(socket.AF_UNIX)
    dead_listener.bind(str(crashed / "mux.sock"))
    dead_listener.close()
    live_dir = Path(tempfile.mkdtemp(prefix="ferrogen-", dir=socket_parent))
    live_lock = os.open(live_dir / "mux.sock.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(live_lock, fcntl.LOCK_EX)
    try:
        inventory = marked_inventory(tmp_path, uuid.uuid4().hex)
        live = LiveRun("ops_ping.yml", tmp_path, inventory)
        socket_dir = Path(live.mux_socket()).parent
        run = live.finish()
        assert run.returncode == 0, describe(run)
        assert socket_dir.parent == socket_parent
        # The mux goes within 2 s of ansible-playbook, and its directory with it (seen still
        # there right at the end of the run once in CI under load).
        assert wait_until(lambda: not socket_dir.exists(), 2.0), os.listdir(socket_dir)
        assert not crashed.exists(), os.listdir(crashed)
        assert live_dir.exists()
    finally:
        os.close(live_lock)
        shutil.rmtree(live_dir, ignore_errors=True)
        shutil.rmtree(crashed, ignore_errors=True)


# --------------------------------------------------------------------------- 4. + 7. faults


def test_remote_interpreter_killed_mid_task(run_playbook, tmp_path):
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex)
    started = time.monotonic()
    run = run_playbook("ops_kill_interpreter.yml", ferrogen=True, inventory=inventory, timeout=120)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, describe(run)
    killed = run.task("sshroot", "kill the interpreter")
    assert killed["unreachable"] or killed["failed"], killed
    message = killed["msg"]
    assert "sshroot" in message, message
    assert "interpreter" in message and "died" in message, message
    assert run.task("sshroot", "a new interpreter answered")["status"] == "ok"
    assert elapsed < 15, f"the dead interpreter was noticed only after {elapsed:.1f}s"


def test_a_stopped_interpreter_is_declared_dead_and_the_next_task_reconnects(run_playbook, tmp_path):
    """Issue 20, item 3: kill -STOP of the target's interpreter used to hang the run for good."""
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex)
    env = {"FERROGEN_KEEPALIVE_INTERVAL": "1", "FERROGEN_KEEPALIVE_COUNT": "3"}
    run = run_playbook("ops_stop_interpreter.yml", ferrogen=True, inventory=inventory, extra_env=env, timeout=120)
    assert run.returncode == 0, describe(run)
    assert run.task("sshroot", "a task longer than the keepalive deadline")["stdout"] == "done"
    stopped = run.task("sshroot", "stop the interpreter")
    assert stopped.get("unreachable"), stopped
    message = stopped["msg"]
    assert "sshroot" in message and "answered nothing for" in message, message
    # Without the heartbeat the task ends "ok" once the interpreter is continued (15 s on).
    assert run.task("sshroot", "after the stop")["stdout"] == "after"


def test_a_stopped_become_interpreter_is_declared_dead_alone_and_the_next_task_respawns_it(run_playbook, tmp_path):
    """Issue 20: a become interpreter has a heartbeat of its own. Stopped while the login agent
    answers, it is declared dead after the keepalive deadline; only its task fails."""
    inventory = marked_inventory(tmp_path, uuid.uuid4().hex)
    env = {"FERROGEN_KEEPALIVE_INTERVAL": "1", "FERROGEN_KEEPALIVE_COUNT": "3"}
    started = time.monotonic()
    run = run_playbook("ops_stop_become_interpreter.yml", ferrogen=True, inventory=inventory, extra_env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, describe(run)
    first = run.task("sshroot", "a become task longer than the keepalive deadline")
    assert first["status"] == "ok", first
    stopped = run.task("sshroot", "stop the become interpreter")
    assert stopped.get("unreachable"), stopped
    message = stopped["msg"]
    assert "ferronopw on sshroot" in message and "answered nothing for" in message, message
    assert run.task("sshroot", "the login interpreter answers")["stdout"] == "login"
    user, pid = run.task("sshroot", "a new become interpreter")["stdout"].split()
    assert user == "ferronopw"
    assert pid != first["stdout"].strip(), "the account's next task reused the dead interpreter"
    # Without its own heartbeat the stopped task waits until the interpreter is continued
    # (15 s on) and then for its 30 s sleep.
    assert elapsed < 40, f"the run took {elapsed:.1f}s"


def test_unreachable_and_hung_hosts_do_not_delay_the_others(run_playbook, tmp_path):
    """A refused host fails at once, a hung one (its ssh never answers) at its timeout; under
    mitogen_free the good host finishes meanwhile, long before the hung host gives up."""
    timeout = 5
    lines = [
        ssh_host_line("good"),
        ssh_host_line("refused", port=1),
        ssh_host_line("hung", extra=f"ansible_ssh_executable={TOOLS / 'hung_ssh'}"),
    ]
    inventory = write_inventory(tmp_path / "inventory.ini", lines)
    started = time.monotonic()
    run = run_playbook(
        "ops_hosts.yml",
        ferrogen=True,
        inventory=inventory,
        extra_env={"ANSIBLE_TIMEOUT": str(timeout), "ANSIBLE_STRATEGY": "mitogen_free"},
        timeout=120,
    )
    ended = time.time()
    elapsed = time.monotonic() - started
    assert run.task("good", "who am i")["stdout"] == "root", describe(run)
    good_done = float(run.task("good", "finished at")["stdout"])

    refused = run.task("refused", "who am i")
    assert refused["unreachable"], refused
    assert "cannot connect to refused" in refused["msg"] and "Connection refused" in refused["msg"], refused["msg"]
    hung = run.task("hung", "who am i")
    assert hung["unreachable"], hung
    assert "cannot connect to hung" in hung["msg"] and f"within {timeout}s" in hung["msg"], hung["msg"]
    assert not processes_with(str(TOOLS / "hung_ssh")), "the hung transport was left running"

    # The good host was done well before the hung host's timeout ran out (which ended the run).
    assert ended - good_done > timeout - 2.5, f"good host done only {ended - good_done:.1f}s before the end"
    # The hung host costs its timeout once, not per host or per task.
    assert elapsed < timeout + 8, elapsed


# --------------------------------------------------------------------------- 6. secrets and logs


SUDO_PASSWORD, SU_PASSWORD = "testpass", "supass"  # ferrotest's and ferrosu's, from ci/setup.sh


def become_with_router_debug(tmp_path: Path):
    """One become run with passwords at -vvvv, MITOGEN_ROUTER_DEBUG=1 and periodic stack dumps:
    (run, mux pid, debug log files written meanwhile)."""
    passwords = f"ops_sudo_password={SUDO_PASSWORD} ops_su_password={SU_PASSWORD}"
    inventory = write_inventory(
        tmp_path / "inventory.ini", [ssh_host_line("sshuser", user="ferrotest", extra=passwords)]
    )
    since = time.time() - 1
    env = {"MITOGEN_ROUTER_DEBUG": "1", "MITOGEN_DUMP_THREAD_STACKS": "0.5"}
    live = LiveRun("ops_become_password.yml", tmp_path, inventory, extra_env=env, extra_args=["-vvvv"])
    mux = live.mux_pid()
    run = live.finish()
    assert run.returncode == 0, describe(run)
    assert run.task("sshuser", "sudo with a password")["stdout"] == "root"
    assert run.task("sshuser", "su with a password")["stdout"] == "ferrosu"
    return run, mux, debug_logs_since(since)


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """become_with_router_debug's outcome; its logs are removed afterwards, as /tmp outlives
    the tests and a stale log is in the way of a later process given the same pid."""
    run, mux, logs = become_with_router_debug(tmp_path_factory.mktemp("debug-run"))
    yield run, mux, logs
    for path in logs:
        path.unlink(missing_ok=True)


def test_no_password_in_any_output_or_log_at_vvvv_with_router_debug(debug_run):
    run, mux, logs = debug_run
    mux_log = debug_log(mux)
    assert mux_log in logs, f"MITOGEN_ROUTER_DEBUG=1 wrote no {mux_log}: {logs}"
    # -vvv and up shows connection set-up: the command, what ssh wrote, the agent's answer.
    for seen in ("connecting", "transport stderr: Warning: Permanently added", "agent ready"):
        assert seen in run.stderr, f"{seen!r} not shown at -vvvv:\n{run.stderr[-3000:]}"
    assert "spawning become interpreter" in mux_log.read_text()
    # MITOGEN_DUMP_THREAD_STACKS dumps into the log shown at -vvv (and the debug file).
    assert "stack dump (MITOGEN_DUMP_THREAD_STACKS)" in run.stderr, run.stderr[-3000:]
    assert "stack dump (MITOGEN_DUMP_THREAD_STACKS)" in mux_log.read_text()
    texts = [("stdout", run.stdout), ("stderr", run.stderr)] + [(str(p), p.read_text(errors="replace")) for p in logs]
    for name, text in texts:
        for secret in (SUDO_PASSWORD, SU_PASSWORD):
            assert secret not in text, f"{secret!r} appears in {name}"


def _interpreter_pids(mux_log: str) -> list[int]:
    """The login and become interpreters the mux started, from its debug log."""
    login = re.findall(r"agent ready .*?\"pid\": Number\((\d+)\)", mux_log)
    become = re.findall(r"become interpreter ready .*?pid=Some\((\d+)\)", mux_log)
    return [int(pid) for pid in login + become]


def test_router_debug_logs_every_target_interpreter_and_forwards_its_records(debug_run):
    """Each target interpreter (login, sudo, su) writes /tmp/mitogen.<pid>.log (the targets are
    this machine), and at -vvv the agents' own records reach the controller."""
    run, mux, logs = debug_run
    pids = _interpreter_pids(debug_log(mux).read_text())
    assert len(pids) == 3, pids
    missing = [pid for pid in pids if debug_log(pid) not in logs]
    assert not missing, f"no /tmp/mitogen.<pid>.log for interpreters {missing}"
    assert " agent: " in run.stderr, "no target-side log record shown at -vvvv"


def _squat_upcoming_debug_logs(owner: str, count: int) -> list[Path]:
    """/tmp/mitogen.<pid>.log for the next `count` pids no process holds, as another account's
    files left from earlier processes: what a long-lived /tmp holds once pids have wrapped."""
    uid = pwd.getpwnam(owner).pw_uid
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    squatted = []
    with subprocess.Popen(["true"]) as newest:  # where the kernel hands out pids now
        pid = newest.pid
    while len(squatted) < count:
        pid = pid + 1 if pid + 1 < pid_max else 300  # where the kernel starts again after a wrap
        path = Path(f"/tmp/mitogen.{pid}.log")
        if Path(f"/proc/{pid}").exists():
            continue
        path.unlink(missing_ok=True)  # a dead process's, from an earlier test
        path.write_text("theirs\n")
        os.chown(path, uid, uid)
        squatted.append(path)
    return squatted


def test_router_debug_logs_of_another_account_are_left_alone_and_the_run_goes_on(tmp_path):
    """With every upcoming pid's /tmp/mitogen.<pid>.log another account's file, the mux and each
    interpreter (login, sudo, su) log to a /tmp/mitogen.<pid>.<n>.log of their own, say so, and
    the run succeeds: a debugging aid never breaks the run it is there to debug."""
    squatted = _squat_upcoming_debug_logs("ferronopw", 3000)
    logs = []
    try:
        run, mux, logs = become_with_router_debug(tmp_path)
        uid = pwd.getpwnam("ferronopw").pw_uid
        interpreters = _interpreter_pids(debug_log(mux).read_text())
        assert len(interpreters) == 3, interpreters
        for pid in [mux, *interpreters]:
            taken = Path(f"/tmp/mitogen.{pid}.log")
            assert taken in squatted, f"pid {pid} was not squatted; squat more pids"
            detour = debug_log(pid)
            assert detour in logs and detour != taken, (pid, logs)
            why = f"not writing the debug log to {taken}: it belongs to uid {uid}; it is {detour}"
            assert why in run.stderr, f"{why!r} not shown:\n{run.stderr[-3000:]}"
            assert taken.read_text() == "theirs\n"
    finally:
        for path in squatted + logs:
            path.unlink(missing_ok=True)
