"""The agent fixture shared by the agent's test modules."""

from __future__ import annotations

import pytest
from test_agent import AgentProcess


@pytest.fixture
def agent():
    """An agent started the way the mux starts one, closed after the test."""
    process = AgentProcess()
    yield process
    if process.proc.poll() is None:
        process.close()
