"""Issue 19: the wheel. Built with maturin from this checkout (reusing target/), installed into a
fresh virtualenv that has only ansible-core, it runs playbooks through the mux with README's
ansible.cfg lines in both modes (nothing of the checkout on the path, no FERROGEN_MUX), and
ansible-doc shows the collection's documentation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, SSH_KEY, SSH_PORT, VENV, write_inventory

pytestmark = pytest.mark.mux_only

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
    - name: command
      ansible.builtin.command: echo through the mux
    - name: copy
      ansible.builtin.copy:
        content: "installed\\n"
        dest: "{{ dest }}"
        mode: "0644"
"""


def pinned_ansible_core() -> str:
    """The ansible-core requirement CI pins (ci/requirements.txt)."""
    for line in (REPO / "ci" / "requirements.txt").read_text().splitlines():
        if re.match(r"ansible-core\s*==", line):
            return line.split("#", 1)[0].strip()
    raise AssertionError("ci/requirements.txt pins no ansible-core")


def clean_env(home: Path) -> dict[str, str]:
    """An environment with nothing of the checkout or of the test harness in it."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "ANSIBLE_NOCOLOR": "1"}


def base_python() -> str:
    """The Python the test virtualenv was made with: one the pinned ansible-core supports."""
    for line in (VENV / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "executable":
            return value.strip()
    return sys.executable


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with ansible-core from the registry and the wheel built from here."""
    wheels = tmp_path_factory.mktemp("wheels")
    build_env = dict(os.environ, CARGO_TARGET_DIR=str(REPO / "target"),
                     PATH=f"/root/.cargo/bin:{os.environ.get('PATH', '')}")  # fmt: skip
    build = subprocess.run([str(VENV / "bin" / "maturin"), "build", "--release", "--out", str(wheels)],
                           cwd=REPO, env=build_env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("ferrogen-*.whl")
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, timeout=300)
    for requirement in (pinned_ansible_core(), str(wheel)):
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", requirement],
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv


def config_lines(venv: Path, mode: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "ansible_ferrogen", "config", mode],
                         capture_output=True, text=True, check=True, env=clean_env(venv), cwd=venv)  # fmt: skip
    return out.stdout


@pytest.mark.parametrize("mode", ["connection", "strategy"])
def test_the_installed_wheel_runs_a_playbook_through_the_mux(installed, tmp_path, mode):
    cfg = config_lines(installed, mode)
    settings = [line for line in cfg.splitlines() if line and not line.startswith("#")]
    assert settings[0] == "[defaults]" and len(settings) == {"connection": 3, "strategy": 2}[mode], cfg
    readme = (REPO / "README.md").read_text()
    assert "\n".join(settings) in readme, f"README lacks the {mode} lines:\n{cfg}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "ansible.cfg").write_text(cfg)
    (work / "play.yml").write_text(PLAYBOOK)
    key = tmp_path / "id_ed25519"  # the checkout's own path may not show up anywhere
    shutil.copy(SSH_KEY, key)
    key.chmod(0o600)
    write_inventory(work / "inventory.ini", [
        f"sshroot ansible_host=127.0.0.1 ansible_port={SSH_PORT} ansible_user=root "
        f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3"
    ])  # fmt: skip
    dest = tmp_path / "copied.txt"
    run = subprocess.run(
        [str(installed / "bin" / "ansible-playbook"), "-i", "inventory.ini", "play.yml", "-vvv", "-e", f"dest={dest}"],
        cwd=work, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "ferrogen: run ansible.modules.ping in the persistent interpreter" in output, output
    assert dest.read_text() == "installed\n"
    # The mux that served the run is the one the wheel installed.
    served = re.findall(r"ferrogen: (?:started )?mux (\S+) pid \d+", output)
    assert served == [str(installed / "bin" / "ferrogen-mux")], output
    assert str(REPO) not in output, output
    if mode == "connection":
        assert "DEPRECATION" not in output, output


def test_ansible_doc_shows_the_collections_connection(installed, tmp_path):
    doc = subprocess.run([str(installed / "bin" / "ansible-doc"), "-t", "connection", "ferrogen.mux.ssh"],
                         capture_output=True, text=True, env=clean_env(tmp_path), cwd=tmp_path, timeout=120)  # fmt: skip
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "ferrogen.mux.ssh" in doc.stdout and "ERROR" not in doc.stdout + doc.stderr, doc.stdout + doc.stderr
    # ansible.builtin.ssh's options, and ours.
    for option in ("host_key_checking", "ssh_extra_args", "python_interpreter"):
        assert option in doc.stdout, doc.stdout
    assert str(installed / "lib") in doc.stdout, doc.stdout


def test_ansible_doc_shows_the_preload_callback(installed, tmp_path):
    doc = subprocess.run([str(installed / "bin" / "ansible-doc"), "-t", "callback", "ferrogen.mux.preload"],
                         capture_output=True, text=True, env=clean_env(tmp_path), cwd=tmp_path, timeout=120)  # fmt: skip
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "ferrogen.mux.preload" in doc.stdout and "callbacks_enabled" in doc.stdout, doc.stdout + doc.stderr
