"""A connection-only worker installs the copy action's patches only for a task that copies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ansible_ferrogen import connection_only, speculation


def action(task_action, resolved=None):
    return SimpleNamespace(_task=SimpleNamespace(action=task_action, resolved_action=resolved))


@pytest.mark.parametrize(('task_action', 'resolved', 'installs'), [
    ('copy', 'ansible.builtin.copy', True),
    ('ansible.builtin.template', 'ansible.builtin.template', True),
    ('ansible.legacy.copy', None, True),
    ('command', 'ansible.builtin.command', False),
    ('ansible.posix.synchronize', 'ansible.posix.synchronize', False),
])
def test_the_copy_patches_are_installed_for_a_task_that_copies_only(monkeypatch, task_action, resolved, installs):
    installed = []
    monkeypatch.setattr(speculation, '_installed', False)
    monkeypatch.setattr(speculation, 'install', lambda: installed.append(True))
    connection_only.install_speculation_for(action(task_action, resolved))
    assert installed == ([True] if installs else [])


def test_nothing_more_is_installed_once_installed(monkeypatch):
    monkeypatch.setattr(speculation, '_installed', True)
    monkeypatch.setattr(speculation, 'install', lambda: pytest.fail('installed twice'))
    connection_only.install_speculation_for(action('copy'))
