"""Every private part of ansible-core that ferrogen calls or patches, in one place.

ansible-core changes its private attributes between releases without notice. Each one ferrogen
relies on is listed here with the parameters ferrogen expects it to take. `start()` looks them up
once per process: all of them when the strategy starts (before workers fork, so they inherit the
result); in connection-only mode, where each task's worker checks for itself, only those its task
uses (EVERY_TASK when the connection plugin is first made, the copy action's when a task runs it):

- an optimisation (OPTIMISATIONS) whose internals are all present, with the expected
  parameters, is installed; one whose internals are missing or changed is switched off with one
  warning naming what, and Ansible's own code path runs instead;
- what the plugin cannot work without (REQUIRED) stops the run with a message naming exactly
  what is missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
from collections.abc import Callable, Iterable

from ansible import __version__ as ansible_version
from ansible.errors import AnsibleError
from ansible.utils.display import Display

display = Display()


# The records here are plain classes rather than dataclasses or NamedTuples: a connection-only
# worker imports this module for every task, and making a dataclass compiles its methods (about
# a millisecond each), a NamedTuple its constructor and accessors (about half a millisecond).


class Internal:
    """One private attribute of ansible-core.

    name: how messages name it (`module.path:Class.attribute`).
    locate: returns it (raises AttributeError, ImportError or LookupError if it is not there).
    parameters: for a callable, the parameter names ferrogen expects (bound `self`/`cls` left
    out); None for an attribute that is only read.
    patched: ferrogen replaces it with a wrapper of the same parameters, so they must match
    exactly; a callable that ferrogen only calls needs just the named parameters.
    check: a further check of the located object, returning what is wrong or None.
    """

    __slots__ = ('name', 'locate', 'parameters', 'patched', 'check')

    def __init__(self, name: str, locate: Callable[[], object], parameters: tuple[str, ...] | None = None,
                 patched: bool = False, check: Callable[[object], str | None] | None = None):
        self.name = name
        self.locate = locate
        self.parameters = parameters
        self.patched = patched
        self.check = check

    def problem(self) -> str | None:
        """What is wrong with this internal in the running ansible-core, or None."""
        try:
            found = self.locate()
        except (ImportError, LookupError) as exc:
            return f'{self.name} is missing ({exc})'
        except AttributeError:
            return f'{self.name} is missing'
        if self.parameters is not None:
            names = parameter_names(found)
            if names is None:
                return f'{self.name} is not a function'
            names = [name for name in names if name not in ('self', 'cls')]
            expected = list(self.parameters)
            if (names != expected) if self.patched else not set(expected) <= set(names):
                return f'{self.name} takes ({", ".join(names)}), ferrogen expects ({", ".join(expected)})'
        if self.check is not None:
            wrong = self.check(found)
            if wrong:
                return f'{self.name} {wrong}'
        return None


def parameter_names(found) -> list[str] | None:
    """The names of a callable's parameters in order, as inspect.signature lists them; None for
    what is not callable. A plain function's are read off its code object: inspect.signature
    costs a connection-only worker about a millisecond for the internals of every task."""
    function = found.__func__ if isinstance(found, types.MethodType) else found
    if isinstance(function, types.FunctionType) and not hasattr(function, '__wrapped__') \
            and not hasattr(function, '__signature__'):
        code = function.__code__
        positional = code.co_argcount + code.co_kwonlyargcount
        names = list(code.co_varnames[:positional])
        extra = positional
        if code.co_flags & inspect.CO_VARARGS:
            names.insert(code.co_argcount, code.co_varnames[extra])
            extra += 1
        if code.co_flags & inspect.CO_VARKEYWORDS:
            names.append(code.co_varnames[extra])
        return names[1:] if function is not found else names
    try:
        return list(inspect.signature(found).parameters)
    except (TypeError, ValueError):
        return None


def attribute(module: str, path: str) -> Callable[[], object]:
    """A locate() for module's attribute path (`Class.method`)."""

    def locate():
        found = importlib.import_module(module)
        for part in path.split('.'):
            found = getattr(found, part)
        return found

    return locate


