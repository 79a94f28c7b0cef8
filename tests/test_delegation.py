"""Connection delegation (mitogen_via) over ssh between hosts with addresses of their own
(tests/netns_hosts.py): host N is reachable only from host N-1, so a task that runs there went
through every hop. Needs root and `ip netns` (CI runs as root)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import helpers
import pytest
from netns_hosts import NetnsChain

pytestmark = [
    pytest.mark.mux_only,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="network namespaces need root and iproute2's ip"),
]


@pytest.fixture
def chain(tmp_path):
    hosts = NetnsChain(tmp_path, 3)
    try:
        yield hosts.start()
    finally:
        hosts.stop()  # a chain half set up is taken down too


# What every host of a chain inventory shares: root by key on each namespace's sshd.
CHAIN_VARS = f"""[all:vars]
ansible_user=root
ansible_port=22
ansible_ssh_private_key_file={helpers.SSH_KEY}
ansible_python_interpreter=/usr/bin/python3
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
"""


def inventory(path: Path, chain: NetnsChain, final_via: str, extra_hops: str = "") -> Path:
    """hop1 <- hop2 <- the finals (app1 as root, app2 as ferrotest, both on host 3)."""
    h1, h2, h3 = chain.hosts
    path.write_text(f"""
[hops]
hop1 ansible_host={h1}
hop2 ansible_host={h2} mitogen_via=hop1 {extra_hops}
[finals]
app1 ansible_host={h3} mitogen_via={final_via}
app2 ansible_host={h3} mitogen_via={final_via} ansible_user=ferrotest
{CHAIN_VARS}""")
    return path


# mitogen_get_stack resolves when the playbook is parsed, before the strategy loads: the
# user points action_plugins at it, as docs/user-guide.md says.
ACTION_ENV = {"ANSIBLE_ACTION_PLUGINS": str(helpers.REPO / "plugin" / "ansible_ferrogen" / "plugins" / "action")}


def by_task(run, task: str) -> dict[str, dict]:
    return {r["host"]: r for r in run.results if r["task"] == task}


def test_three_hops_run_on_the_final_host_with_one_login_per_hop(chain, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    run = helpers.run_playbook("via_chain.yml", ferrogen=True, tmp_path=tmp_path, extra_env=ACTION_ENV,
                               inventory=inventory(tmp_path / "inv.ini", chain, "hop2"),
                               extra_args=("-e", f"big_file={big}", "-e", "delegated_facts=true"))
    assert run.returncode == 0, helpers.describe(run)
    addresses = by_task(run, "addresses of the host the task ran on")
    assert set(addresses) == {"app1", "app2"}
    for result in addresses.values():
        assert chain.hosts[2] in result["stdout"], result
    assert all(r["status"] == "ok" for r in by_task(run, "the task ran on the final host").values())
    assert len([r for r in run.results if r["task"] == "a loop behind the hops"]) >= 2
    # One login on each hop for both targets behind it; one per target on the final host.
    assert chain.logins(0) == 1, chain.log(0)
    assert chain.logins(1) == 1, chain.log(1)
    assert chain.logins(2) == 2, chain.log(2)
    stack = by_task(run, "the route a task takes")["app2"]["result"]["result"]
    assert [hop["kwargs"]["name"] for hop in stack] == ["hop1", "hop2", "app2"]
    assert [hop["kwargs"]["host"] for hop in stack] == chain.hosts
    assert stack[2]["kwargs"]["user"] == "ferrotest"
    for result in by_task(run, "delegate_to another routed host").values():
        assert chain.hosts[2] in result["stdout"], result
    assert all(r["status"] == "ok" for r in by_task(run, "local_action runs on the controller").values())
    delegated_facts = by_task(run, "the delegated facts went to that host")
    assert set(delegated_facts) == {"app1", "app2"}, helpers.describe(run)
    assert all(r["status"] == "ok" for r in delegated_facts.values()), helpers.describe(run)
    for name in ("app1", "app2"):
        assert (tmp_path / f"big.bin.{name}").read_bytes() == big.read_bytes()


def one_hop_inventory(path: Path, chain: NetnsChain, users: tuple[str, ...]) -> Path:
    """app1, app2, ... on host 2 behind hop1, one per account in `users`."""
    h1, h2, _ = chain.hosts
    finals = "\n".join(f"app{n} ansible_host={h2} mitogen_via=hop1 ansible_user={user}"
                       for n, user in enumerate(users, 1))
    path.write_text(f"""
