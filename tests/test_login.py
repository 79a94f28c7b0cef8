"""What a fresh login would see, and targets without Python, on test hosts of their own
(tests/isolated_host.py): each result is compared with vanilla Ansible's on the same kind of host.

Vanilla runs without ControlPersist here: every task then gets a new ssh session, which is what
a fresh login means (with a persistent ssh master, vanilla too keeps what its session saw)."""

from __future__ import annotations

import pytest

import helpers
from isolated_host import INSTALL_PYTHON, IsolatedHost, TinyDns

# Vanilla at its freshest: a new ssh session (and PAM session) for every task.
FRESH_SESSIONS = {"ANSIBLE_SSH_ARGS": "-o ControlMaster=no"}

INITIAL_ENVIRONMENT = "FERRO_ENV_CHANGED=before\nFERRO_ENV_REMOVED=gone\n"
INITIAL_PAM_ENVIRONMENT = "FERRO_PAM_CHANGED DEFAULT=before\nFERRO_PAM_REMOVED DEFAULT=gone\n"

# Two name servers on loopback addresses of this issue's own (the machine's resolver is not
# involved: only the isolated host's resolv.conf names them), giving one name two addresses.
DNS_NAME = "ferro-resolver-test.example"
DNS_SERVERS = {"127.53.21.1": "10.21.0.1", "127.53.21.2": "10.21.0.2"}


@pytest.fixture
def isolated_host(tmp_path):
    hosts = []

    def start(**kwargs) -> IsolatedHost:
        host = IsolatedHost(tmp_path / f"host{len(hosts)}", **kwargs)
        hosts.append(host)
        return host.start()

    yield start
    for host in hosts:
        host.stop()


def outcome(result: dict) -> dict:
    """What a playbook sees of a task result (terminal line ends aside)."""
    seen = {key: result.get(key) for key in ("failed", "unreachable", "rc", "msg", "skipped")}
    for key in ("stdout", "stderr"):
        seen[key] = (result.get(key) or "").replace("\r\n", "\n")
    inner = result.get("result") or {}
    for key in ("module_stdout", "module_stderr"):
        if key in inner:
            seen[key] = inner[key].replace("\r\n", "\n")
    return seen


def run_on(host: IsolatedHost, playbook: str, tmp_path, *, ferrogen: bool, fresh_sessions: bool = True,
           extra_args=()) -> helpers.PlaybookRun:
    """The playbook on the host; vanilla with a new ssh session per task where fresh_sessions."""
    inventory = host.inventory(tmp_path / f"inventory-{ferrogen}.ini", ["isolated"])
    return helpers.run_playbook(
        playbook,
        ferrogen=ferrogen,
        tmp_path=tmp_path / f"run-{ferrogen}",
        inventory=inventory,
        extra_env=FRESH_SESSIONS if fresh_sessions and not ferrogen else None,
        extra_args=extra_args,
    )


def env_lines(run: helpers.PlaybookRun, task: str) -> list[str]:
    return outcome(run.task("isolated", task))["stdout"].split()


def test_pam_env_changes_show_as_in_a_fresh_login(isolated_host, tmp_path):
    """A play adds, changes and removes variables in /etc/environment and ~/.pam_environment;
    later tasks (as root, raw, through su and sudo) see what vanilla's fresh sessions see; so do
    root's groups after a task added it to one."""
    host = isolated_host()
    runs = {}
    for ferrogen in (True, False):
        (host.etc / "environment").write_text(INITIAL_ENVIRONMENT)
        (host.root / ".pam_environment").write_text(INITIAL_PAM_ENVIRONMENT)
        runs[ferrogen] = run = run_on(host, "login_environment.yml", tmp_path, ferrogen=ferrogen)
        assert run.returncode == 0, helpers.describe(run)
    tasks = [r["task"] for r in runs[False].results if r["task"].startswith(("before", "after"))]
    assert len(tasks) == 8, tasks
    for task in tasks:
        assert env_lines(runs[True], task) == env_lines(runs[False], task), task
    # The comparison means something: vanilla's fresh logins do see the changes.
    assert env_lines(runs[False], "before as root") == [
        "FERRO_ENV_CHANGED=before", "FERRO_ENV_REMOVED=gone", "FERRO_PAM_CHANGED=before", "FERRO_PAM_REMOVED=gone"]
    after = env_lines(runs[False], "after as root")
    assert "FERRO_ENV_ADDED=new" in after and "FERRO_ENV_CHANGED=after" in after, after
    assert not any(line.startswith(("FERRO_ENV_REMOVED", "FERRO_PAM_REMOVED")) for line in after), after
    assert "FERRO_PAM_ADDED=new" in after and "FERRO_PAM_CHANGED=after" in after, after
    assert "FERRO_ENV_ADDED=from the task" in outcome(runs[True].task("isolated", "after as root, task environment"))[
        "stdout"]
    assert "FERRO_ENV_ADDED=new" in env_lines(runs[False], "after through su")
    # A root login's next session has the group a task added it to (the first run made it).
    assert env_lines(runs[True], "groups before") == ["root"]
    assert env_lines(runs[True], "groups after") == env_lines(runs[False], "groups after") == [
        "root", "ferro_login_group"]


