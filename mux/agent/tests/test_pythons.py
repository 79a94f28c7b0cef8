"""The agent runs on every Python the machine has from its stated minimum on (mux/src/bootstrap.rs,
AGENT_MIN_PYTHON): it boots, runs a command and writes a file."""

from __future__ import annotations

import pytest
from helpers import agent_min_python, machine_pythons
from test_agent import AgentProcess

PYTHONS = sorted(path for path, version in machine_pythons().items() if version >= agent_min_python())


def test_the_machine_has_the_oldest_python_the_agent_supports():
    assert any(version == agent_min_python() for version in machine_pythons().values()), machine_pythons()


@pytest.mark.parametrize("python", PYTHONS)
def test_agent_boots_runs_and_writes_on(python, tmp_path):
    agent = AgentProcess(python=python)
    try:
        assert agent.ready["type"] == "ready"
        header, body = agent.call("exec_command", {"cmd": "echo hi"})
        assert (header["result"]["rc"], body) == (0, b"hi\n")
        header, _ = agent.call("put_file", {"path": str(tmp_path / "written")}, b"data")
        assert header["ok"] and (tmp_path / "written").read_bytes() == b"data"
    finally:
        agent.close()
