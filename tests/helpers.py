"""Helpers that drive real ansible-playbook runs for ferrogen's integration tests."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
# The inventory hosts every foundation test runs against (ci/setup.sh writes them).
TARGETS = ["sshroot", "sshuser", "localhost"]
TESTS = REPO / "tests"
PLAYBOOKS = TESTS / "playbooks"
STATE = REPO / ".state"
VENV = REPO / ".venv"
INVENTORY = STATE / "inventory.ini"
SSH_KEY = STATE / "id_ed25519"
STRATEGY_DIR = REPO / "plugin" / "ansible_ferrogen" / "plugins" / "strategy"
CALLBACK_DIR = TESTS / "callback_plugins"

# Set by conftest when pytest runs with --ferrogen-baseline: every ferrogen=True run then goes
# through vanilla Ansible instead, to check the playbooks and the harness themselves.
BASELINE = {"on": False}


# ci/ansible-versions.txt: the primary ansible-core (.venv) first, then one venv per other
# version under .state/ansible/<version> (ci/setup.sh makes them).
ANSIBLE_VERSIONS_FILE = REPO / "ci" / "ansible-versions.txt"
ANSIBLE_VENVS = STATE / "ansible"


def ansible_versions() -> list[str]:
    """The ansible-core versions CI tests, the primary one first."""
    lines = ANSIBLE_VERSIONS_FILE.read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ansible_playbook_bin(version: str | None = None) -> Path:
    """ansible-playbook of the primary ansible-core, or of another version's venv."""
    if version is None or version == ansible_versions()[0]:
        return VENV / "bin" / "ansible-playbook"
    return ANSIBLE_VENVS / version / "bin" / "ansible-playbook"


class PlaybookRun(NamedTuple):
    returncode: int
    results: list[dict]
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def for_host(self, host: str) -> list[dict]:
        return [r for r in self.results if r["host"] == host]

    def task(self, host: str, name: str) -> dict:
        found = [r for r in self.results if r["host"] == host and r["task"] == name]
        assert found, f"no result for task {name!r} on {host}; tasks seen: {[r['task'] for r in self.for_host(host)]}"
        assert len(found) == 1, f"task {name!r} ran {len(found)} times on {host}"
        return found[0]


def base_env(tmp: Path, *, ferrogen: bool) -> dict[str, str]:
    env = dict(os.environ)
    # Nothing from the caller's Ansible setup may leak in.
    for key in list(env):
        if key.startswith(("ANSIBLE_", "MITOGEN_")) or key == "FERROGEN_RESULTS":
            del env[key]
    home = tmp / "ansible-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "result_dump",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_LIBRARY": str(PLAYBOOKS / "library"),
            "ANSIBLE_TIMEOUT": "10",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if ferrogen:
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(STRATEGY_DIR)
        env["ANSIBLE_STRATEGY"] = "mitogen_linear"
    else:
        # Vanilla at its best: pipelining plus a persistent ssh master per host.
        cp_dir = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))  # short: unix socket paths are limited
        env["ANSIBLE_PIPELINING"] = "True"
        env["ANSIBLE_SSH_ARGS"] = "-C -o ControlMaster=auto -o ControlPersist=60s"
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(cp_dir)
    return env


