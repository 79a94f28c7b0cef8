"""Each private ansible-core part ferrogen relies on is checked; a missing or changed one switches
off only its optimisation, with one warning naming it, and never stops a run."""

from __future__ import annotations

import warnings

import pytest
from ansible.errors import AnsibleError
from ansible.executor import module_common
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import init_plugin_loader

from ansible_ferrogen import ansible_internals, module_cache


@pytest.fixture(scope='module', autouse=True)
def plugin_loader():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # another test module of this process may have set it up
        init_plugin_loader()


@pytest.fixture(autouse=True)
def fresh_check(monkeypatch):
    """Every test looks the internals up again, and its warnings are collected."""
    monkeypatch.setattr(ansible_internals, '_report', None)
    shown = []
    monkeypatch.setattr(ansible_internals.display, 'warning', shown.append)
    yield shown
    ansible_internals._report = None


def test_the_tested_ansible_core_has_every_internal(fresh_check):
    report = ansible_internals.check()
    assert report.disabled == {} and report.missing == []
    ansible_internals.start()
    assert fresh_check == []


def test_a_missing_internal_switches_off_its_optimisation_only(monkeypatch, fresh_check):
    monkeypatch.delattr(module_common, '_CachedModule')
    configure = ActionBase._configure_module
    ansible_internals.start()
    ansible_internals.start()
    assert list(ansible_internals.check().disabled) == ['module_zip_by_reference']
    assert len(fresh_check) == 1
    assert '(module_zip_by_reference) is off' in fresh_check[0]
    assert 'ansible.executor.module_common:_CachedModule is missing' in fresh_check[0]
    module_cache.install()
    assert ActionBase._configure_module is configure
    assert ansible_internals.enabled('detached_temp_dirs')


def test_a_patched_method_with_other_parameters_switches_off_its_optimisation(monkeypatch, fresh_check):
    def _fixup_perms2(self, remote_paths, remote_user=None, execute=True, recursive=False):
        raise AssertionError('not called by the check')

    monkeypatch.setattr(ActionBase, '_fixup_perms2', _fixup_perms2)
    ansible_internals.start()
    assert list(ansible_internals.check().disabled) == ['detached_temp_dirs']
    assert ('ActionBase._fixup_perms2 takes (remote_paths, remote_user, execute, recursive), ferrogen expects '
            '(remote_paths, remote_user, execute)') in fresh_check[0]


def test_a_called_method_may_gain_parameters(monkeypatch):
    def _should_remove_tmp_path(self, tmp_path, also=None):
        return True

    monkeypatch.setattr(ActionBase, '_should_remove_tmp_path', _should_remove_tmp_path)
    assert ansible_internals.enabled('detached_temp_dirs')


def test_what_the_plugin_cannot_do_without_is_named(monkeypatch):
    from ansible.plugins.become import BecomeBase

    monkeypatch.delattr(BecomeBase, 'build_become_command')
    with pytest.raises(AnsibleError, match='ansible.plugins.become:BecomeBase.build_become_command is missing'):
        ansible_internals.start()


def test_every_optimisation_is_named_where_it_is_installed():
    """A name in OPTIMISATIONS that no install step asks for would check nothing."""
    import inspect

    from ansible_ferrogen import action_mixin, ansiballz, fetch_action, preload, speculation, strategy

    sources = ''.join(inspect.getsource(module) for module in (action_mixin, ansiballz, fetch_action, module_cache,
                                                                preload, speculation, strategy))
    for name in ansible_internals.OPTIMISATIONS:
        assert f"'{name}'" in sources, name


def test_parameters_are_read_as_inspect_reads_them():
    """The code-object reading of a plain function's parameters gives inspect.signature's names,
    for every internal checked and for each kind of parameter."""
    import functools
    import inspect

    def every_kind(a, b=1, /, c=2, *rest, d, e=3, **more):
        pass

    class Owner:
        def method(self, x, *args, y=None, **kwargs):
            pass

        @classmethod
        def load(cls, path):
            pass

    @functools.wraps(every_kind)
    def wrapped(*args, **kwargs):
        pass

    found = [every_kind, Owner.method, Owner().method, Owner.load, wrapped, functools.partial(every_kind, 0), len]
    for optimisation in ansible_internals.OPTIMISATIONS.values():
        for internal in optimisation.internals + ansible_internals.REQUIRED:
            if internal.parameters is not None:
                found.append(internal.locate())
    for callable_ in found:
        assert ansible_internals.parameter_names(callable_) == list(inspect.signature(callable_).parameters), callable_
    assert ansible_internals.parameter_names(42) is None