def internal(module: str, path: str, parameters: tuple[str, ...] | None = None, **kwargs) -> Internal:
    return Internal(f'{module}:{path}', attribute(module, path), parameters, **kwargs)


def function_in_source(module: str, source: str, name: str) -> Callable[[], object]:
    """A locate() for the function `name` defined in the Python source text that module's
    attribute `source` holds, made from its signature alone (its body is neither compiled nor
    run): enough to check its parameters."""

    def locate():
        text = getattr(importlib.import_module(module), source)
        start = text.find(f'\ndef {name}(')
        if start < 0:
            raise AttributeError(name)
        lines: list[str] = []
        for line in text[start + 1:].splitlines():
            lines.append(line)
            if not line.rstrip().endswith(':'):
                continue
            try:
                code = compile('\n'.join(lines) + '\n    pass\n', f'<{module}.{source}>', 'exec')
            except SyntaxError:
                continue  # a colon inside the signature (an annotation, a default)
            function_code = next(const for const in code.co_consts if isinstance(const, types.CodeType))
            return types.FunctionType(function_code, {})
        raise AttributeError(name)

    return locate


def action_class(name: str):
    """The class the plugin loader hands out for the builtin action name."""
    from ansible.plugins.loader import action_loader

    cls = action_loader.get(f'ansible.builtin.{name}', class_only=True)
    if cls is None:
        raise LookupError(f'the plugin loader finds no ansible.builtin.{name} action')
    return cls


def action_member(action: str, path: str, parameters: tuple[str, ...] | None = None, **kwargs) -> Internal:
    """An attribute of the builtin action's class, or (`module.name`) of its module."""

    def locate():
        cls = action_class(action)
        found = sys.modules[cls.__module__] if path.startswith('module.') else cls
        for part in path.removeprefix('module.').split('.'):
            found = getattr(found, part)
        return found

    return Internal(f'the {action} action\'s {path.removeprefix("module.")}', locate, parameters, **kwargs)


def copy_action(path: str, parameters: tuple[str, ...] | None = None, **kwargs) -> Internal:
    """An attribute of the copy action's class, or (`module.name`) of its module."""
    return action_member('copy', path, parameters, **kwargs)


def has_field(name: str) -> Callable[[object], str | None]:
    def check(cls) -> str | None:
        if not dataclasses.is_dataclass(cls) or name not in {field.name for field in dataclasses.fields(cls)}:
            return f'is not a dataclass with a {name} field'
        return None

    return check


ACTION = 'ansible.plugins.action'
CONFIGURE_MODULE = ('module_name', 'module_args', 'task_vars')


class Optimisation:
    """Something ferrogen does faster than Ansible's own code path, and what it relies on."""

    __slots__ = ('description', 'internals')

    def __init__(self, description: str, internals: tuple[Internal, ...]):
        self.description = description
        self.internals = internals