def run_playbook(
    playbook: str | Path,
    *,
    ferrogen: bool,
    tmp_path: Path | None = None,
    inventory: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    limit: str | None = None,
    timeout: float = 300,
    ansible_version: str | None = None,
    command_prefix: tuple[str, ...] | list[str] = (),
) -> PlaybookRun:
    """Run one playbook and return (returncode, results, stdout, stderr).

    results: one dict per task result per host, as written by tests/callback_plugins/result_dump.py
    (keys: status, host, task, action, changed, failed, unreachable, skipped, rc, stdout, stderr,
    msg, result). ansible_version: run that version's ansible-playbook (ansible_playbook_bin).
    command_prefix: a command that runs ansible-playbook (the rest of the line) for us.
    """
    if BASELINE["on"]:
        ferrogen = False
    tmp = Path(tmp_path) if tmp_path is not None else Path(tempfile.mkdtemp(prefix="ferrogen-run-"))
    tmp.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    results_file = run_dir / "results.jsonl"
    env = base_env(run_dir, ferrogen=ferrogen)
    env["FERROGEN_RESULTS"] = str(results_file)
    if extra_env:
        env.update(extra_env)
    playbook = Path(playbook)
    if not playbook.is_absolute():
        playbook = PLAYBOOKS / playbook
    run_id = uuid.uuid4().hex[:12]  # playbooks use it to keep their scratch paths apart
    cmd = [
        *command_prefix,
        str(ansible_playbook_bin(ansible_version)),
        "-i",
        str(inventory or INVENTORY),
        str(playbook),
        "-e",
        f"ferrogen_run_id={run_id}",
    ]
    if limit:
        cmd += ["--limit", limit]
    cmd += list(extra_args)
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            env=env,
            cwd=str(run_dir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        _cleanup(env)
        raise AssertionError(
            f"ansible-playbook hung: {' '.join(cmd)} did not finish in {timeout}s\n"
            f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        ) from None
    _cleanup(env)
    results = []
    if results_file.exists():
        for line in results_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                results.append(json.loads(line))
    return PlaybookRun(proc.returncode, results, proc.stdout, proc.stderr)


def _cleanup(env: dict[str, str]) -> None:
    """Remove the run's ControlPath dir (its ssh master then exits at its ControlPersist timeout)."""
    cp_dir = env.get("ANSIBLE_SSH_CONTROL_PATH_DIR")
    if cp_dir and os.path.basename(cp_dir).startswith("cp-"):
        shutil.rmtree(cp_dir, ignore_errors=True)


def describe(run: PlaybookRun) -> str:
    """Failure message with the whole run output."""
    return f"rc={run.returncode}\n--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}"


def write_inventory(path: Path, lines: list[str]) -> Path:
    """An inventory with the given host lines plus the usual ssh options."""
    text = "\n".join(
        [
            "[targets]",
            *lines,
            "",
            "[all:vars]",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "",
        ]
    )
    path.write_text(text)
    return path


def is_agent_args(args: str) -> bool:
    """Whether a process's arguments (/proc/PID/cmdline, NULs as spaces) are a ferrogen
    interpreter's: its name once it runs (`python3 mitogen:user@host:pid`), or the bootstrap
    stub before that."""
    return " mitogen:" in args or "SOURCE=sys.stdin.buffer.read" in args


def sshd_config_of_own(settings: list[str], drop: tuple[str, ...] = ("Port ", "PidFile ")) -> str:
    """The test sshd's config (ci/setup.sh) for another sshd: the lines starting with `drop`
    left out, `settings` put in before the config's Match blocks, where global settings must
    stay."""
    lines = [line for line in (STATE / "sshd" / "sshd_config").read_text().splitlines() if not line.startswith(drop)]
    at = next((i for i, line in enumerate(lines) if line.startswith("Match ")), len(lines))
    return "\n".join([*lines[:at], *settings, *lines[at:]]) + "\n"


# ci/setup.sh starts the test sshd on this port (FERROGEN_SSH_PORT, default 2222).
SSH_PORT = int(os.environ.get("FERROGEN_SSH_PORT", "2222"))


def ssh_host_line(
    name: str, *, user: str = "root", port: int = SSH_PORT, python: str = "/usr/bin/python3", extra: str = ""
) -> str:
    return (
        f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user={user} "
        f"ansible_ssh_private_key_file={SSH_KEY} ansible_python_interpreter={python} {extra}"
    ).strip()


def agent_min_python() -> tuple[int, int]:
    """The oldest Python the agent runs on, as the mux's bootstrap guard states it."""
    source = (REPO / "mux" / "src" / "bootstrap.rs").read_text()
    found = re.search(r"const AGENT_MIN_PYTHON: \(u32, u32\) = \((\d+), (\d+)\);", source)
    assert found, "AGENT_MIN_PYTHON not found in mux/src/bootstrap.rs"
    return int(found.group(1)), int(found.group(2))


# Debian's own Python: what the test targets run by default.
DEBIAN_PYTHON = "/usr/bin/python3"


def pyenv_root() -> str:
    """pyenv's root, found at run time (no path is fixed)."""
    try:
        return subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def version_of(python: str) -> tuple[int, int]:
    out = subprocess.run([python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True, timeout=30).stdout.split()
    return int(out[0]), int(out[1])


def machine_pythons() -> dict[str, tuple[int, int]]:
    """Every CPython the machine has: pyenv's versions and Debian's python3, by path."""
    found = {}
    for path in sorted(glob.glob(os.path.join(pyenv_root(), "versions", "*", "bin", "python"))):
        if os.access(path, os.X_OK):
            found[path] = version_of(path)
    if os.access(DEBIAN_PYTHON, os.X_OK):
        found[DEBIAN_PYTHON] = version_of(DEBIAN_PYTHON)
    return found


def secret_in_processes(secret: bytes, pids) -> tuple[list[str], set[tuple[int, str]]]:
    """Where `secret` shows in the command line or environment of `pids` ("/proc/PID/PART:
    the start of it"), and which of those files could be read."""
    seen, read = [], set()
    for pid in pids:
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            read.add((pid, part))
            if secret in data:
                seen.append(f"/proc/{pid}/{part}: {data[:200]!r}")
    return seen, read


class SecretWatch:
    """While the with-block runs, a thread looks every `interval` seconds for `secret` in the
    command line and environment of the processes `pids()` names: `seen` says where it showed
    (secret_in_processes), `looked_at` which pids could be read."""

    def __init__(self, secret: bytes, pids, interval: float = 0.2):
        self.secret = secret
        self.pids = pids
        self.interval = interval
        self.seen: list[str] = []
        self.looked_at: set[int] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch)

    def __enter__(self) -> SecretWatch:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.done.set()
        self.thread.join()

    def watch(self) -> None:
        while not self.done.is_set():
            shown, read = secret_in_processes(self.secret, self.pids())
            self.seen.extend(shown)
            self.looked_at.update(pid for pid, _ in read)
            self.done.wait(self.interval)


def live_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def parent_pid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every live process below pid."""
    children: dict[int | None, list[int]] = {}
    for child in live_pids():
        children.setdefault(parent_pid(child), []).append(child)
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found
