"""Importing a module zip's contents in the agent: each module compiled once, with the file
names and sources zipimport would give it."""

from __future__ import annotations

import builtins
import collections
import importlib.util
import os
import sys
import traceback
import zipfile

import ferrogen_agent
import pytest
from module_payloads import ModuleRunner

agent_module = ferrogen_agent.load()

LEAF_SOURCE = '''
def fail():
    raise ValueError('raised from the leaf')
'''

PROBE_MODULE = '''
import sys
from ansible.module_utils.basic import AnsibleModule

basic = sys.modules['ansible.module_utils.basic']
module = AnsibleModule(argument_spec={})
module.exit_json(basic_file=basic.__file__, basic_loader=type(basic.__loader__).__name__)
'''


def write_zip(path, members):
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, source in members.items():
            archive.writestr(name, source)


@pytest.fixture
def zip_modules(tmp_path, monkeypatch):
    """(ZipModules first on sys.meta_path, zip path, compile counts by file name); the zip holds
    package ferrogen_zipprobe and is first on sys.path."""
    zip_path = str(tmp_path / 'payload.zip')
    write_zip(zip_path, {
        'ferrogen_zipprobe/__init__.py': '',
        'ferrogen_zipprobe/sub/__init__.py': 'from . import leaf\n',
        'ferrogen_zipprobe/sub/leaf.py': LEAF_SOURCE,
        'ferrogen_zipprobe/late.py': LEAF_SOURCE,
    })
    compiled = collections.Counter()
    real_compile = builtins.compile

    def counting_compile(source, filename, *args, **kwargs):
        compiled[filename] += 1
        return real_compile(source, filename, *args, **kwargs)

    modules = agent_module.ZipModules()
    monkeypatch.setattr(builtins, 'compile', counting_compile)
    monkeypatch.setattr(sys, 'path', [zip_path] + sys.path)
    monkeypatch.setattr(sys, 'meta_path', [modules] + sys.meta_path)
    yield modules, zip_path, compiled
    for name in [name for name in sys.modules if name.startswith('ferrogen_zipprobe')]:
        del sys.modules[name]


def test_each_module_is_compiled_once_and_named_inside_the_zip(zip_modules):
    modules, zip_path, compiled = zip_modules
    with modules.preparing(zip_path):
        package = importlib.import_module('ferrogen_zipprobe.sub')
    leaf = sys.modules['ferrogen_zipprobe.sub.leaf']
    assert dict(compiled) == {os.path.join(zip_path, member): 1 for member in (
        'ferrogen_zipprobe/__init__.py', 'ferrogen_zipprobe/sub/__init__.py', 'ferrogen_zipprobe/sub/leaf.py')}
    assert leaf.__file__ == os.path.join(zip_path, 'ferrogen_zipprobe/sub/leaf.py')
    assert package.__path__ == [os.path.join(zip_path, 'ferrogen_zipprobe/sub')]
    # Once the zip is closed, a traceback still shows the leaf's source line.
    try:
        leaf.fail()
    except ValueError:
        assert "raise ValueError('raised from the leaf')" in traceback.format_exc()


def test_what_is_not_imported_while_preparing_is_compiled_then_and_imported_later_without(zip_modules):
    modules, zip_path, compiled = zip_modules
    with modules.preparing(zip_path):
        importlib.import_module('ferrogen_zipprobe')
        modules.compile_rest(zip_path)
    late_path = os.path.join(zip_path, 'ferrogen_zipprobe/late.py')
    assert compiled[late_path] == 1
    late = importlib.import_module('ferrogen_zipprobe.late')
    assert compiled[late_path] == 1
    assert late.__file__ == late_path
    assert compiled[os.path.join(zip_path, 'ferrogen_zipprobe/__init__.py')] == 1


def test_what_was_not_compiled_ahead_is_left_to_zipimport(zip_modules):
    modules, zip_path, _ = zip_modules
    package_dir = os.path.join(zip_path, 'ferrogen_zipprobe')
    with modules.preparing(zip_path):
        assert modules.find_spec('ferrogen_zipprobe.late', ['/elsewhere/ferrogen_zipprobe']) is None
        assert modules.find_spec('ferrogen_zipprobe.missing', [package_dir]) is None
        assert modules.find_spec('ferrogen_zipprobe.late', [package_dir]).origin == os.path.join(package_dir, 'late.py')
    assert modules.find_spec('ferrogen_zipprobe.late', [package_dir]) is None
    assert importlib.import_module('ferrogen_zipprobe.late').__loader__.__class__.__name__ == 'zipimporter'


def test_a_module_sees_its_module_utils_loaded_from_the_zip_by_the_agent(agent, tmp_path, monkeypatch):
    module_path = tmp_path / 'ferrogen_probe.py'
    module_path.write_text(PROBE_MODULE)
    runner = ModuleRunner(agent, module_path, monkeypatch, tmp_path / 'local-tmp')
    result = runner.run({})
    zip_path = os.path.join(agent.ready['tmpdir'], runner.zip_hash + '.zip')
    assert result['basic_file'] == os.path.join(zip_path, 'ansible/module_utils/basic.py')
    assert result['basic_loader'] == 'ZipSourceLoader'