[hops]
hop1 ansible_host={h1}
[finals]
{finals}
{CHAIN_VARS}""")
    return path


def test_two_hops_reach_the_host_behind_the_first(chain, tmp_path):
    path = one_hop_inventory(tmp_path / "inv.ini", chain, ("root", "ferrotest"))
    h2 = chain.hosts[1]
    run = helpers.run_playbook("via_chain.yml", ferrogen=True, tmp_path=tmp_path, inventory=path,
                               extra_env=ACTION_ENV)
    assert run.returncode == 0, helpers.describe(run)
    for result in by_task(run, "addresses of the host the task ran on").values():
        assert h2 in result["stdout"], result
    assert chain.logins(0) == 1, chain.log(0)
    assert chain.logins(1) == 2, chain.log(1)


def hop_blob_lines(since: float) -> tuple[list[Path], Counter, Counter]:
    """The agents' debug logs (MITOGEN_ROUTER_DEBUG) since `since` that kept blobs for routes,
    with how often each blob's content was kept (it crossed) and served (it did not)."""
    logs = [Path(p) for p in glob.glob("/tmp/mitogen.*.log") if os.stat(p).st_mtime >= since]
    kept: Counter = Counter()
    served: Counter = Counter()
    hops = []
    for log in logs:
        text = log.read_text(errors="replace")
        # An agent's own log (the mux's repeats what agents said, in its own format).
        if not re.match(r"\S+ \d+ debug agent ready", text) or "for the targets behind this hop" not in text:
            continue
        hops.append(log)
        kept.update(re.findall(r"route \d+: kept blob (\w+)", text))
        served.update(re.findall(r"route \d+: blob (\w+) served from this hop", text))
    return hops, kept, served


def test_module_code_crosses_the_hop_once_for_every_target_behind_it(chain, tmp_path):
    """Three targets behind hop1 run the same modules: each module zip's content crosses the
    mux's link to hop1 once, and hop1 serves it to the other targets."""
    path = one_hop_inventory(tmp_path / "inv.ini", chain, ("root", "ferrotest", "ferrosudo"))
    since = time.time() - 1
    run = helpers.run_playbook("via_chain.yml", ferrogen=True, tmp_path=tmp_path, inventory=path,
                               extra_env={**ACTION_ENV, "MITOGEN_ROUTER_DEBUG": "1"})
    assert run.returncode == 0, helpers.describe(run)
    assert chain.logins(0) == 1, chain.log(0)
    hops, kept, served = hop_blob_lines(since)
    assert len(hops) == 1, f"expected hop1's agent alone to keep blobs for routes: {hops}"
    assert kept, "hop1 kept no module code for the targets behind it"
    assert all(count == 1 for count in kept.values()), f"content crossed hop1 more than once: {kept}"
    # Every module the three targets ran crossed once and was served to the two others.
    assert set(served) == set(kept), (kept, served)
    assert all(served[digest] >= 2 for digest in kept), (kept, served)


