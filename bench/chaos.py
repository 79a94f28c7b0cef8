"""Chaos run (issue 20): random playbooks through ferrogen while random processes die.

For ``--minutes`` it runs rounds. Each round writes a random playbook (copy of a small or a
streamed file, fetch back, template, a command loop, become, on the test sshd's root and
ferrotest logins and a local host), starts it, and meanwhile kills a random process of the run
(the mux, an ssh, a local agent, a task process, a worker) or stops an ssh for a few seconds and
continues it. After every round it checks the invariants:

- the run ended within its timeout;
- every destination file holds its old content or its new one, never anything else;
- no ``.ferrogen-*.tmp`` temp file whose writer is gone is left once a later round wrote there;
- no process of the run outlives it (this script is a child subreaper, so the run's orphans are
  its children; target-side task shells carry the round's tag on their command line).

Run with the test sshd up (``FERROGEN_SSH_PORT=... bash ci/setup.sh``)::

    FERROGEN_SSH_PORT=2222 .venv/bin/python bench/chaos.py --minutes 20

It is not part of the test suite. It prints one line per round and the totals at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
import bench  # noqa: E402 - bench.py is the sibling script, not a package
import helpers  # noqa: E402 - the tests' helpers: the process-tree walk

REPO = bench.REPO
STATE = REPO / ".state"
SSH_PORT = int(os.environ.get("FERROGEN_SSH_PORT", "2222"))
PLAYBOOK_BIN = REPO / ".venv" / "bin" / "ansible-playbook"
STRATEGY_DIR = REPO / "plugin" / "ansible_ferrogen" / "plugins" / "strategy"
ROUND_TIMEOUT = 120
KINDS = ("mux", "ssh", "agent", "task", "worker", "stop-ssh", "none")
STUB_MARK = "SOURCE=sys.stdin.buffer.read"
# What a running interpreter shows as its arguments instead (docs/user-guide.md, "Process names").
AGENT_NAME_MARK = " mitogen:"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def inventory(path: Path) -> Path:
    key = STATE / "id_ed25519"
    common = f"ansible_host=127.0.0.1 ansible_port={SSH_PORT} ansible_ssh_private_key_file={key}"
    path.write_text(
        "[all]\n"
        f"chaos-root {common} ansible_user=root ansible_python_interpreter=/usr/bin/python3\n"
        f"chaos-user {common} ansible_user=ferrotest ansible_python_interpreter=/usr/bin/python3\n"
        f"chaos-local ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    return path


def playbook(rng: random.Random, tag: str, dest: Path, source: Path, template: Path, fetched: Path) -> str:
    copy = {"name": "copy", "ansible.builtin.copy": {"src": str(source), "dest": f"{dest}/{{{{ inventory_hostname }}}}.bin"}}
    fetch = {"name": "fetch", "ansible.builtin.fetch": {
        "src": f"{dest}/{{{{ inventory_hostname }}}}.bin", "dest": f"{fetched}/", "flat": False, "fail_on_missing": False}}
    tasks = [
        {"name": "template", "ansible.builtin.template": {
            "src": str(template), "dest": f"{dest}/{{{{ inventory_hostname }}}}.txt"}},
        {"name": "loop", "ansible.builtin.shell": f"sleep 0.$((RANDOM % 9)); : {tag}", "loop": list(range(rng.randint(1, 6)))},
        {"name": "become", "ansible.builtin.command": "id -un", "become": True, "become_user": "ferronopw",
         "when": "inventory_hostname == 'chaos-root'"},
        {"name": "slow", "ansible.builtin.shell": f"sleep {rng.randint(1, 4)}; : {tag}"},
    ]
    rng.shuffle(tasks)
    at = rng.randint(0, len(tasks))
    tasks[at:at] = [copy, fetch]
    return json.dumps([{"hosts": "all", "gather_facts": False, "tasks": tasks}])


def pick_victim(rng: random.Random, kind: str, run: subprocess.Popen, tag: str) -> list[int]:
    tree = helpers.descendants(run.pid)
    mux = [p for p in tree if "ferrogen-mux" in cmdline(p) and " serve " in cmdline(p)]
    ssh = [p for p in tree if cmdline(p).startswith("ssh ")]
    agents = [p for p in tree if STUB_MARK in cmdline(p) or AGENT_NAME_MARK in cmdline(p)]
    workers = [p for p in tree if "ansible-playbook" in cmdline(p) and p != run.pid]
    tasks = [p for p in helpers.live_pids() if tag in cmdline(p)]
    pools = {"mux": mux, "ssh": ssh, "stop-ssh": ssh, "agent": agents, "task": tasks, "worker": workers}
    pool = pools.get(kind) or []
    return [rng.choice(pool)] if pool else []


def content_of(path: Path) -> str:
    """SHA-1 of path's content; "" if it does not exist."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def stale_temps(directory: Path, before: float) -> list[str]:
    """Temp files whose writer is gone (their lock is free) and which a later round should
    have swept."""
    stale = []
    for entry in directory.rglob(".ferrogen-*.tmp"):
        try:
            if entry.stat().st_mtime >= before:
                continue
            fd = os.open(entry, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale.append(str(entry))
        except OSError:
            pass
        finally:
            os.close(fd)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    bench.set_child_subreaper(1)
    work = Path(tempfile.mkdtemp(prefix="ferrogen-chaos-", dir="/tmp"))
    work.chmod(0o755)
    dest = work / "dest"
    dest.mkdir()
    dest.chmod(0o777)  # ferrotest writes there too
    fetched = work / "fetched"
    inv = inventory(work / "inventory.ini")
    env = dict(os.environ, ANSIBLE_STRATEGY_PLUGINS=str(STRATEGY_DIR), ANSIBLE_STRATEGY="mitogen_linear",
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_HOME=str(work / "home"), ANSIBLE_RETRY_FILES_ENABLED="False",
               ANSIBLE_TIMEOUT="10", FERROGEN_KEEPALIVE_INTERVAL="2", FERROGEN_KEEPALIVE_COUNT="5")
    rounds = kills = violations = 0
    deadline = time.monotonic() + args.minutes * 60
    print(f"chaos: seed {seed}, work dir {work}", flush=True)
    while time.monotonic() < deadline:
        rounds += 1
        tag = f"chaos-{uuid.uuid4().hex[:10]}"
        source = work / "source.bin"
        size = rng.choice([1000, 100_000, 3_000_000])
        source.write_bytes(os.urandom(size))
        template = work / "template.j2"
        template.write_text(f"round {rounds} {{{{ inventory_hostname }}}} {uuid.uuid4().hex}\n")
        # Each copy and each fetched copy holds its content from before the round or the
        # round's new one (a fetch may take the old or the new target file).
        new = hashlib.sha1(source.read_bytes()).hexdigest()
        allowed = {}
        for host in ("chaos-root", "chaos-user", "chaos-local"):
            copied = dest / f"{host}.bin"
            allowed[copied] = {content_of(copied), new}
            back = fetched / host / str(copied).lstrip("/")
            allowed[back] = {content_of(back)} | allowed[copied]
        book = work / "playbook.json"
        book.write_text(playbook(rng, tag, dest, source, template, fetched))
        started = time.time()
        log = open(work / "last-round.log", "wb")  # noqa: SIM115 - closed after the round
        run = subprocess.Popen([str(PLAYBOOK_BIN), "-i", str(inv), str(book)], env=env, cwd=work,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        kind = rng.choice(KINDS)
        # Once such a process exists (ansible-playbook takes seconds to start), a moment later.
        victims = []
        wait_until = time.monotonic() + 30
        while kind != "none" and not victims and run.poll() is None and time.monotonic() < wait_until:
            time.sleep(0.2)
            victims = pick_victim(rng, kind, run, tag)
        time.sleep(rng.uniform(0, 2))
        victims = [pid for pid in victims if alive(pid)]
        for pid in victims:
            kills += 1
            try:
                if kind == "stop-ssh":
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(1, 5))
                    os.kill(pid, signal.SIGCONT)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        problems = []
        try:
            run.wait(timeout=ROUND_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"run did not end within {ROUND_TIMEOUT}s")
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        time.sleep(3)  # what the run leaves to end on its own (agents seeing end of input)
        reap()
        leftovers = [p for p in helpers.descendants(os.getpid()) if alive(p)]
        leftovers += [p for p in helpers.live_pids() if tag in cmdline(p) and alive(p)]
        if leftovers:
            problems.append("left running: " + "; ".join(f"{p} {cmdline(p)[:80]}" for p in set(leftovers)))
        for path, contents in allowed.items():
            if content_of(path) not in contents:
                problems.append(f"{path} holds neither its old nor its new content")
        if rounds > 1:
            stale = stale_temps(dest, started)
            if stale:
                problems.append(f"temp files left: {stale}")
        log.close()
        if run.returncode and not victims:
            problems.append("failed with nothing killed: " + (work / "last-round.log").read_text(errors="replace")[-2000:])
        violations += len(problems)
        victim = f"{kind} {victims}" if victims else f"{kind} (none found)"
        print(f"round {rounds}: rc {run.returncode}, killed {victim}, {len(problems)} violations "
              + "; ".join(problems), flush=True)
    print(f"chaos: {rounds} rounds, {kills} kills/stops, {violations} invariant violations (seed {seed})")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
