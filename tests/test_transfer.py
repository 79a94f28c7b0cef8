"""Issue 4: file transfer through ferrogen-mux, compared with vanilla Ansible.

Inputs are made at test time (nothing big is committed). Targets are this machine (sshroot,
sshuser over the test sshd; localhost), so the tests read what the runs wrote directly.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

import helpers
import pytest
from helpers import describe
from test_connection_only import connection_only_env

SMALL_FILE_LIMIT = 126976

# Result keys compared between vanilla and ferrogen (src is a per-run temp path; diff and
# invocation carry nothing the transfer decides).
KEYS = (
    "changed", "failed", "skipped", "checksum", "md5sum", "dest", "mode", "size", "state", "owner", "group",
    "uid", "gid", "remote_checksum", "remote_md5sum", "file", "rc", "stdout", "msg",
)  # fmt: skip


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Controller-side sources for every action."""
    src = tmp_path_factory.mktemp("transfer-src")
    rng = random.Random(4)
    (src / "small.txt").write_text("a small file\n" * 20)
    (src / "limit.bin").write_bytes(rng.randbytes(SMALL_FILE_LIMIT))
    (src / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 123))
    tree = src / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("file a\n")
    (tree / "sub" / "b.txt").write_text("file b\n")
    (tree / "sub" / "deeper" / "c.bin").write_bytes(rng.randbytes(200 * 1024))
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    (src / "page.j2").write_text("Hello {{ inventory_hostname }}: {{ 6 * 7 }}\n{% for i in range(3) %}line {{ i }}\n{% endfor %}")
    (src / "script.sh").write_text('#!/bin/sh\necho "args: $*"\nid -un\n')
    padding = "".join(f"# padding line {i:06d} to make this script larger than 124 KiB\n" for i in range(3000))
    (src / "bigscript.sh").write_text(f"#!/bin/sh\n{padding}echo big script ran\n")
    assert (src / "bigscript.sh").stat().st_size > SMALL_FILE_LIMIT
    fragments = src / "fragments"
    fragments.mkdir()
    for name, text in (("01-head", "# head\n"), ("02-body", "key = value\n"), ("03-tail", "# tail\n")):
        (fragments / name).write_text(text)
    content = src / "archive-content"
    (content / "inner").mkdir(parents=True)
    (content / "inner" / "x.txt").write_text("inside the archive\n")
    (content / "blob.bin").write_bytes(rng.randbytes(300 * 1024))
    with tarfile.open(src / "archive.tar.gz", "w:gz") as tar:
        tar.add(content / "inner", arcname="inner")
        tar.add(content / "blob.bin", arcname="blob.bin")
    return src


def snapshot(root: Path, replace: dict[str, str] | None = None) -> dict[str, tuple]:
    """Relative path -> (sha1, mode) of files and ('dir', mode) of directories under root."""
    found = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        for old, new in (replace or {}).items():
            rel = rel.replace(old, new)
        mode = path.lstat().st_mode & 0o7777
        found[rel] = ("dir", mode) if path.is_dir() else (sha1(path.read_bytes()), mode)
    return found


def summary(run: helpers.PlaybookRun, host: str, replace: dict[str, str]) -> dict[str, dict]:
    def norm(value):
        if isinstance(value, str):
            for old, new in replace.items():
                value = value.replace(old, new)
            return value.replace("\r\n", "\n").strip()
        return value

    return {
        r["task"]: {k: norm(r["result"].get(k)) for k in KEYS if k in r["result"]}
        for r in run.for_host(host)
    }


def run_both(run_playbook, playbook, limit, inputs, tmp_path, extra=()):
    """The playbook once through ferrogen and once through vanilla, at the same time, each
    writing under its own scratch root and fetch dir."""
    tag = uuid.uuid4().hex[:10]
    setups = {}
    for engine in ("ferrogen", "vanilla"):
        root = f"/tmp/ferrogen-transfer-{tag}-{engine}"
        fetch_dir = tmp_path / f"fetched-{engine}"
        fetch_dir.mkdir()
        args = ["-e", f"src={inputs}", "-e", f"scratch_root={root}", "-e", f"fetch_dir={fetch_dir}", *extra]
        setups[engine] = (root, fetch_dir, args)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {
            engine: pool.submit(
                run_playbook, playbook, ferrogen=engine == "ferrogen", limit=limit, extra_args=setup[2],
                tmp_path=tmp_path / engine,
            )
            for engine, setup in setups.items()
        }  # fmt: skip
        runs = {engine: future.result() for engine, future in futures.items()}
    return runs, setups