class PeakMemory(threading.Thread):
    """The largest VmHWM (KiB) of each Python process (the agents) in some namespaces,
    sampled until stopped."""

    def __init__(self, namespaces: list[str]):
        super().__init__(daemon=True)
        self.namespaces = namespaces
        self.peaks: dict[tuple[str, int], int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for ns in self.namespaces:
                pids = subprocess.run(["ip", "netns", "pids", ns],  # noqa: S603, S607
                                      capture_output=True, text=True, check=False).stdout.split()
                for pid in map(int, pids):
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    found = re.search(r"VmHWM:\s+(\d+)", status)
                    if found and "ssh" not in status.split("\n", 1)[0]:
                        key = (ns, pid)
                        self.peaks[key] = max(self.peaks.get(key, 0), int(found.group(1)))


def test_a_100_mib_copy_and_fetch_through_two_hops_keep_the_hops_memory_bounded(chain, tmp_path):
    """The transfer window holds across hops: the hops' agents never hold the file."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(100 << 20))
    sampler = PeakMemory(chain.namespaces[:2])
    sampler.start()
    try:
        run = helpers.run_playbook("via_chain.yml", ferrogen=True, tmp_path=tmp_path, extra_env=ACTION_ENV,
                                   inventory=inventory(tmp_path / "inv.ini", chain, "hop2"),
                                   extra_args=("-e", f"big_file={big}", "--limit", "app1"))
    finally:
        sampler.done.set()
        sampler.join()
    assert run.returncode == 0, helpers.describe(run)
    assert (tmp_path / "big.bin.app1").read_bytes() == big.read_bytes()
    hops = {ns for ns, _ in sampler.peaks}
    assert hops == set(chain.namespaces[:2]), sampler.peaks
    # Far below the file's 100 MiB: an agent (~30 MiB) and a few transfer windows of 4 MiB.
    assert max(sampler.peaks.values()) < 80 << 10, sampler.peaks


def test_a_via_through_a_become_account(chain, tmp_path):
    """mitogen_via=root@hop1, logged in as ferrotest: hop1's transport to host 2 runs as root
    there, sudo answered with the become password from the inventory."""
    path = tmp_path / "inv.ini"
    h1, h2, _ = chain.hosts
    path.write_text(f"""
[hops]
hop1 ansible_host={h1} ansible_user=ferrotest ansible_become_method=sudo ansible_become_password=testpass
[finals]
app1 ansible_host={h2} mitogen_via=root@hop1
{CHAIN_VARS}""")
    run = helpers.run_playbook("via_chain.yml", ferrogen=True, tmp_path=tmp_path, inventory=path,
                               extra_env=ACTION_ENV)
    assert run.returncode == 0, helpers.describe(run)
    stack = by_task(run, "the route a task takes")["app1"]["result"]["result"]
    assert [hop["method"] for hop in stack] == ["ssh", "sudo", "ssh"]
    assert stack[1]["kwargs"]["user"] == "root"
    assert "Accepted publickey for ferrotest" in chain.log(0)


def test_a_dead_intermediary_makes_its_targets_unreachable_naming_it_then_reconnects(chain, tmp_path):
    # Where app2's account (ferrotest) can read the waiter and see the marker: tmp_path is
    # root's alone.
    scripts = Path(tempfile.mkdtemp(prefix="ferrogen-dead-hop-", dir="/tmp"))
    scripts.chmod(0o755)
    try:
        dead_intermediary(chain, tmp_path, scripts)
    finally:
        shutil.rmtree(scripts, ignore_errors=True)


def dead_intermediary(chain, tmp_path: Path, scripts: Path) -> None:
    killer = scripts / "kill_hop1.sh"
    killing = scripts / "killing"
    # Every process in hop1's namespace but its sshd listener: the sessions the mux's hop uses.
    killer.write_text(
        f"touch {killing}\n"
        f"for pid in $(ip netns pids {chain.namespaces[0]}); do\n"
        f"  [ $pid = {chain.sshd[0].pid} ] || kill -9 $pid\n"
        "done\n"
    )
    playbook = tmp_path / "dead_hop.yml"
    # The namespaces share one process table: app1's task ends hop1's sessions, its own
    # connection among them, while app2's task runs through the same hop. app2's task outlasts
    # the kill however late app1's worker starts (seen 5 s late in CI under load).
    waiter = scripts / "wait_for_the_kill.sh"
    waiter.write_text(f"for i in $(seq 600); do [ -e {killing} ] && break; sleep 0.1; done\nsleep 5\n")
    waiter.chmod(0o644)
    playbook.write_text(f"""
- hosts: finals
  gather_facts: false
  tasks:
    - name: before
      command: ip -4 -o addr show
    - name: while hop1 dies
      command: "{{{{ 'sh {killer}' if inventory_hostname == 'app1' else 'sh {waiter}' }}}}"
      ignore_unreachable: true
    - name: after
      command: ip -4 -o addr show
""")
    run = helpers.run_playbook(playbook, ferrogen=True, tmp_path=tmp_path, extra_env=ACTION_ENV,
                               inventory=inventory(tmp_path / "inv.ini", chain, "hop2"))
    down = by_task(run, "while hop1 dies")
    assert set(down) == {"app1", "app2"}, helpers.describe(run)
    for result in down.values():
        assert result["unreachable"], result
        assert "hop1" in result["msg"], result
    after = by_task(run, "after")
    assert set(after) == {"app1", "app2"}, helpers.describe(run)
    for result in after.values():
        assert result["status"] == "ok" and chain.hosts[2] in result["stdout"], result
    assert chain.logins(0) == 2, chain.log(0)


# --------------------------------------------------------------------------- hop passwords

# ferropw logs in by password only (ci/setup.sh), on every namespace's sshd too: they share
# this machine's accounts and the test sshd's configuration.
HOP_PASSWORD = "ferropw-secret-31"

PASSWORD_PLAY = """
- hosts: finals
  gather_facts: false
  tasks:
    - name: addresses of the host the task ran on
      command: ip -4 -o addr show
      changed_when: false
    - name: who am i
      command: id -un
      changed_when: false
    - name: a module behind the hops
      ping:
    - name: a while, for the processes to be looked at
      command: sleep 3
      changed_when: false
"""


def run_processes(namespaces: list[str], marker: str) -> set[int]:
    """The run's processes: those of the chain's namespaces (hop agents, their ssh clients, the
    target's interpreters) and those whose environment names the run's directory
    (ansible-playbook, workers, the mux, its ssh)."""
    pids = set()
    for ns in namespaces:
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)  # noqa: S603, S607
        pids |= {int(pid) for pid in listed.stdout.split()}
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            if marker.encode() in Path(environ).read_bytes():
                pids.add(int(environ.split("/")[2]))
        except OSError:
            continue
    return pids


def test_the_last_hop_logs_in_by_password_answered_by_the_hop_before_it(chain, tmp_path):
    """hop2's agent runs app1's ssh (the mux cannot reach host 3): the password prompt is
    answered there, on a terminal that agent opens; a wrong password fails naming hop2 with
    ssh's own refusal; the password shows in no output, log, command line or environment."""
    h1, h2, h3 = chain.hosts
    path = tmp_path / "inv.ini"
    password_login = "ansible_user=ferropw ansible_ssh_private_key_file=/nonexistent"
    path.write_text(f"""
[hops]
hop1 ansible_host={h1}
hop2 ansible_host={h2} mitogen_via=hop1
[finals]
app1 ansible_host={h3} mitogen_via=hop2 {password_login} ansible_password={HOP_PASSWORD}
app_kbd ansible_host={h3} mitogen_via=hop2 {password_login} ansible_password={HOP_PASSWORD} ansible_ssh_extra_args='-o PreferredAuthentications=keyboard-interactive'
app_wrong ansible_host={h3} mitogen_via=hop2 {password_login} ansible_password=not-the-password
{CHAIN_VARS}""")
    since = time.time() - 1
    playbook = tmp_path / "password_hop.yml"
    playbook.write_text(PASSWORD_PLAY)
    with helpers.SecretWatch(HOP_PASSWORD.encode(), lambda: run_processes(chain.namespaces, str(tmp_path))) as watch:
        run = helpers.run_playbook(playbook, ferrogen=True, tmp_path=tmp_path, inventory=path,
                                   extra_args=("-vvvv",), extra_env={"MITOGEN_ROUTER_DEBUG": "1"})
    for host in ("app1", "app_kbd"):
        assert run.task(host, "who am i")["stdout"] == "ferropw", helpers.describe(run)
        assert h3 in run.task(host, "addresses of the host the task ran on")["stdout"]
    wrong = run.task("app_wrong", "addresses of the host the task ran on")
    assert wrong["unreachable"], wrong
    assert "Permission denied" in wrong["msg"] and "hop2" in wrong["msg"], wrong["msg"]
    assert "Accepted password for ferropw" in chain.log(2) or "Accepted keyboard-interactive" in chain.log(2)
    assert chain.logins(0) == 1 and chain.logins(1) == 1, (chain.log(0), chain.log(1))
    assert not watch.seen, watch.seen
    assert len(watch.looked_at) > 5, watch.looked_at
    logs = [Path(p) for p in glob.glob("/tmp/mitogen.*.log") if os.stat(p).st_mtime >= since]
    for name, text in [("output", run.output)] + [(str(p), p.read_text(errors="replace")) for p in logs]:
        assert HOP_PASSWORD not in text, f"the password appears in {name}"
        assert "not-the-password" not in text, f"the wrong password appears in {name}"
