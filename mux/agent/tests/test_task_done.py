"""How the agent answers a module task that says it is done before it exits."""

from __future__ import annotations

import types

import ferrogen_agent

agent_module = ferrogen_agent.load()


def test_a_task_reaped_in_the_same_round_of_events_is_not_answered_twice():
    """reap() answers a task whose process it reaped and closes its done pipe; the done event
    from the same select() must then do nothing."""
    answered = []
    agent = types.SimpleNamespace(tasks={}, answered_pids=set(),
                                  task_ended=lambda task, rc: answered.append((task, rc)))
    task = types.SimpleNamespace(pid=12345, done_fd=None)
    agent_module.Agent.on_task_done(agent, task)
    assert answered == [] and agent.answered_pids == set()