def test_raw_installs_python_then_the_agent_runs_the_rest(isolated_host, tmp_path):
    """No Python on the host: raw, script and failing modules behave as vanilla's; once a raw
    task gives the host a Python, the following tasks run through the agent, in the same run."""
    host = isolated_host(python=False)
    run = run_on(host, "no_python.yml", tmp_path, ferrogen=True, extra_args=("-e", f"install_python='{INSTALL_PYTHON}'"))
    assert run.returncode == 0, helpers.describe(run)
    assert outcome(run.task("isolated", "raw"))["rc"] == 3
    assert run.task("isolated", "setup")["failed"] is False, helpers.describe(run)
    assert run.task("isolated", "copy")["changed"] is True, helpers.describe(run)
    assert (host.root / "no_python_copy.txt").read_text() == "written by the agent\n"
    loop = run.task("isolated", "loop")["result"]["results"]
    assert [item["stdout"].split()[0] for item in loop] == ["a", "b", "c"]
    # Each item's module ran in a child of the persistent interpreter, not of an ssh session's shell.
    assert all(item["stdout"].split()[1].startswith("python") for item in loop), loop


def test_without_python_results_are_vanillas(isolated_host, tmp_path):
    """Never a Python: raw and script give vanilla's results; modules fail with vanilla's message."""
    host = isolated_host(python=False)
    # Vanilla at its defaults (ControlPersist), as the plain ssh of a ferrogen task runs.
    runs = {ferrogen: run_on(host, "no_python.yml", tmp_path, ferrogen=ferrogen, fresh_sessions=False)
            for ferrogen in (True, False)}
    for task in ("raw", "raw through sudo", "script", "module", "wait_for_connection"):
        ours, vanilla = outcome(runs[True].task("isolated", task)), outcome(runs[False].task("isolated", task))
        if task == "wait_for_connection":
            # The message names how long it waited.
            ours["msg"], vanilla["msg"] = ours["msg"].split(" after ")[0], vanilla["msg"].split(" after ")[0]
        assert ours == vanilla, (task, helpers.describe(runs[True]))
    assert outcome(runs[False].task("isolated", "module"))["rc"] == 127
    assert outcome(runs[False].task("isolated", "raw through sudo"))["stdout"].strip() == "ferrotest"


def test_resolv_conf_changes_reach_the_next_task(isolated_host, tmp_path):
    """A play points /etc/resolv.conf at another name server; the next task resolves through it,
    as vanilla's does."""
    servers = [TinyDns(listen, DNS_NAME, address) for listen, address in DNS_SERVERS.items()]
    try:
        host = isolated_host()
        first, second = DNS_SERVERS
        runs = {}
        for ferrogen in (True, False):
            (host.etc / "resolv.conf").write_text(f"nameserver {first}\n")
            runs[ferrogen] = run = run_on(host, "resolver.yml", tmp_path, ferrogen=ferrogen, extra_args=(
                "-e", f"dns_name={DNS_NAME}", "-e", f"second_server={second}"))
            assert run.returncode == 0, helpers.describe(run)
    finally:
        for server in servers:
            server.close()
    for ferrogen, run in runs.items():
        addresses = [run.task("isolated", task)["result"]["address"] for task in ("resolve before", "resolve after")]
        assert addresses == [DNS_SERVERS[first], DNS_SERVERS[second]], (ferrogen, addresses)
