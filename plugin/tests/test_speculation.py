"""The copy action's module payloads are built once, whether captured ahead or asked for."""

from __future__ import annotations

from types import SimpleNamespace

from ansible_ferrogen.speculation import configure_module


class Builder:
    """Stands in for ActionBase._configure_module: counts builds, returns a fresh object each."""

    def __init__(self):
        self.builds = 0

    def __call__(self, action, module_name, module_args, task_vars):
        self.builds += 1
        return object(), f'/modules/{module_name}.py'


def action(builds):
    return SimpleNamespace(_ferrogen_builds=builds, _connection=SimpleNamespace(_capturing=False))


def test_a_captured_build_is_handed_to_the_same_call_once():
    builder = Builder()
    configure = configure_module(builder)
    copy = action({})
    copy._connection._capturing = True
    captured = configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {})
    copy._connection._capturing = False
    assert configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {}) is captured
    assert builder.builds == 1
    # Asked again, or with other arguments, it is built afresh.
    assert configure(copy, 'ansible.legacy.stat', {'path': '/x'}, {}) is not captured
    configure(copy, 'ansible.legacy.stat', {'path': '/y'}, {})
    assert builder.builds == 3


def test_nothing_is_kept_outside_a_prepared_copy_or_for_arguments_json_cannot_tell_apart():
    builder = Builder()
    configure = configure_module(builder)
    plain = action(None)
    plain._connection._capturing = True
    first = configure(plain, 'ansible.legacy.copy', {'src': '/a'}, {})
    plain._connection._capturing = False
    assert configure(plain, 'ansible.legacy.copy', {'src': '/a'}, {}) is not first
    odd = action({})
    odd._connection._capturing = True
    configure(odd, 'ansible.legacy.copy', {'src': object()}, {})
    assert odd._ferrogen_builds == {}
    assert builder.builds == 3