def cleanup(setups, hosts):
    for root, _, _ in setups.values():
        for host in hosts:
            shutil.rmtree(f"{root}-{host}", ignore_errors=True)


def no_temp_files(*roots) -> list[str]:
    return [str(p) for root in roots for p in Path(root).rglob(".ferrogen-*")]


# --------------------------------------------------------------------------- actions vs vanilla


def test_actions_match_vanilla(run_playbook, inputs, tmp_path):
    hosts = ["sshroot", "localhost"]
    runs, setups = run_both(run_playbook, "transfer_actions.yml", ",".join(hosts), inputs, tmp_path)
    try:
        for engine, run in runs.items():
            assert run.returncode == 0, f"{engine}: {describe(run)}"
        for host in hosts:
            sides = {}
            for engine, run in runs.items():
                root, fetch_dir, _ = setups[engine]
                replace = {f"{root}-{host}": "SCRATCH", str(fetch_dir): "FETCHED"}
                sides[engine] = (
                    summary(run, host, replace),
                    snapshot(Path(f"{root}-{host}")),
                    snapshot(fetch_dir, {root.lstrip("/"): "ROOT"}),
                )
            ours, theirs = sides["ferrogen"], sides["vanilla"]
            assert set(ours[0]) == set(theirs[0])
            for task in theirs[0]:
                assert ours[0][task] == theirs[0][task], f"{host}: task {task!r} differs from vanilla"
            assert ours[1] == theirs[1], f"{host}: files on the target differ from vanilla's"
            assert ours[2] == theirs[2], f"{host}: fetched files differ from vanilla's"
            results = ours[0]
            # The checks above would also pass if both were wrong in the same way.
            assert results["copy small file"]["changed"] and not results["copy small file again"]["changed"]
            assert results["copy big file"]["changed"] and not results["copy big file again"]["changed"]
            assert results["copy other content over a file"]["changed"]
            assert results["copy into a directory named without a slash"]["changed"]
            assert not results["copy into a directory named without a slash again"]["changed"]
            assert results["copy content onto a directory"]["msg"] == "can not use content with a dir as dest"
            assert results["fetch flat"]["changed"] and not results["fetch flat again"]["changed"]
            assert results["script big"]["stdout"] == "big script ran"
            big = (inputs / "big.bin").read_bytes()
            assert ours[1]["big.bin"] == (sha1(big), 0o640)
            assert ours[1]["big-remote.bin"][0] == sha1(big)
            assert ours[2][f"{host}-big.bin"][0] == sha1(big)
            assert ours[1]["unarchived/blob.bin"] == theirs[1]["unarchived/blob.bin"]
            assert ours[1]["assembled.conf"][0] == sha1(b"# head\nkey = value\n# tail\n")
        for engine in setups:
            root, fetch_dir, _ = setups[engine]
            assert no_temp_files(fetch_dir, *(f"{root}-{h}" for h in hosts)) == []
    finally:
        cleanup(setups, hosts)


def test_copy_with_become_matches_vanilla(run_playbook, inputs, tmp_path):
    runs, setups = run_both(run_playbook, "transfer_become.yml", "sshuser", inputs, tmp_path)
    try:
        for engine, run in runs.items():
            assert run.returncode == 0, f"{engine}: {describe(run)}"
        sides = {}
        for engine, run in runs.items():
            root, _, _ = setups[engine]
            target_dir = Path(f"{root}-sshuser")
            assert target_dir.stat().st_uid == 0 and target_dir.stat().st_mode & 0o777 == 0o700
            files = {p.name: (p.stat().st_uid, p.stat().st_mode & 0o7777) for p in target_dir.iterdir()}
            sides[engine] = (summary(run, "sshuser", {f"{root}-sshuser": "SCRATCH"}), snapshot(target_dir), files)
        assert sides["ferrogen"] == sides["vanilla"]
        results = sides["ferrogen"][0]
        assert results["script as root"]["stdout"] == "args: become\nroot"
        assert sides["ferrogen"][2]["big.bin"] == (0, 0o600)
    finally:
        cleanup(setups, ["sshuser"])


