"""One round trip for a small copy, where Ansible's copy action waits twice.

For every file, the copy action runs the stat module on the destination, and only then, if the
destination is absent or holds other content, uploads the file and runs the copy module. On a
ferrogen connection, for a small file and the plain case (force, no check or diff mode, no raw,
no vault file), the action's steps are prepared before it runs:

- the file goes into the task temp dir as a detached upload, which vanilla Ansible would make
  after the stat (it is private to the task, and removed with it);
- the stat module call and the copy module call the action is about to make are captured, built
  by the action's own code (`Connection.capture`);
- one call runs the stat module and then, only if its result shows the destination absent or
  holding other content, the copy module, or, if it holds this content, the file module: exactly
  what the action would run next, with the same arguments (the agent's continuation
  conditions).

The action then runs unchanged and its own calls are answered from those results. Anything it
asks that was not prepared (a directory destination, a link to follow) goes to the target as
usual. The module payloads built while capturing are handed to the action again when it asks
for the same module with the same arguments, rather than built twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import sys

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.loader import action_loader
from ansible.utils.display import Display

from ansible_ferrogen import ansible_internals, frames, transfer
from ansible_ferrogen.connection import Connection

display = Display()

# How an Ansible Vault file starts: its content is decrypted on the controller first.
VAULT_HEADER = b'$ANSIBLE_VAULT'

# What this module installs (ansible_internals.OPTIMISATIONS).
OPTIMISATIONS = ('copy_in_one_round_trip', 'copy_source_hashed_ahead')


@dataclasses.dataclass(frozen=True)
class CopyPlan:
    """What the copy action will do for one file if the destination needs it."""

    source: str
    data: bytes
    dest_file: str
    temp_source: str
    # The copy module's arguments if the destination needs the file; the file module's if it
    # already holds it.
    copy_args: dict
    file_args: dict
    sha1: str


def plain_case(action) -> bool:
    """Whether the copy action will upload the file and run the copy module with it if the
    destination holds other content: force, no check or diff mode, no raw, no checksum given,
    and a task temp dir action_mixin made (so an upload into it can be detached)."""
    task = action._task
    args = task.args
    ours = getattr(action._connection, 'detached_temp_dir', None)
    return not (ours is None or ours != action._connection._shell.tmpdir or task.check_mode or task.diff
                or args.get('checksum') or not boolean(args.get('force', 'yes'), strict=False)
                or boolean(args.get('raw', 'no'), strict=False))


def plan_copy(action, source_full, source_rel, dest, follow) -> CopyPlan | None:
    """The copy action's steps for this file in the plain case, as its _copy_file computes
    them, or None where the file is not small."""
    from ansible.plugins.action import copy as copy_action  # loaded only by workers that copy

    args = action._task.args
    shell = action._connection._shell
    try:
        source = action._loader.path_dwim(source_full)
        with open(source, 'rb') as handle:
            data = handle.read(frames.SMALL_FILE_LIMIT + 1)
            mode = os.fstat(handle.fileno()).st_mode
    except OSError:
        return None
    if len(data) > frames.SMALL_FILE_LIMIT or data.startswith(VAULT_HEADER):
        return None
    dest_file = shell.join_path(dest, source_rel) if shell.path_has_trailing_slash(dest) else dest
    temp_source = shell.join_path(shell.tmpdir, '.source') + os.path.splitext(dest_file)[1]
    sha1 = hashlib.sha1(data).hexdigest()
    copy_args = copy_action._create_remote_copy_args(args)
    copy_args.update(src=temp_source, dest=dest, _original_basename=source_rel, follow=follow, checksum=sha1)
    file_args = copy_action._create_remote_file_args(args)
    file_args.update(dest=dest, _original_basename=source_rel, recurse=False, state='file')
    file_args.pop('src', None)
    if args.get('mode', None) == 'preserve':
        copy_args['mode'] = file_args['mode'] = '0%03o' % (mode & 0o7777)
    return CopyPlan(source, data, dest_file, temp_source, copy_args, file_args, sha1)


def prepare_copy(action, plan: CopyPlan, task_vars, follow) -> None:
    """Upload the file, and run stat and then copy or file as the action will, in one round
    trip."""
    connection = action._connection
    if not connection.has_interpreter():
        return  # nothing runs ahead over a plain shell channel
    stat_call = connection.capture(lambda: action._execute_remote_stat(
        plan.dest_file, all_vars=task_vars, follow=follow, checksum=True))
    branches = [({'kind': 'stat_shows_other_content', 'sha1': plan.sha1}, connection.capture(
        lambda: action._execute_module(module_name='ansible.legacy.copy', module_args=dict(plan.copy_args),
                                       task_vars=task_vars)))]
    if not follow:
        # With follow, the action first asks where a link points; that stays its own call.
        branches.append(({'kind': 'stat_shows_same_content', 'sha1': plan.sha1}, connection.capture(
            lambda: action._execute_module(module_name='ansible.legacy.file', module_args=dict(plan.file_args),
                                           task_vars=task_vars))))
    calls = [stat_call] + [call for _, call in branches]
    if any(call is None or call.as_become != stat_call.as_become for call in calls):
        return
    connection.prepare_upload(plan.source, plan.temp_source, plan.data)
    connection.run_module_then(stat_call, branches)


def build_key(module_name, module_args) -> str | None:
    """Equal for builds of the same module with the same arguments; None if the arguments
    cannot be told apart reliably."""
    try:
        return json.dumps([module_name, module_args], sort_keys=True)
    except (TypeError, ValueError):
        return None


def configure_module(original):
    def _configure_module(self, module_name, module_args, task_vars):
        builds = getattr(self, '_ferrogen_builds', None)
        key = None if builds is None else build_key(module_name, module_args)
        if key is None:
            return original(self, module_name, module_args, task_vars)
        if self._connection._capturing:
            builds[key] = original(self, module_name, module_args, task_vars)
            return builds[key]
        built = builds.pop(key, None)
        return built if built is not None else original(self, module_name, module_args, task_vars)

    return _configure_module


def source_hashed_ahead(action) -> transfer.DigestsAhead | None:
    """Start hashing the copy action's source, if it is one large controller file, before the
    action waits for its connection (DigestsAhead: the SHA-1 at once, the copy module's MD5
    once the upload starts); the action's checksum, the upload's and the copy module's are then
    answered from those. None for anything else (content, remote_src, a directory, a small or
    vault file, a source not found: the action deals with those as usual)."""
    args = action._task.args
    source = args.get('src')
    if not isinstance(source, str) or args.get('content') is not None \
            or boolean(args.get('remote_src', False), strict=False):
        return None
    try:
        source = os.path.realpath(action._find_needle('files', source))
        with open(source, 'rb') as handle:
            info = os.fstat(handle.fileno())
            vault = handle.read(len(VAULT_HEADER)) == VAULT_HEADER
    except (AnsibleError, OSError):
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size <= frames.SMALL_FILE_LIMIT or vault \
            or source in transfer.DIGESTS_AHEAD:
        return None
    ahead = transfer.DIGESTS_AHEAD[source] = transfer.DigestsAhead(source)
    return ahead


def hash_source_ahead(original):
    def run(self, tmp=None, task_vars=None):
        ahead = source_hashed_ahead(self) if isinstance(self._connection, Connection) else None
        try:
            return original(self, tmp, task_vars)
        finally:
            if ahead is not None:
                ahead.cancel()
                del transfer.DIGESTS_AHEAD[ahead.path]

    return run


@contextlib.contextmanager
def building_copy_module_ahead(action, source_full, task_vars):
    """For a source being hashed ahead (large, plain case), build the copy module while the stat
    runs on the target (Ansible keeps its zip for the action's own build, after the upload)."""
    ahead = os.path.realpath(action._loader.path_dwim(source_full)) in transfer.DIGESTS_AHEAD
    if ahead:

        def build_copy_module():
            try:
                action._configure_module(module_name='ansible.legacy.copy', module_args={}, task_vars=task_vars)
            except Exception as exc:  # noqa: BLE001 - the action's own build meets it again
                display.vvvv(f'ferrogen: the copy module was not built ahead: {exc}')

        action._connection.while_next_module_runs = build_copy_module
    try:
        yield
    finally:
        if ahead:
            action._connection.while_next_module_runs = None


def copy_file(original):
    def _copy_file(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow):
        if not plain_case(self):
            return original(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow)
        plan = plan_copy(self, source_full, source_rel, dest, follow)
        if plan is None:
            with building_copy_module_ahead(self, source_full, task_vars):
                return original(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow)
        self._ferrogen_builds = {}
        try:
            prepare_copy(self, plan, task_vars, follow)
            return original(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow)
        finally:
            self._ferrogen_builds = None
            unused = [name for name in self._connection.forget_ready() if name != 'ansible.modules.stat']
            if unused:
                display.warning(f'ferrogen: {unused[0]} ran ahead for {plan.dest_file}, but the copy action did not '
                                'ask for it; please report this as a ferrogen bug')

    return _copy_file


# Whether install() ran in this process (or the process it was forked from).
_installed = False


def install() -> None:
    """Patch the copy action (which template also runs), in the controller before workers fork;
    only ferrogen connections, whose task temp dir action_mixin made, see a change.

    The plugin loader may load the action's file under another module name than
    ansible.plugins.action.copy, once per process: the classes it hands out are patched.
    """
    global _installed
    if _installed:
        return
    _installed = True
    in_one_round_trip = ansible_internals.enabled('copy_in_one_round_trip')
    hashed_ahead = ansible_internals.enabled('copy_source_hashed_ahead')
    if not (in_one_round_trip or hashed_ahead):
        return
    classes = {action_loader.get(name, class_only=True) for name in ('ansible.legacy.copy', 'ansible.builtin.copy')}
    for cls in classes:
        if cls.__dict__.get('_ferrogen_speculation', False):
            continue
        cls._ferrogen_speculation = True
        if hashed_ahead:
            cls.run = hash_source_ahead(cls.run)
            # The action hashes its source with its module's own checksum().
            action_module = sys.modules[cls.__module__]
            if not getattr(action_module.checksum, 'ferrogen_hashed_ahead', False):
                action_module.checksum = transfer.sha1_ahead_or(action_module.checksum)
        if in_one_round_trip:
            cls._copy_file = copy_file(cls._copy_file)
            cls._configure_module = configure_module(cls._configure_module)