OPTIMISATIONS: dict[str, Optimisation] = {
    # ansiballz.py: the keyword arguments of the wrapper's call are read out of the payload.
    # The wrapper is checked in the source Ansible sends, which it never imports: importing the
    # wrapper's module would cost every connection-only worker half a millisecond.
    'module_arguments_only': Optimisation('module payloads sent as arguments and a zip cached per interpreter', (
        Internal("ansible.executor.module_common:_ANSIBALLZ_CODE's _ansiballz_main",
                 function_in_source('ansible.executor.module_common', '_ANSIBALLZ_CODE', '_ansiballz_main'),
                 ('zip_data', 'ansible_module', 'module_fqn', 'params', 'profile', 'extensions')),
    )),
    # module_cache.py
    'module_zip_by_reference': Optimisation('module zips stored once per worker and sent by reference', (
        internal('ansible.executor.module_common', '_CachedModule', check=has_field('zip_data')),
        internal('ansible.executor.module_common', '_CachedModule.load', ('path',), patched=True),
        internal(ACTION, 'ActionBase._configure_module', CONFIGURE_MODULE, patched=True),
    )),
    # action_mixin.py
    'connect_ahead': Optimisation('connecting while the action builds its first call', (
        internal(ACTION, 'ActionBase._requires_connection'),
    )),
    'detached_temp_dirs': Optimisation('task temp dirs, small uploads and chmods without waiting for the target', (
        internal(ACTION, 'ActionBase._make_tmp_path', ('remote_user',), patched=True),
        internal(ACTION, 'ActionBase._remove_tmp_path', ('tmp_path', 'force'), patched=True),
        internal(ACTION, 'ActionBase._fixup_perms2', ('remote_paths', 'remote_user', 'execute'), patched=True),
        internal(ACTION, 'ActionBase._is_become_unprivileged', ()),
        internal(ACTION, 'ActionBase._should_remove_tmp_path', ('tmp_path',)),
        internal(ACTION, 'ActionBase._remote_expand_user', ('path', 'sudoable')),
        internal(ACTION, 'ActionBase.get_shell_option', ('option', 'default')),
    )),
    'home_from_ready': Optimisation('~ of the login account known without a round trip', (
        internal(ACTION, 'ActionBase._remote_expand_user', ('path', 'sudoable', 'pathsep'), patched=True),
    )),
    # speculation.py
    'copy_in_one_round_trip': Optimisation('a small copy in one round trip', (
        copy_action('_copy_file', ('source_full', 'source_rel', 'content', 'content_tempfile', 'dest',
                                   'task_vars', 'follow'), patched=True),
        copy_action('_configure_module', CONFIGURE_MODULE, patched=True),
        copy_action('_execute_remote_stat', ('path', 'all_vars', 'follow', 'checksum')),
        copy_action('_execute_module', ('module_name', 'module_args', 'task_vars')),
        copy_action('module._create_remote_copy_args', ('module_args',)),
        copy_action('module._create_remote_file_args', ('module_args',)),
    )),
    'copy_source_hashed_ahead': Optimisation("a large copy source hashed while the action waits", (
        copy_action('run', ('tmp', 'task_vars'), patched=True),
        copy_action('_find_needle', ('dirname', 'needle')),
        copy_action('module.checksum', ('filename',)),
    )),
    # fetch_action.py, with transfer.py
    'fetch_digests_from_stream': Optimisation("a fetched file's SHA-1 and MD5 taken from its stream", (
        action_member('fetch', 'module.secure_hash', ('filename', 'hash_func'), patched=True),
        action_member('fetch', 'module.md5', ('filename',), patched=True),
    )),
    # fetch_action.py
    'fetch_streamed_with_become': Optimisation('a fetch with become streamed rather than slurped', (
        action_member('fetch', 'run', ('tmp', 'task_vars'), patched=True),
        action_member('fetch', '_execute_remote_stat', ('path', 'all_vars', 'follow')),
        action_member('fetch', '_remote_expand_user', ('path', 'sudoable')),
    )),
    # strategy.py
    'task_names': Optimisation('calls named by their task in the mux status table', (
        internal('ansible.executor.process.worker', 'WorkerProcess._run', (), patched=True),
    )),
    'json_profiles_ahead': Optimisation("module JSON profiles imported before workers fork", (
        internal('ansible.module_utils.common.json', 'Direction'),
        internal('ansible.module_utils.common.json', 'get_module_decoder', ('name', 'direction')),
        internal('ansible.module_utils.common.json', 'get_module_encoder', ('name', 'direction')),
    )),
}

# What every task on a ferrogen connection uses (the strategy's own and the copy action's are
# installed, and looked up, only where they are used).
EVERY_TASK = ('module_arguments_only', 'module_zip_by_reference', 'connect_ahead', 'detached_temp_dirs',
              'home_from_ready')