# --------------------------------------------------------------------------- atomicity


class Reader(threading.Thread):
    """Reads path over and over; every read must be one of the allowed versions."""

    def __init__(self, path: Path, allowed: dict[str, str]):
        super().__init__(daemon=True)
        self.path = path
        self.allowed = allowed
        self.stop = threading.Event()
        self.seen: dict[str, int] = {}
        self.bad: list[str] = []

    def run(self):
        while not self.stop.is_set():
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                self.bad.append("missing")
                continue
            name = self.allowed.get(sha1(data))
            if name is None:
                self.bad.append(f"{len(data)} bytes, sha1 {sha1(data)}")
            else:
                self.seen[name] = self.seen.get(name, 0) + 1


def versions(tmp_path: Path) -> dict[str, bytes]:
    rng = random.Random(9)
    return {
        "old": b"old version\n" * 1000,
        # One streamed, one small enough to ride in the call.
        "a": b"A" * 100 + rng.randbytes(600 * 1024),
        "b": b"B" * 100 + rng.randbytes(50 * 1024),
    }


def race(run_playbook, tmp_path: Path, watched: Path, contents: dict[str, bytes], extra_args_of) -> None:
    """Two runs at once, "a" and "b", each transferring its own version onto `watched` while a
    reader polls it: every read must be one complete version, and both must be seen."""
    reader = Reader(watched, {sha1(data): name for name, data in contents.items()})
    reader.start()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(run_playbook, "transfer_repeat.yml", ferrogen=True, limit="sshroot",
                        tmp_path=tmp_path / f"run-{name}", extra_args=extra_args_of(name))
            for name in ("a", "b")
        ]  # fmt: skip
        runs = [f.result() for f in futures]
    reader.stop.set()
    reader.join()
    for run in runs:
        assert run.returncode == 0, describe(run)
    assert reader.bad == []
    assert reader.seen.get("a") and reader.seen.get("b"), reader.seen


def test_concurrent_copies_are_atomic(run_playbook, tmp_path):
    contents = versions(tmp_path)
    remote_dir = Path(f"/tmp/ferrogen-race-{uuid.uuid4().hex[:10]}")
    remote_dir.mkdir()
    try:
        dest = remote_dir / "dest"
        dest.write_bytes(contents["old"])
        for name in ("a", "b"):
            (tmp_path / name).write_bytes(contents[name])
        race(run_playbook, tmp_path, dest, contents,
             lambda name: ["-e", "op=copy", "-e", "rounds=12", "-e", f"version={tmp_path / name}", "-e", f"dest={dest}"])
        assert no_temp_files(remote_dir) == []
    finally:
        shutil.rmtree(remote_dir, ignore_errors=True)


def test_concurrent_fetches_are_atomic(run_playbook, tmp_path):
    contents = versions(tmp_path)
    remote_dir = Path(f"/tmp/ferrogen-race-{uuid.uuid4().hex[:10]}")
    remote_dir.mkdir()
    try:
        for name in ("a", "b"):
            (remote_dir / name).write_bytes(contents[name])
        local_dir = tmp_path / "local"
        local_dir.mkdir()
        local = local_dir / "dest"
        local.write_bytes(contents["old"])
        race(run_playbook, tmp_path, local, contents,
             lambda name: ["-e", "op=fetch", "-e", "rounds=12", "-e", f"remote={remote_dir / name}", "-e", f"local={local}"])
        assert no_temp_files(local_dir) == []
    finally:
        shutil.rmtree(remote_dir, ignore_errors=True)


# --------------------------------------------------------------------------- crashes mid-transfer


