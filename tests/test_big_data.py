"""Big data through become (issue 20, item 2): a 1 GiB copy and fetch as root and as an
unprivileged account, content checked, and the peak memory of every process on the way.

Each test runs the same playbook twice, with a file of SMALL bytes and one of BIG bytes, and
samples the peak RSS (VmHWM) of the run's target agents (login and become), its mux and its
workers. A streamed transfer holds at most TRANSFER_WINDOW unacknowledged bytes plus one chunk
in each process, whatever the file size; so each process's peak in the big run must stay within
its peak in the small run (the same code paths, the window full: SMALL is twice the window)
plus GROWTH_ALLOWED. A frame or buffer holding the whole file would add at least BIG.
Task outputs (issue 20, item 2's 300 MB output) are checked the same way for the agents and the
mux; the worker holds an output whole, since Ansible takes it as bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from helpers import describe, ssh_host_line, write_inventory

pytestmark = pytest.mark.mux_only

MIB = 1 << 20
BIG = 1 << 30
# The streamed window (frames.TRANSFER_WINDOW) and chunk (frames.TRANSFER_CHUNK).
WINDOW = 4 * MIB
CHUNK = MIB
SMALL = 2 * WINDOW
# What a process's peak may grow by from the small run to the big one: the window and a chunk
# (one more frame being assembled on each side of a relay), and the worker's two hashing
# buffers (transfer.HASH_READ, 16 MiB each), which the small file does not fill; the rest is
# allocator slack (Python's arenas, the mux's buffers) that does not depend on the file size.
GROWTH_ALLOWED = WINDOW + CHUNK + 2 * 16 * MIB + 24 * MIB
# Free disk the big runs need: two accounts' copies or fetches of BIG, and one upload in flight.
DISK_NEEDED = 4 << 30
SAMPLE_EVERY = 0.05

ACCOUNTS = ("root", "ferronopw")


def write_test_file(path: Path, size: int) -> str:
    """A sparse file of `size` bytes with random MiB at its start, middle and end (fast to
    make; content that a misplaced chunk would change); its SHA-1."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, size // 2 + 12345, size - MIB):
            handle.seek(offset)
            handle.write(os.urandom(MIB))
    return sha1_of(path)


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(16 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name, whose parentheses may hold spaces: field 3 on."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split() if stat else []


def _hwm_kib(pid: int) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class PeakSampler:
    """Samples, in a thread, VmHWM of the processes of the ansible-playbook run whose
    environment holds `marker`: its mux, its workers (the run's other children), and the
    agents on the target (named after the mux's pid; a task process forked by an agent has an
    agent as its parent and is left out).

    A process is known by its pid and start time, since pid_max may be 32768 and a busy
    machine wraps it; and it is classified again whenever its arguments change, since a
    process seen between fork and exec (an agent under sshd or sudo, the mux under its
    parent) still shows its parent's arguments, and an agent renames itself once it runs; but
    not once it has exited, when it shows none."""

    def __init__(self, marker: str):
        self.marker = f"FERROGEN_BIG_DATA_RUN={marker}".encode()
        # (pid, start time) -> (the arguments it was classified by, its kind or None).
        self.kind: dict[tuple[int, str], tuple[str, str | None]] = {}
        self.peak: dict[tuple[int, str], int] = {}
        self.playbook: int | None = None
        self.mux: int | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def _classify(self, pid: int, ppid: int, args: str) -> str | None:
        if "SOURCE=sys.stdin.buffer.read" in args:
            return None  # a bootstrap stub, named once the agent runs
        if self.mux is not None and "mitogen:" in args and f":{self.mux} " in args + " ":
            parent_args = _read(f"/proc/{ppid}/cmdline").replace("\0", " ")
            return None if f":{self.mux} " in parent_args + " " else "agent"
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                marked = self.marker in handle.read()
        except OSError:
            return None
        if not marked:
            return None
        if args.split(" ")[0].endswith("ferrogen-mux") and " serve" in args:
            self.mux = pid
            return "mux"
        if self.playbook is None and "ansible-playbook" in args:
            self.playbook = pid
            return "playbook"
        if self.playbook is not None and ppid == self.playbook:
            return "worker"
        return None

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            fields = _stat_fields(pid)
            if len(fields) < 20:
                continue  # gone
            key = (pid, fields[19])  # proc(5): starttime is field 22
            args = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
            seen = self.kind.get(key)
            # A pid classified before the mux was known may be an agent of it; one that shows
            # no arguments has exited and keeps what it was.
            if seen is None or (args and (seen[0] != args or (seen[1] is None and self.mux is None))):
                kind = self._classify(pid, int(fields[1]), args)
                if seen is not None and seen[1] != kind:
                    self.peak.pop(key, None)  # the peak before exec was another program's
                self.kind[key] = (args, kind)
            if self.kind[key][1] is not None:
                self.peak[key] = max(self.peak.get(key, 0), _hwm_kib(pid))

    def _run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            self._sample()

    def peaks(self) -> dict[str, int]:
        """The highest VmHWM seen per kind of process, in bytes."""
        found: dict[str, int] = {}
        for key, (_, kind) in self.kind.items():
            if kind is not None and key in self.peak:
                found[kind] = max(found.get(kind, 0), self.peak[key] * 1024)
        return found


@pytest.fixture
def big_dir():
    """A directory on the target with one 0700 subdirectory per account, each its own."""
    if shutil.disk_usage(tempfile.gettempdir()).free < DISK_NEEDED:
        pytest.skip(f"needs {DISK_NEEDED >> 30} GiB free in {tempfile.gettempdir()}")
    root = Path(tempfile.mkdtemp(prefix="ferrogen-big-", dir="/tmp"))
    root.chmod(0o755)
    for account in ACCOUNTS:
        (root / account).mkdir(mode=0o700)
        os.chown(root / account, pwd.getpwnam(account).pw_uid, -1)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_measured(run_playbook, tmp_path: Path, login: str, extra: list[str],
                 playbook: str = "big_data.yml") -> tuple[dict[str, int], object]:
    marker = uuid.uuid4().hex
    users = {"sshroot": "root", "sshuser": "ferrotest"}
    become_password = " ansible_become_password=testpass" if login == "sshuser" else ""
    inventory = write_inventory(
        tmp_path / f"inventory-{marker[:6]}.ini", [ssh_host_line(login, user=users[login], extra=become_password)]
    )
    with PeakSampler(marker) as sampler:
        run = run_playbook(
            playbook, ferrogen=True, inventory=inventory, timeout=900,
            extra_env={"FERROGEN_BIG_DATA_RUN": marker},
            extra_args=["-e", json.dumps({"big_accounts": list(ACCOUNTS)}), *extra],
        )  # fmt: skip
    peaks = sampler.peaks()
    assert run.returncode == 0, describe(run)
    assert {"mux", "worker", "agent"} <= set(peaks), f"processes not found: {peaks}"
    return peaks, run


def assert_bounded(small: dict[str, int], big: dict[str, int], kinds=("agent", "mux", "worker"),
                   allowed: int = GROWTH_ALLOWED, what: str = f"{SMALL >> 20} MiB -> {BIG >> 20} MiB file") -> None:
    report = {kind: f"{small[kind] / MIB:.0f} -> {big[kind] / MIB:.0f} MiB" for kind in ("agent", "mux", "worker")}
    print(f"peak RSS, {what}: {report}")
    for kind in kinds:
        assert big[kind] <= small[kind] + allowed, (
            f"the {kind}'s peak RSS grew with the data: {report}, allowed {allowed / MIB:.0f} MiB"
        )


def test_copy_of_1gib_as_become_accounts_stays_in_window(run_playbook, tmp_path, big_dir):
    peaks = {}
    for size in (SMALL, BIG):
        source = tmp_path / f"source-{size}.bin"
        sha1 = write_test_file(source, size)
        peaks[size], run = run_measured(
            run_playbook, tmp_path, "sshroot",
            ["-e", "big_op=copy", "-e", f"big_source={source}", "-e", f"big_dir={big_dir}"],
        )  # fmt: skip
        for account in ACCOUNTS:
            copied = big_dir / account / "big.bin"
            assert copied.stat().st_uid == pwd.getpwnam(account).pw_uid, f"{copied} not written as {account}"
            assert copied.stat().st_size == size and sha1_of(copied) == sha1, f"{copied} differs from {source}"
            copied.unlink()
        source.unlink()
    assert_bounded(peaks[SMALL], peaks[BIG])


def test_fetch_of_1gib_as_become_accounts_stays_in_window(run_playbook, tmp_path, big_dir):
    """Each file is its account's, mode 0600, so only that account's interpreter can read it
    (the login account is ferrotest)."""
    peaks = {}
    for size in (SMALL, BIG):
        fetched = tmp_path / f"fetched-{size}"
        fetched.mkdir()
        sha1 = {}
        for account in ACCOUNTS:
            source = big_dir / account / "big.bin"
            sha1[account] = write_test_file(source, size)
            source.chmod(0o600)
            os.chown(source, pwd.getpwnam(account).pw_uid, -1)
        peaks[size], run = run_measured(
            run_playbook, tmp_path, "sshuser",
            ["-e", "big_op=fetch", "-e", f"big_dir={big_dir}", "-e", f"big_fetched={fetched}"],
        )  # fmt: skip
        for account in ACCOUNTS:
            local = fetched / f"{account}.bin"
            assert local.stat().st_size == size and sha1_of(local) == sha1[account], f"{local} differs"
            local.unlink()
            (big_dir / account / "big.bin").unlink()
        results = [r for r in run.results if r["task"] == "fetch as each account"]
        items = [item for r in results for item in r["result"].get("results", [])]
        assert len(items) == len(ACCOUNTS) and all(item.get("changed") for item in items), results
    assert_bounded(peaks[SMALL], peaks[BIG])


# Outputs of commands (exec_command) and of a module: over the agent's STREAMED_OUTPUT_MIN
# (1 MiB) in the small run, near MAX_BODY (256 MiB) in the big one; the module's result JSON
# holds its stdout twice (stdout and stdout_lines).
SMALL_OUTPUT = 2 * MIB
BIG_RAW_OUTPUT = 120_000_000
BIG_MODULE_OUTPUT = 48_000_000
# An output streams like a fetch: the agent and the mux hold one window and a chunk of it, plus
# allocator slack. The worker holds the whole output, as Ansible needs it.
OUTPUT_GROWTH_ALLOWED = WINDOW + CHUNK + 24 * MIB


def test_large_outputs_stream_as_login_and_become(run_playbook, tmp_path):
    """A command's output of 120 MB and a module's of 48 MB (96 MB of result JSON), as the
    login account and as root: whole in Ansible, and no agent or mux holds them."""
    peaks = {}
    for raw, module in ((SMALL_OUTPUT, SMALL_OUTPUT), (BIG_RAW_OUTPUT, BIG_MODULE_OUTPUT)):
        peaks[raw], run = run_measured(
            run_playbook, tmp_path, "sshuser",
            ["-e", f"raw_output={raw}", "-e", f"module_output={module}"], playbook="large_outputs.yml",
        )  # fmt: skip
        assert run.task("sshuser", "every output whole")["status"] == "ok", describe(run)
    assert_bounded(peaks[SMALL_OUTPUT], peaks[BIG_RAW_OUTPUT], kinds=("agent", "mux"),
                   allowed=OUTPUT_GROWTH_ALLOWED, what="outputs of 2 MiB -> 120 MB")
