"""ssh, complete (issue 17) and per-host keepalive (issue 20): password logins answered by the
mux on a terminal of its own (no sshpass), host key prompts as host_key_checking says, Mitogen's
process names on the target, and each host's own keepalive figures. Real ansible-playbook runs
against the test sshd (ci/setup.sh: ferropw logs in by password only) and, for host keys, an
sshd of the test's own with a fresh host key."""

from __future__ import annotations

import glob
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import helpers
from helpers import SSH_PORT, describe, ssh_host_line, write_inventory
from isolated_host import free_port

# ferropw's password (ci/setup.sh); it has no key, so a login can only be by password.
PASSWORD = "ferropw-secret-31"
PASSWORD_HOST = f"ansible_host=127.0.0.1 ansible_port={SSH_PORT} ansible_user=ferropw ansible_python_interpreter=/usr/bin/python3"


def password_line(name: str, password: str = PASSWORD, variable: str = "ansible_password", extra: str = "") -> str:
    return f"{name} {PASSWORD_HOST} {variable}={password} {extra}".strip()


def test_password_login_from_each_of_ansibles_variables(run_playbook, tmp_path):
    only = "ansible_ssh_extra_args='-o PreferredAuthentications={}'"
    lines = [
        password_line("pw_password"),
        password_line("pw_ssh_pass", variable="ansible_ssh_pass"),
        password_line("pw_ssh_password", variable="ansible_ssh_password"),
        # ssh's two ways of asking: its own password prompt, and the server's (PAM's) prompts.
        password_line("pw_method_password", extra=only.format("password")),
        password_line("pw_method_keyboard", extra=only.format("keyboard-interactive")),
    ]
    run = run_playbook("ssh_login.yml", ferrogen=True, inventory=write_inventory(tmp_path / "inv.ini", lines))
    assert run.returncode == 0, describe(run)
    for host in ("pw_password", "pw_ssh_pass", "pw_ssh_password", "pw_method_password", "pw_method_keyboard"):
        assert run.task(host, "who am i")["stdout"] == "ferropw", describe(run)


def test_a_wrong_password_is_unreachable_with_sshs_own_message(run_playbook, tmp_path):
    lines = [
        password_line("wrong", password="not-the-password"),
        password_line("wrong_ssh_prompt", password="not-the-password",
                      extra="ansible_ssh_extra_args='-o PreferredAuthentications=password'"),
        password_line("right"),
    ]  # fmt: skip
    started = time.monotonic()
    run = run_playbook(
        "ssh_login.yml",
        ferrogen=True,
        inventory=write_inventory(tmp_path / "inv.ini", lines),
        extra_env={"ANSIBLE_TIMEOUT": "20"},
    )
    elapsed = time.monotonic() - started
    for host in ("wrong", "wrong_ssh_prompt"):
        wrong = run.task(host, "who am i")
        assert wrong["unreachable"], wrong
        assert "Permission denied" in wrong["msg"], wrong["msg"]
    assert "not-the-password" not in run.output
    # Two specs that differ only in their password do not share a connection.
    assert run.task("right", "who am i")["stdout"] == "ferropw", describe(run)
    # Refused at once, not at the timeout (twice over: the run has two tasks' worth of it).
    assert elapsed < 20, f"the wrong password took {elapsed:.1f}s to fail"


