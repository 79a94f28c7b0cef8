"""Issue 17: the container connection types. `docker` (and setns with mitogen_kind=docker)
against real containers of the image ci/setup.sh builds (ci/target-image.sh); every type whose
tool cannot run here against a stub tool (tests/tools/container_stub.py) that checks the exact
command line ferrogen builds from the spec's variables, then starts the agent locally.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from helpers import REPO, TESTS, describe, run_playbook, ssh_host_line

# The image ci/target-image.sh builds (its default tag: one source for the name).
IMAGE = re.search(r"TAG=\$\{2:-([^}]+)\}", (REPO / "ci" / "target-image.sh").read_text()).group(1)
STUB = TESTS / "tools" / "container_stub.py"


def docker_missing() -> str | None:
    """Why the real-container tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on this machine"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no running Docker Engine on this machine"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode != 0:
        return f"image {IMAGE} missing: ci/setup.sh builds it (ci/target-image.sh)"
    return None


@pytest.fixture
def container():
    """A running container of the target image, removed afterwards."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    name = f"ferrogen-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["docker", "run", "-d", "--name", name, IMAGE], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


@pytest.fixture
def podman_container():
    """A running podman container of the target image (built on first use), removed afterwards;
    skipped where podman is absent (ci/setup.sh installs it where a Docker Engine runs) or cannot
    start containers."""
    if shutil.which("podman") is None:
        pytest.skip("no podman on this machine (ci/setup.sh installs it only where a Docker Engine runs)")
    built = subprocess.run(["bash", str(REPO / "ci" / "target-image.sh"), "podman", IMAGE],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"podman cannot build the target image here: {built.stderr.strip()[-300:]}")
    name = f"ferrogen-test-{uuid.uuid4().hex[:10]}"
    # podman asks runc to raise the container's open-files and process limits to its defaults,
    # which a sandbox that caps hard limits refuses ("error setting rlimit type 7"); lower
    # limits are always allowed.
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    started = subprocess.run(["podman", "run", "-d", *limits, "--name", name, f"localhost/{IMAGE}"],
                             capture_output=True, text=True, check=False)  # fmt: skip
    try:
        if started.returncode != 0:
            pytest.skip(f"podman cannot start containers here: {started.stderr.strip()[-300:]}")
        yield name
    finally:
        subprocess.run(["podman", "rm", "-f", name], check=False, capture_output=True)


def container_inventory(tmp_path: Path, hosts: list[str]) -> Path:
    path = tmp_path / "containers.ini"
    path.write_text("\n".join([
        "[containers]",
        *hosts,
        "",
        "[containers:vars]",
        "ansible_python_interpreter=/usr/bin/python3",
        f"fetch_dir={tmp_path / 'fetched'}",
        "",
    ]))  # fmt: skip
    return path


def assert_container_results(run, host: str, login: str, tmp_path: Path, loop_items: int = 100) -> None:
    """What tests/playbooks/containers.yml must give on `host`, logged in as `login`."""
    assert run.returncode == 0, describe(run)
    assert run.task(host, "login account")["stdout"] == login
    assert run.task(host, "sudo to root")["stdout"] == "root"
    assert run.task(host, "sudo to other")["stdout"] == "other"
    assert run.task(host, "read back as root")["stdout"] == "root's"
    assert run.task(host, "stat copied")["result"]["stat"]["size"] == len(f"hello from {host}\n")
    loop = run.task(host, "loop")["result"]["results"]
    assert [item["stdout"] for item in loop] == [f"item-{n}" for n in range(loop_items)]
    fetched = list((tmp_path / "fetched" / host).rglob("rendered.txt"))
    assert len(fetched) == 1, fetched
    shown = "the default account" if login == "root" else login
    assert fetched[0].read_text() == f"rendered for {host} as {shown}\n"


def test_docker_container_with_become_transfers_and_a_loop(container, tmp_path):
    """`docker` under the mitogen strategy (redirected to mitogen_docker, as Mitogen does) with
    the container's default account and with ansible_user: become to root and to another
    account inside, copy, fetch, template, 100 items."""
    inventory = container_inventory(tmp_path, [
        f"docker_root ansible_connection=docker ansible_host={container}",
        f"docker_app ansible_connection=docker ansible_host={container} ansible_user=app",
    ])  # fmt: skip
    run = run_playbook("containers.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory)
    assert_container_results(run, "docker_root", "root", tmp_path)
    assert_container_results(run, "docker_app", "app", tmp_path)
    # The agent really ran in the container: the file copied as root is in it.
    listing = subprocess.run(["docker", "exec", container, "ls", "/root"], capture_output=True, text=True, check=True)
    assert any(name.startswith("ferrogen-") for name in listing.stdout.split()), listing.stdout
    # And it went with the run: nothing but the container's own process is left inside.
    for _ in range(50):
        top = subprocess.run(["docker", "top", container, "-o", "pid,args"], capture_output=True, text=True, check=True)
        left = [line for line in top.stdout.splitlines()[1:] if "sleep infinity" not in line]
        if not left:
            break
        time.sleep(0.1)
    assert not left, top.stdout


def test_docker_container_delegated_via_its_host_machine(container, tmp_path):
    """The spec's first delegation example: a container reached with `docker` run on its host
    machine, which is reached by ssh (mitogen_via); become inside, copy, fetch, template and the
    loop as directly. The docker client is started by the hop's agent, not by the mux."""
    inventory = container_inventory(tmp_path, [
        f"docker_app ansible_connection=docker ansible_host={container} ansible_user=app mitogen_via=dockerhost",
        "",
        "[hosts]",
        ssh_host_line("dockerhost"),
    ])  # fmt: skip
    run = run_playbook("containers.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory, limit="containers")
    assert_container_results(run, "docker_app", "app", tmp_path)


def test_podman_container_with_become_transfers_and_a_loop(podman_container, tmp_path):
    """`podman` as `docker` above, where podman runs."""
    inventory = container_inventory(tmp_path, [
        f"podman_app ansible_connection=podman ansible_host={podman_container} ansible_user=app",
    ])  # fmt: skip
    run = run_playbook("containers.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory)
    assert_container_results(run, "podman_app", "app", tmp_path)


def test_vanilla_docker_plugin_gives_the_same_results(container, tmp_path):
    """Where community.docker is installed, vanilla's docker plugin gives what ferrogen gives."""
    listed = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-doc"), "-t", "connection", "-l", "community.docker"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if "community.docker.docker" not in listed.stdout:
        pytest.skip("community.docker is not installed: no vanilla docker plugin to compare with")
    runs = {}
    for ferrogen in (True, False):
        directory = tmp_path / ("ferrogen" if ferrogen else "vanilla")
        directory.mkdir()
        inventory = container_inventory(directory, [
            f"docker_app ansible_connection=community.docker.docker ansible_host={container} ansible_user=app",
        ])  # fmt: skip
        # Vanilla's docker plugin starts a docker exec per item: a short loop is enough to compare.
        runs[ferrogen] = run_playbook("containers.yml", ferrogen=ferrogen, tmp_path=directory, inventory=inventory,
                                      extra_args=["-e", "loop_items=5"])
        assert_container_results(runs[ferrogen], "docker_app", "app", directory, loop_items=5)
    for task in ("login account", "sudo to root", "sudo to other", "read back as root"):
        assert runs[True].task("docker_app", task)["stdout"] == runs[False].task("docker_app", task)["stdout"]


def test_collection_docker_under_ansibles_own_strategy(container, tmp_path):
    """ferrogen.mux.docker in connection-only mode, with mitogen_docker_path and
    ansible_docker_extra_args."""
    docker = shutil.which("docker")
    inventory = container_inventory(tmp_path, [
        f"docker_app ansible_connection=ferrogen.mux.docker ansible_host={container} ansible_user=app "
        f"mitogen_docker_path={docker} ansible_docker_extra_args='--log-level error'",
    ])  # fmt: skip
    no_strategies = tmp_path / "no-strategy-plugins"
    no_strategies.mkdir()
    run = run_playbook("containers.yml", ferrogen=False, tmp_path=tmp_path, inventory=inventory, extra_env={
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_STRATEGY_PLUGINS": str(no_strategies),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / "plugin"),
    })  # fmt: skip
    assert_container_results(run, "docker_app", "app", tmp_path)


def test_setns_enters_a_docker_containers_namespaces(container, tmp_path):
    """setns with mitogen_kind=docker: docker only names the container's process; nsenter
    enters it, as ansible_user inside."""
    if shutil.which("nsenter") is None:
        pytest.skip("no nsenter on this machine")
    inventory = container_inventory(tmp_path, [
        f"setns_app ansible_connection=setns mitogen_kind=docker ansible_host={container} ansible_user=app",
    ])  # fmt: skip
    run = run_playbook("containers.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory)
    assert_container_results(run, "setns_app", "app", tmp_path)


def test_a_stopped_container_is_unreachable_with_dockers_message(container, tmp_path):
    subprocess.run(["docker", "stop", "-t", "0", container], check=True, capture_output=True)
    inventory = container_inventory(tmp_path, [f"gone ansible_connection=docker ansible_host={container}"])
    run = run_playbook("containers.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory)
    first = run.task("gone", "login account")
    assert first["unreachable"], describe(run)
    assert "is not running" in first["msg"], first["msg"]


def install_stub(tmp_path: Path, name: str, expected: list[str], mode: str = "exec", printed: str = "{pid}") -> Path:
    """The stub tool at tmp_path/bin/name, expecting `expected`."""
    tool = tmp_path / "bin" / name
    tool.parent.mkdir(exist_ok=True)
    shutil.copy(STUB, tool)
    Path(f"{tool}.json").write_text(json.dumps({"expected": expected, "mode": mode, "print": printed}))
    return tool


# (test id, tool name, inventory variables with {tool}, expected arguments, stub mode, pid line)
STUBBED = [
    ("lxc", "lxc-attach", "ansible_connection=lxc ansible_host=web1 mitogen_lxc_attach_path={tool}",
     ["--clear-env", "--name", "web1", "--"], "exec", None),
    ("lxd", "lxc", "ansible_connection=lxd ansible_host=web1 mitogen_lxc_path={tool}",
     ["exec", "--mode=noninteractive", "web1", "--"], "exec", None),
    ("incus", "incus", "ansible_connection=mitogen_incus ansible_host=web1 mitogen_incus_path={tool}",
     ["exec", "--mode=non-interactive", "web1", "--"], "exec", None),
    ("kubectl", "kubectl",
     "ansible_connection=kubectl ansible_host=pod1 mitogen_kubectl_path={tool} ansible_kubectl_namespace=web "
     "ansible_kubectl_context=prod ansible_kubectl_container=app ansible_kubectl_extra_args='--request-timeout=5s'",
     ["-n", "web", "--context", "prod", "--request-timeout=5s", "exec", "-i", "pod1", "-c", "app", "--"], "exec", None),
    ("jail", "jexec", "ansible_connection=jail ansible_host=web1 ansible_user=www mitogen_jexec_path={tool}",
     ["-U", "www", "web1"], "exec", None),
    ("buildah", "buildah", "ansible_connection=buildah ansible_host=wc1 ansible_user=app mitogen_buildah_path={tool}",
     ["run", "--user=app", "--", "wc1"], "exec", None),
    ("podman", "podman",
     "ansible_connection=podman ansible_host=web1 ansible_user=app ansible_podman_executable={tool} "
     "ansible_podman_extra_args='--log-level=error'",
     ["--log-level=error", "exec", "--user=app", "--interactive", "--", "web1"], "exec", None),
    ("mitogen_docker", "docker",
     "ansible_connection=mitogen_docker ansible_host=web1 mitogen_docker_path={tool} "
     "ansible_docker_extra_args='--host unix:///run/other.sock'",
     ["--host", "unix:///run/other.sock", "exec", "--interactive", "web1"], "exec", None),
    ("machinectl", "machinectl", "ansible_connection=machinectl ansible_host=vm1 mitogen_machinectl_path={tool}",
     ["show", "--property=Leader", "--value", "vm1"], "pid", "{pid}"),
    ("setns-lxc", "lxc-info",
     "ansible_connection=setns mitogen_kind=lxc ansible_host=web1 mitogen_lxc_info_path={tool} ansible_user=ferrotest",
     ["-n", "web1", "-p", "-H"], "pid", "{pid}"),
    ("setns-lxd", "lxc", "ansible_connection=mitogen_setns mitogen_kind=lxd ansible_host=web1 mitogen_lxc_path={tool}",
     ["info", "web1"], "pid", "Name: web1\nStatus: RUNNING\nPID: {pid}"),
]  # fmt: skip


@pytest.mark.parametrize(("tool_name", "variables", "expected", "mode", "printed"),
                         [case[1:] for case in STUBBED], ids=[case[0] for case in STUBBED])
def test_stubbed_tool_gets_the_exact_command_line(tmp_path, tool_name, variables, expected, mode, printed):
    """The types whose tool cannot run here: the stub checks the arguments ferrogen passes for
    the spec's variables and starts the agent; a command and a copy then run through it."""
    if mode == "pid" and shutil.which("nsenter") is None:
        pytest.skip("no nsenter on this machine")
    tool = install_stub(tmp_path, tool_name, expected, mode, printed or "{pid}")
    # Under /tmp: the setns case runs the agent as another account, which may write there.
    dest = Path(f"/tmp/ferrogen-stub-{uuid.uuid4().hex[:10]}.txt")
    inventory = tmp_path / "stubbed.ini"
    inventory.write_text(
        f"[stubbed]\nt1 {variables.format(tool=tool)}\n\n[stubbed:vars]\n"
        f"ansible_python_interpreter=/usr/bin/python3\ndest={dest}\n"
    )
    try:
        run = run_playbook("container_stub.yml", ferrogen=True, tmp_path=tmp_path, inventory=inventory)
        assert run.returncode == 0, describe(run)
        assert run.task("t1", "command")["stdout"] == "through-the-stub"
        assert dest.read_text() == "stubbed\n"
    finally:
        dest.unlink(missing_ok=True)
    calls = [json.loads(line) for line in Path(f"{tool}.calls").read_text().splitlines()]
    assert calls, "the stub never ran"
    assert all(call[:len(expected)] == expected for call in calls), calls


def test_a_docker_container_as_an_intermediary(container, tmp_path):
    """mitogen_via through a docker-connection host: the container's agent starts the next
    hop's transport inside the container (here a local one: a second interpreter there) and
    relays it; directly, and with an ssh hop before the container (ssh -> docker -> local)."""
    inventory = container_inventory(tmp_path, [
        "behind ansible_connection=local mitogen_via=ctr",
        "deeper ansible_connection=local mitogen_via=ctr_by_ssh",
        "",
        "[hops]",
        f"ctr ansible_connection=docker ansible_host={container} ansible_python_interpreter=/usr/bin/python3",
        # The same container reached through an ssh hop first: ssh -> docker -> local.
        f"ctr_by_ssh ansible_connection=docker ansible_host={container} mitogen_via=dockerhost",
        ssh_host_line("dockerhost"),
    ])  # fmt: skip
    playbook = tmp_path / "behind.yml"
    playbook.write_text("""
- hosts: containers
  gather_facts: false
  tasks:
    - name: where the task ran
      command: cat /etc/hostname
      changed_when: false
    - name: a docker marker
      stat:
        path: /.dockerenv
    - name: a loop in it
      command: echo item-{{ item }}
      loop: "{{ range(20) | list }}"
      changed_when: false
    - name: the route a task takes
      ferrogen.mux.mitogen_get_stack:
""")
    run = run_playbook(playbook, ferrogen=True, tmp_path=tmp_path, inventory=inventory,
                       extra_env={"ANSIBLE_COLLECTIONS_PATH": str(REPO / "plugin")})
    assert run.returncode == 0, describe(run)
    container_id = subprocess.run(["docker", "inspect", "-f", "{{.Config.Hostname}}", container],
                                  capture_output=True, text=True, check=True).stdout.strip()
    for host, route in (("behind", ["docker", "local"]), ("deeper", ["ssh", "docker", "local"])):
        assert run.task(host, "where the task ran")["stdout"] == container_id
        assert run.task(host, "a docker marker")["result"]["stat"]["exists"]
        assert [i["stdout"] for i in run.task(host, "a loop in it")["result"]["results"]] == [
            f"item-{n}" for n in range(20)]
        stack = run.task(host, "the route a task takes")["result"]["result"]
        assert [hop["method"] for hop in stack] == route, stack