# What the strategy and connection plugins cannot work without.
REQUIRED: tuple[Internal, ...] = (
    internal('ansible.plugins.loader', 'connection_loader.get_with_context', ('name', 'args', 'kwargs'),
             patched=True),
    internal('ansible.plugins.loader', 'connection_loader.add_directory', ('directory',)),
    internal('ansible.plugins.loader', 'become_loader.add_directory', ('directory',)),
    internal('ansible.plugins.become', 'BecomeBase.build_become_command', ('cmd', 'shell'), patched=True),
    internal('ansible.plugins.connection', 'ConnectionBase.set_become_plugin', ('plugin',)),
)


class Report:
    """What is wrong, by optimisation (an empty list: it may be installed), what is missing
    of REQUIRED (None until looked up), and the optimisations start() has warned about or found
    on."""

    def __init__(self):
        self.problems: dict[str, list[str]] = {}
        self.missing: list[str] | None = None
        self.started: set[str] = set()

    @property
    def disabled(self) -> dict[str, list[str]]:
        return {name: problems for name, problems in self.problems.items() if problems}


# Looked up once per process (forked workers inherit it), each optimisation when first asked.
_report: Report | None = None


def module_python_minimum() -> tuple[int, ...] | None:
    """The oldest target Python this ansible-core's modules run on, as its module_utils state it
    (`basic._PY_MIN`); None where it is not a version (2.16 states a condition instead)."""
    from ansible.module_utils import basic

    minimum = getattr(basic, '_PY_MIN', None)
    return minimum if isinstance(minimum, tuple) else None


def report() -> Report:
    global _report
    if _report is None:
        _report = Report()
    return _report


def problems_of(internals: tuple[Internal, ...]) -> list[str]:
    """What is wrong with internals; an attribute of one already missing is not named again."""
    problems: list[str] = []
    missing: list[str] = []
    for internal in internals:
        if any(internal.name.startswith(name + '.') for name in missing):
            continue
        problem = internal.problem()
        if problem:
            problems.append(problem)
            if problem.startswith(f'{internal.name} is missing'):
                missing.append(internal.name)
    return problems


def enabled(name: str) -> bool:
    """Whether the optimisation name may be installed in this ansible-core."""
    if name not in OPTIMISATIONS:
        raise KeyError(f'ferrogen: no optimisation named {name}')
    problems = report().problems
    if name not in problems:
        problems[name] = problems_of(OPTIMISATIONS[name].internals)
    return not problems[name]


def check(names: Iterable[str] | None = None) -> Report:
    """Look the internals of the optimisations named (every one by default) and REQUIRED up."""
    for name in OPTIMISATIONS if names is None else names:
        enabled(name)
    if report().missing is None:
        report().missing = problems_of(REQUIRED)
    return report()


def start(names: Iterable[str] | None = None) -> None:
    """Check the optimisations named (every one by default), then refuse to run without what is
    required, and warn once per process (the controller folds the workers' equal warnings into
    one) for each of them switched off."""
    names = list(OPTIMISATIONS if names is None else names)
    found = check(names)
    if found.missing:
        raise AnsibleError(f'ferrogen cannot run with ansible-core {ansible_version}: ' + '; '.join(found.missing))
    for name in names:
        if name in found.started:
            continue
        found.started.add(name)
        if found.problems[name]:
            display.warning(f'ferrogen: {OPTIMISATIONS[name].description} ({name}) is off with ansible-core '
                            f'{ansible_version}: {"; ".join(found.problems[name])}. Ansible\'s own code path runs '
                            'instead.')


def current_task_vars() -> dict | None:
    """The variables of the task this worker runs, hostvars included (connection delegation
    reads the via hosts' variables there): ansible-core 2.21's task context
    (`ansible._internal._task:TaskContext.current`), else the `_job_vars` of the TaskExecutor
    found up the stack; None where neither is there."""
    try:
        from ansible._internal._task import TaskContext
    except ImportError:
        pass
    else:
        try:
            return TaskContext.current().task_vars
        except Exception:  # noqa: BLE001 - no current task: fall back to the executor's
            pass
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get('self')
        if type(owner).__name__ == 'TaskExecutor':
            return getattr(owner, '_job_vars', None)
        frame = frame.f_back
    return None
