"""mitogen_get_stack without configuration (issue 17): as ferrogen.mux.mitogen_get_stack in
strategy mode and in connection-only mode, with no action_plugins set; by its short name in
tasks Ansible parses after a ferrogen strategy started (dynamic includes). The short name in a
playbook's own tasks cannot resolve without action_plugins: Ansible resolves every task's
action when it parses the playbook, before it loads any strategy or connection plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers
from helpers import REPO, describe, ssh_host_line, write_inventory

pytestmark = pytest.mark.mux_only

STACK_TASK = """
    - name: the route a task takes
      {action}:
      register: stack
"""


def playbook(path: Path, tasks: str) -> Path:
    path.write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    return path


def collection_env(**extra: str) -> dict[str, str]:
    """The collection from this checkout, as an installed package puts it on the collections
    path; no action plugin path."""
    return {"ANSIBLE_COLLECTIONS_PATH": str(REPO / "plugin"), **extra}


def the_stack(run, host: str = "h1") -> list[dict]:
    return run.task(host, "the route a task takes")["result"]["result"]


def test_the_fqcn_in_strategy_mode(tmp_path):
    inv = write_inventory(tmp_path / "inv.ini", [ssh_host_line("h1")])
    run = helpers.run_playbook(playbook(tmp_path / "p.yml", STACK_TASK.format(action="ferrogen.mux.mitogen_get_stack")),
                               ferrogen=True, tmp_path=tmp_path, inventory=inv, extra_env=collection_env())
    assert run.returncode == 0, describe(run)
    stack = the_stack(run)
    assert [hop["method"] for hop in stack] == ["ssh"]
    assert stack[0]["kwargs"]["user"] == "root"


def test_the_fqcn_in_connection_only_mode(tmp_path):
    no_strategies = tmp_path / "no-strategy-plugins"
    no_strategies.mkdir()
    env = collection_env(ANSIBLE_STRATEGY="linear", ANSIBLE_STRATEGY_PLUGINS=str(no_strategies),
                         ANSIBLE_TRANSPORT="ferrogen.mux.ssh")
    inv = write_inventory(tmp_path / "inv.ini", [ssh_host_line("h1", user="ferrotest")])
    run = helpers.run_playbook(playbook(tmp_path / "p.yml", STACK_TASK.format(action="ferrogen.mux.mitogen_get_stack")),
                               ferrogen=True, tmp_path=tmp_path, inventory=inv, extra_env=env)
    assert run.returncode == 0, describe(run)
    stack = the_stack(run)
    assert [hop["method"] for hop in stack] == ["ssh"]
    assert stack[0]["kwargs"]["user"] == "ferrotest"


def test_the_short_name_in_tasks_parsed_after_the_strategy_started(tmp_path):
    (tmp_path / "stack.yml").write_text(STACK_TASK.format(action="mitogen_get_stack").replace("\n    ", "\n"))
    tasks = "    - include_tasks: stack.yml\n"
    inv = write_inventory(tmp_path / "inv.ini", [ssh_host_line("h1")])
    run = helpers.run_playbook(playbook(tmp_path / "p.yml", tasks), ferrogen=True, tmp_path=tmp_path,
                               inventory=inv)
    assert run.returncode == 0, describe(run)
    assert [hop["method"] for hop in the_stack(run)] == ["ssh"]


def test_the_short_name_in_the_playbook_itself_needs_action_plugins(tmp_path):
    """What the user guide says: Ansible cannot resolve it at parse time, and says so."""
    inv = write_inventory(tmp_path / "inv.ini", [ssh_host_line("h1")])
    run = helpers.run_playbook(playbook(tmp_path / "p.yml", STACK_TASK.format(action="mitogen_get_stack")),
                               ferrogen=True, tmp_path=tmp_path, inventory=inv)
    assert run.returncode != 0
    assert "couldn't resolve module/action 'mitogen_get_stack'" in run.output, describe(run)


def test_the_short_name_in_a_play_that_names_the_collection(tmp_path):
    inv = write_inventory(tmp_path / "inv.ini", [ssh_host_line("h1")])
    path = tmp_path / "p.yml"
    path.write_text("- hosts: all\n  gather_facts: false\n  collections: [ferrogen.mux]\n  tasks:\n"
                    + STACK_TASK.format(action="mitogen_get_stack"))
    run = helpers.run_playbook(path, ferrogen=True, tmp_path=tmp_path, inventory=inv, extra_env=collection_env())
    assert run.returncode == 0, describe(run)
    assert [hop["method"] for hop in the_stack(run)] == ["ssh"]