def our_processes(root_pid: int) -> list[int]:
    """root_pid and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def test_the_password_is_nowhere_at_vvvv_with_router_debug(tmp_path):
    """Output, debug logs, and the command line and environment of every process of the run
    (ansible-playbook, workers, the mux, ssh, and the target's interpreters: the target is this
    machine), looked at while the run is in its task."""
    inventory = write_inventory(tmp_path / "inv.ini", [password_line("pw", extra="mitogen_ssh_debug_level=2")])
    env = helpers.base_env(tmp_path, ferrogen=True)
    env.update({"MITOGEN_ROUTER_DEBUG": "1", "FERROGEN_RESULTS": str(tmp_path / "results.jsonl")})
    since = time.time() - 1
    cmd = [str(helpers.ansible_playbook_bin()), "-i", str(inventory), str(helpers.PLAYBOOKS / "ssh_login.yml"),
           "-e", "ssh_login_sleep=4", "-vvvv"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)  # fmt: skip

    def run_processes():
        pids = set(our_processes(proc.pid))
        # The target's interpreters are children of sshd, not of the run: ferropw's.
        return pids | {int(p.split("/")[2]) for p in glob.glob("/proc/[0-9]*") if _owner(p) == "ferropw"}

    with helpers.SecretWatch(PASSWORD.encode(), run_processes, interval=0.1) as watch:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert not watch.seen, watch.seen
    assert len(watch.looked_at) > 5, watch.looked_at
    # ssh's own debug lines (mitogen_ssh_debug_level) reach the log shown at -vvv.
    assert "transport stderr: debug1:" in stderr or "transport stderr: OpenSSH" in stderr, stderr[-3000:]
    assert "ssh terminal:" in stderr, "the prompt ssh printed is not logged at -vvvv"
    logs = [Path(p) for p in glob.glob("/tmp/mitogen.*.log") if os.stat(p).st_mtime >= since]
    assert logs, "MITOGEN_ROUTER_DEBUG=1 wrote no debug log"
    for name, text in [("stdout", stdout), ("stderr", stderr)] + [(str(p), p.read_text(errors="replace")) for p in logs]:
        assert PASSWORD not in text, f"the password appears in {name}"


def _owner(proc_dir: str) -> str | None:
    try:
        return pwd.getpwuid(os.stat(proc_dir).st_uid).pw_name
    except (OSError, KeyError):
        return None


# --------------------------------------------------------------------------- host keys


class FreshSshd:
    """The test sshd's configuration on a port of its own with a host key made for the test:
    no known_hosts file knows it."""

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        key = base / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                       stdin=subprocess.DEVNULL)  # fmt: skip
        self.public_key = (base / "host_key.pub").read_text().split()[1]
        config = (helpers.STATE / "sshd" / "sshd_config").read_text().splitlines()
        kept = [line for line in config if not line.startswith(("Port ", "PidFile ", "HostKey "))]
        match = next((i for i, line in enumerate(kept) if line.startswith("Match ")), len(kept))
        kept[match:match] = [f"Port {self.port}", f"PidFile {base}/sshd.pid", f"HostKey {key}"]
        (base / "sshd_config").write_text("\n".join(kept) + "\n")
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            ["/usr/sbin/sshd", "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the test's sshd did not listen: {(base / 'sshd.log').read_text()}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)


@pytest.fixture
def fresh_sshd(tmp_path):
    sshd = FreshSshd(tmp_path)
    yield sshd
    sshd.stop()


def host_key_inventory(path: Path, sshd: FreshSshd, known_hosts: Path, *, password: bool) -> Path:
    login = (f"ansible_user=ferropw ansible_password={PASSWORD}" if password
             else f"ansible_user=root ansible_ssh_private_key_file={helpers.SSH_KEY}")  # fmt: skip
    path.write_text(
        "[targets]\n"
        f"fresh ansible_host=127.0.0.1 ansible_port={sshd.port} {login} ansible_python_interpreter=/usr/bin/python3\n"
        "[all:vars]\n"
        f"ansible_ssh_common_args='-o UserKnownHostsFile={known_hosts}'\n"
    )
    return path


@pytest.mark.parametrize("password", [False, True], ids=["key", "password"])
def test_host_key_checking_off_accepts_and_records_the_key_as_vanilla_does(run_playbook, tmp_path, fresh_sshd,
                                                                           password):  # fmt: skip
    recorded = {}
    # Vanilla types the password through SSH_ASKPASS (ansible-core 2.19+'s default password_mechanism).
    for ferrogen in (True, False):
        known_hosts = tmp_path / f"known_hosts-{ferrogen}"
        inventory = host_key_inventory(tmp_path / f"inv-{ferrogen}.ini", fresh_sshd, known_hosts, password=password)
        run = run_playbook("ssh_login.yml", ferrogen=ferrogen, inventory=inventory,
                           extra_env={"ANSIBLE_HOST_KEY_CHECKING": "False"})  # fmt: skip
        assert run.returncode == 0, describe(run)
        assert run.task("fresh", "who am i")["stdout"] == ("ferropw" if password else "root")
        recorded[ferrogen] = recorded_keys(known_hosts, fresh_sshd.port)
        assert recorded[ferrogen] == [f"ssh-ed25519 {fresh_sshd.public_key}"], known_hosts.read_text()
    assert recorded[True] == recorded[False]


def recorded_keys(known_hosts: Path, port: int) -> list[str]:
    """The keys known_hosts holds for 127.0.0.1:port (ssh may hash the names: HashKnownHosts)."""
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{port}", "-f", str(known_hosts)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    lines = [line.split() for line in found.stdout.splitlines() if line and not line.startswith("#")]
    return sorted(" ".join(words[1:3]) for words in lines)


@pytest.mark.parametrize("password", [False, True], ids=["key", "password"])
def test_host_key_checking_on_refuses_an_unknown_key(run_playbook, tmp_path, fresh_sshd, password):
    known_hosts = tmp_path / "known_hosts"
    inventory = host_key_inventory(tmp_path / "inv.ini", fresh_sshd, known_hosts, password=password)
    run = run_playbook("ssh_login.yml", ferrogen=True, inventory=inventory,
                       extra_env={"ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_TIMEOUT": "20"})  # fmt: skip
    refused = run.task("fresh", "who am i")
    assert refused["unreachable"], refused
    assert "Host key verification failed." in refused["msg"], refused["msg"]
    if password:
        # The prompt ssh put on its terminal is part of the message.
        assert "authenticity of host" in refused["msg"], refused["msg"]
    assert not known_hosts.exists() or fresh_sshd.public_key not in known_hosts.read_text()


def test_host_key_checking_on_accepts_a_known_key(run_playbook, tmp_path, fresh_sshd):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{fresh_sshd.port} ssh-ed25519 {fresh_sshd.public_key}\n")
    inventory = host_key_inventory(tmp_path / "inv.ini", fresh_sshd, known_hosts, password=True)
    run = run_playbook("ssh_login.yml", ferrogen=True, inventory=inventory, extra_env={"ANSIBLE_HOST_KEY_CHECKING": "True"})
    assert run.task("fresh", "who am i")["stdout"] == "ferropw", describe(run)


# --------------------------------------------------------------------------- process names


@pytest.mark.parametrize("connection", ["ssh", "local"])
@pytest.mark.parametrize("masked", [False, True], ids=["named", "masked"])
def test_target_interpreters_are_named_as_mitogen_names_them(run_playbook, tmp_path, masked, connection):
    extra = "mitogen_mask_remote_name=true" if masked else ""
    host = (ssh_host_line("nopw", user="ferronopw", extra=extra) if connection == "ssh"
            else f"nopw ansible_connection=local ansible_python_interpreter=/usr/bin/python3 {extra}")
    inventory = write_inventory(tmp_path / "inv.ini", [host])
    run = run_playbook("ssh_process_names.yml", ferrogen=True, inventory=inventory)
    assert run.returncode == 0, describe(run)
    login = run.task("nopw", "ancestors of a login task")["stdout"].splitlines()
    become = run.task("nopw", "ancestors of a become task")["stdout"].splitlines()
    controller = re.escape(f"{_controller_user()}@{socket.gethostname()}")
    name = "ansible" if masked else rf"{controller}:\d+"
    login_name = re.compile(rf"^\S*python\S* mitogen:{name}$")
    become_name = re.compile(rf"^\S*python\S* mitogen:{name} sudo:root$")
    assert any(login_name.match(line) for line in login), login
    assert any(become_name.match(line) for line in become), become
    # The become child's chain goes through the login interpreter, named as well.
    assert any(login_name.match(line) for line in become), become
    if masked:
        assert not any(socket.gethostname() in line and "mitogen:" in line for line in login + become)


def _controller_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# --------------------------------------------------------------------------- keepalive


def test_a_hosts_own_keepalive_makes_a_stopped_session_unreachable_in_about_that_time(run_playbook, tmp_path):
    extra = "mitogen_ssh_keepalive_interval=1 mitogen_ssh_keepalive_count=3"
    inventory = write_inventory(tmp_path / "inv.ini", [ssh_host_line("stopped", extra=extra)])
    started = time.monotonic()
    run = run_playbook("ssh_keepalive.yml", ferrogen=True, inventory=inventory, timeout=200)
    elapsed = time.monotonic() - started
    assert run.task("stopped", "connected")["stdout"] == "connected", describe(run)
    stopped = run.task("stopped", "stop the ssh session")
    assert stopped.get("unreachable"), stopped
    message = stopped["msg"]
    # Whichever end notices first: the mux's heartbeat, or ssh's ServerAlive messages.
    assert "answered nothing for" in message or re.search(r"Timeout, server \S+ not responding", message), message
    assert run.task("stopped", "after the stop")["stdout"] == "after", describe(run)
    # The default figures (30 s x 10) would have waited 300 s; the task's own sleep is 60 s.
    assert elapsed < 55, f"the stopped session was noticed only after {elapsed:.1f}s"