def proc_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class BackgroundRun:
    """ansible-playbook in the background, so the test can kill parts of it."""

    def __init__(self, playbook: str, tmp_path: Path, extra_args: list[str], verbose: bool = False):
        run_dir = tmp_path / f"bg-{uuid.uuid4().hex[:8]}"
        run_dir.mkdir()
        env = helpers.base_env(run_dir, ferrogen=True)
        env["FERROGEN_RESULTS"] = str(run_dir / "results.jsonl")
        self.results = run_dir / "results.jsonl"
        cmd = [str(helpers.ansible_playbook_bin()), "-i", str(helpers.INVENTORY), str(helpers.PLAYBOOKS / playbook),
               "--limit", "sshroot", *extra_args]  # fmt: skip
        if verbose:
            cmd.append("-vvv")
        self.proc = subprocess.Popen(cmd, env=env, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.output = ""

    def mux_pid(self) -> int | None:
        for child in proc_children(self.proc.pid):
            if "ferrogen-mux" in cmdline(child):
                return child
        return None

    def wait(self, timeout: float = 300) -> int:
        self.output, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def big_file(path: Path, mib: int) -> str:
    block = random.Random(mib).randbytes(1024 * 1024)
    digest = hashlib.sha1()
    with open(path, "wb") as out:
        for i in range(mib):
            chunk = i.to_bytes(8, "big") + block[8:]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def growing_temp(pattern_root: Path, glob: str, min_bytes: int):
    """A .ferrogen-<pid>-*.tmp under pattern_root that holds at least min_bytes."""
    for path in pattern_root.glob(glob):
        try:
            if path.stat().st_size >= min_bytes:
                return path
        except OSError:
            continue
    return None


TEMP_PID = re.compile(r"^\.ferrogen-(\d+)-")


@pytest.fixture
def crash_setup(tmp_path):
    base = Path(f"/tmp/ferrogen-crash-{uuid.uuid4().hex[:10]}")
    (base / "rtmp").mkdir(parents=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.mux_only
@pytest.mark.parametrize("victim", ["mux", "interpreter"])
def test_crash_mid_copy_keeps_the_old_file(tmp_path, crash_setup, victim):
    base = crash_setup
    source = tmp_path / "huge.bin"
    big_file(source, 400)
    dest = base / "dest"
    dest.write_bytes(b"the old file\n")
    extra = ["-e", "op=copy", "-e", "rounds=1", "-e", f"version={source}", "-e", f"dest={dest}",
             "-e", f"ansible_remote_tmp={base / 'rtmp'}"]  # fmt: skip
    run = BackgroundRun("transfer_repeat.yml", tmp_path, extra)
    try:
        temp = wait_for(lambda: growing_temp(base / "rtmp", "ansible-tmp-*/.ferrogen-*.tmp", 32 << 20), what="transfer")
        agent_pid = int(TEMP_PID.match(temp.name).group(1))
        assert helpers.is_agent_args(cmdline(agent_pid))  # the agent, and ours: it writes our temp file
        pid = run.mux_pid() if victim == "mux" else agent_pid
        os.kill(pid, signal.SIGKILL)
        assert run.wait() != 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.wait()
    assert dest.read_bytes() == b"the old file\n"
    leftovers = lambda: no_temp_files(base / "rtmp")  # noqa: E731
    if victim == "mux":
        # The agent sees its link close and removes its temp file itself.
        wait_for(lambda: not leftovers(), timeout=15, what="the agent to remove its temp file")
    else:
        # Killed with it: Ansible's clean-up of the task's temp dir (through a new
        # interpreter) may remove it; if not, the next interpreter that writes beside it sweeps
        # it, its writer's pid being dead (the agent tests show the sweep on its own).
        small = tmp_path / "small"
        small.write_bytes(b"next run\n")
        follow = helpers.run_playbook("transfer_repeat.yml", ferrogen=True, tmp_path=tmp_path, limit="sshroot",
                                      extra_args=["-e", "op=copy", "-e", "rounds=1", "-e", f"version={small}",
                                                  "-e", f"dest={base / 'other'}",
                                                  "-e", f"ansible_remote_tmp={base / 'rtmp'}"])  # fmt: skip
        assert follow.returncode == 0, describe(follow)
        assert leftovers() == []
    assert dest.read_bytes() == b"the old file\n"


def open_by(path: Path) -> int | None:
    """The process holding path open."""
    target = str(path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry)
        except OSError:
            continue
    return None


@pytest.mark.mux_only
@pytest.mark.parametrize("victim", ["mux", "interpreter"])
def test_crash_mid_fetch_keeps_the_old_file(tmp_path, crash_setup, victim):
    base = crash_setup
    remote = base / "remote.bin"
    big_file(remote, 400)
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    local = local_dir / "dest"
    local.write_bytes(b"the old local file\n")
    extra = ["-e", "op=fetch", "-e", "rounds=1", "-e", f"remote={remote}", "-e", f"local={local}"]
    run = BackgroundRun("transfer_repeat.yml", tmp_path, extra)
    try:
        wait_for(lambda: growing_temp(local_dir, ".ferrogen-*.tmp", 32 << 20), what="fetch")
        pid = run.mux_pid() if victim == "mux" else open_by(remote)
        assert pid and (victim == "mux" or helpers.is_agent_args(cmdline(pid)))
        os.kill(pid, signal.SIGKILL)
        assert run.wait() != 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.wait()
    assert local.read_bytes() == b"the old local file\n"
    assert no_temp_files(local_dir) == []


# --------------------------------------------------------------------------- memory, progress, status


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.mux_only
def test_one_gigabyte_copy_in_bounded_memory_with_progress(tmp_path, crash_setup):
    """A 1 GiB copy grows neither the mux nor the agent by more than a few MB; -vvv shows
    progress and the mux's status table shows the transfer."""
    base = crash_setup
    source = tmp_path / "gig.bin"
    digest = big_file(source, 1024)
    dest = base / "dest"
    extra = ["-e", "op=copy", "-e", "rounds=1", "-e", f"version={source}", "-e", f"dest={dest}",
             "-e", f"ansible_remote_tmp={base / 'rtmp'}"]  # fmt: skip
    run = BackgroundRun("transfer_repeat.yml", tmp_path, extra, verbose=True)
    figures = {}
    try:
        temp = wait_for(lambda: growing_temp(base / "rtmp", "ansible-tmp-*/.ferrogen-*.tmp", 1), what="transfer")
        agent = int(TEMP_PID.match(temp.name).group(1))
        mux = run.mux_pid()
        start = {"agent": vm_hwm_kib(agent), "mux": vm_hwm_kib(mux)}
        peak = dict(start)
        socket_path = cmdline(mux).split("--socket", 1)[1].split()[0]
        status_rows = []
        while temp.exists():
            for name, pid in (("agent", agent), ("mux", mux)):
                value = vm_hwm_kib(pid)
                if value:
                    peak[name] = max(peak[name], value)
            if not status_rows:
                out = subprocess.run([str(helpers.REPO / "target" / "release" / "ferrogen-mux"), "status", "--socket",
                                      socket_path], capture_output=True, text=True, timeout=10)  # fmt: skip
                status_rows = [line for line in out.stdout.splitlines() if line.startswith("transfer")]
            time.sleep(0.1)
        assert run.wait() == 0, run.output
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.wait()
    for name in ("agent", "mux"):
        figures[name] = {"start_kib": start[name], "peak_kib": peak[name], "growth_kib": peak[name] - start[name]}
    print("VmHWM during a 1 GiB copy:", json.dumps(figures))
    assert figures["mux"]["growth_kib"] < 16 * 1024, figures
    assert figures["agent"]["growth_kib"] < 16 * 1024, figures
    assert hashlib.sha1(dest.read_bytes()).hexdigest() == digest
    assert status_rows and "MB/s" in status_rows[0] and "of 1073741824 bytes" in status_rows[0], status_rows
    progress = [line for line in run.output.splitlines() if "ferrogen: put" in line and "MB/s" in line]
    assert progress and "1073741824/1073741824 bytes" in progress[-1], run.output[-3000:]


# --------------------------------------------------------------------------- round trips


def _copy_once(tmp_path: Path, source: Path, dest: Path, remote_tmp: Path, rounds: int = 1,
               extra_env: dict[str, str] | None = None) -> helpers.PlaybookRun:
    return helpers.run_playbook("transfer_repeat.yml", ferrogen=True, tmp_path=tmp_path, limit="sshroot",
                                extra_env={"FERROGEN_LOG": "debug", **(extra_env or {})},
                                extra_args=["-vvv", "-e", "op=copy", "-e", f"rounds={rounds}", "-e", f"version={source}",
                                            "-e", f"dest={dest}", "-e", f"ansible_remote_tmp={remote_tmp}"])  # fmt: skip


@pytest.mark.mux_only
@pytest.mark.parametrize("mode", ["strategy", "connection-only"])
def test_a_small_copy_waits_for_one_call_and_leaves_no_temp_dir(tmp_path, mode):
    source = tmp_path / "source.txt"
    source.write_text("small\n")
    remote_tmp = tmp_path / "rtmp"
    # A connection-only worker installs the copy action's patches itself, for a copy task only.
    extra_env = connection_only_env(tmp_path, "linear") if mode == "connection-only" else None
    run = _copy_once(tmp_path, source, tmp_path / "dest.txt", remote_tmp, rounds=2, extra_env=extra_env)
    assert run.returncode == 0, describe(run)
    assert "WARNING" not in run.stdout + run.stderr, describe(run)
    assert (tmp_path / "dest.txt").read_text() == "small\n"
    items = run.task("sshroot", "copy round")["result"]["results"]
    assert [item["changed"] for item in items] == [True, False], items
    ops = re.findall(r"agent: call \d+: (\w+)", run.stderr)
    # Per copy, one call runs stat and then copy (or file, once the content is there); it is
    # the only call the worker waits for. The temp dir's creation, the upload and the removal
    # are detached; no shell command runs at all.
    assert sorted(ops) == sorted(["make_dir", "put_file", "run_module", "remove_tree"] * 2), ops
    assert len(re.findall(r"already ran with the call before it", run.stdout)) == 4, describe(run)
    assert list(remote_tmp.glob("ansible-tmp-*")) == []
    assert oct(remote_tmp.stat().st_mode & 0o777) == oct(0o700)


@pytest.mark.mux_only
def test_a_failed_detached_step_fails_the_task_with_its_error(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("small\n")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the remote temp dir should go\n")
    run = _copy_once(tmp_path, source, tmp_path / "dest.txt", blocker / "rtmp")
    assert run.returncode != 0
    result = run.task("sshroot", "copy round")
    assert result["failed"], result
    assert "an earlier make_dir of this task failed" in json.dumps(result), result
    assert not (tmp_path / "dest.txt").exists()


@pytest.mark.mux_only
def test_a_large_copy_hashes_its_source_once_on_each_side(tmp_path):
    """The worker hashes a large source once, in threads: the SHA-1 for the action's checksum
    and the stream's, the copy module's MD5 once the upload starts (never for the unchanged
    second round); the agent keeps what it verified for the copy module, which reports the
    same digests as vanilla computes."""
    source = tmp_path / "large.bin"
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 1)
    source.write_bytes(data)
    dest = tmp_path / "dest.bin"
    run = _copy_once(tmp_path, source, dest, tmp_path / "rtmp", rounds=2)
    assert run.returncode == 0, describe(run)
    assert dest.read_bytes() == data
    items = run.task("sshroot", "copy round")["result"]["results"]
    assert [item["changed"] for item in items] == [True, False], items
    assert items[0]["checksum"] == sha1(data) and items[0]["md5sum"] == hashlib.md5(data).hexdigest(), items[0]
    assert len(re.findall(r"ferrogen: stream .*, hashed ahead\)", run.stdout)) == 1, describe(run)
    kept = re.findall(r"agent: kept the md5 and sha1 of (\S+) for the task's modules", run.stderr)
    assert len(kept) == 1 and kept[0].startswith(str(tmp_path / "rtmp")), describe(run)
