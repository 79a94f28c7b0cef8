"""Round trips that action plugins need not wait for, on ferrogen connections.

Vanilla Ansible waits on the target for every helper step of an action: creating the task's
temp dir, uploading into it, making the upload executable, removing the dir, expanding `~`.
On a ferrogen connection, where nothing that reads the temp dir runs as an unprivileged
become account:

- the task's temp dir is named by the controller, under remote_tmp as Ansible would put it
  (`~` is the login account's home, which the mux knows from the interpreter's `ready`);
  the interpreter removes any such dir still there when it exits;
- creating it, small uploads into it, `chmod u+rwx` of its files and removing it are
  detached calls: the mux acknowledges them at once and runs them, in order, before the next
  call to that interpreter; a failure fails this task's next call with the error that occurred;
- `~` of the login account is known from the interpreter's `ready`;
- the connection itself comes up while the action prepares its first call: the mux is asked
  to connect as soon as an action that needs a connection exists.

With an unprivileged become account every step runs as vanilla Ansible runs it.
"""

from __future__ import annotations

import os
import secrets
import time

from ansible import constants as C
from ansible.plugins.action import ActionBase

from ansible_ferrogen import ansible_internals, client
from ansible_ferrogen.connection import Connection, inside

# Ansible removes only temp dirs whose name holds this (ActionBase._should_remove_tmp_path).
TEMP_DIR_PREFIX = 'ansible-tmp-'


def _ours(action: ActionBase) -> bool:
    connection = action._connection
    return (isinstance(connection, Connection) and connection.task_temp_dirs_in_interpreter()
            and connection.has_interpreter())


def _task_temp_dir(action: ActionBase) -> str | None:
    """The temp dir this task made through us, or None."""
    return getattr(action, '_ferrogen_temp_dir', None)


def init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        # Made once the task's connection options are set, before the action builds its
        # module: the connection comes up meanwhile. Actions that never connect (debug,
        # set_fact, assert...) say so, and no connection is started for them.
        if self._requires_connection and isinstance(self._connection, Connection):
            if client.current_task is None:
                # No ferrogen strategy named the worker's task (connection-only mode); a
                # worker runs one task.
                client.current_task = self._task.get_name()
            self._connection.connect_ahead()

    return __init__


def make_tmp_path(original):
    def _make_tmp_path(self, remote_user=None):
        if not _ours(self) or self._is_become_unprivileged():
            return original(self, remote_user)
        if getattr(self._connection, '_remote_is_local', False):
            root = C.DEFAULT_LOCAL_TMP
        else:
            root = self._remote_expand_user(self.get_shell_option('remote_tmp', default='~/.ansible/tmp'),
                                            sudoable=False)
        if '$' in root or not root.startswith('/'):
            return original(self, remote_user)  # the shell must expand it
        name = f'{TEMP_DIR_PREFIX}{time.time()}-{os.getpid()}-{secrets.randbelow(2**48)}'
        path = self._connection._shell.join_path(root, name)
        self._connection.detached('make_dir', {'path': path, 'mode': 0o700})
        self._cleanup_remote_tmp = True
        self._ferrogen_temp_dir = self._connection.detached_temp_dir = path
        self._connection._shell.tmpdir = path
        return path

    return _make_tmp_path


def remove_tmp_path(original):
    def _remove_tmp_path(self, tmp_path, force=False):
        ours = _task_temp_dir(self)
        if tmp_path is None:
            tmp_path = self._connection._shell.tmpdir
        if ours is None or tmp_path != ours or not (force or self._should_remove_tmp_path(tmp_path)):
            return original(self, tmp_path, force)
        self._connection.detached('remove_tree', {'path': tmp_path})
        self._connection._shell.tmpdir = None
        self._ferrogen_temp_dir = self._connection.detached_temp_dir = None

    return _remove_tmp_path


def fixup_perms2(original):
    def _fixup_perms2(self, remote_paths, remote_user=None, execute=True):
        # The action's own temp dir, or the one the action that runs it made (template runs copy).
        ours = _task_temp_dir(self) or getattr(self._connection, 'detached_temp_dir', None)
        if ours is None or not all(inside(path, ours) for path in remote_paths):
            return original(self, remote_paths, remote_user, execute)
        # The dir is private to the account that reads it; only the execute bit may be missing,
        # and not on the dir itself (made 0700) nor on an upload made ahead (speculation.py).
        paths = [path for path in remote_paths
                 if path.rstrip('/') != ours.rstrip('/') and not self._connection.uploaded_ahead(path)]
        if execute and paths:
            self._connection.detached('add_mode', {'paths': paths, 'bits': 0o700})
        return remote_paths

    return _fixup_perms2


def remote_expand_user(original):
    def _remote_expand_user(self, path, sudoable=True, pathsep=None):
        if not _ours(self) or not (path == '~' or path.startswith('~/')):
            return original(self, path, sudoable, pathsep)
        info = self._connection.interpreter_info()
        become_user = self.get_become_option('become_user') if self._connection.become else None
        if sudoable and become_user and become_user != info.get('user'):
            return original(self, path, sudoable, pathsep)
        return info['home'] + path[1:]

    return _remote_expand_user


# The methods each optimisation (ansible_internals.OPTIMISATIONS) patches.
PATCHES = {
    'connect_ahead': {'__init__': init},
    'detached_temp_dirs': {
        '_make_tmp_path': make_tmp_path,
        '_remove_tmp_path': remove_tmp_path,
        '_fixup_perms2': fixup_perms2,
    },
    'home_from_ready': {'_remote_expand_user': remote_expand_user},
}


def install() -> None:
    """Patch ActionBase (in the controller, before workers fork); other connections see no
    change."""
    if getattr(ActionBase, '_ferrogen_action_mixin', False):
        return
    for optimisation, patches in PATCHES.items():
        if ansible_internals.enabled(optimisation):
            for name, wrap in patches.items():
                setattr(ActionBase, name, wrap(getattr(ActionBase, name)))
    ActionBase._ferrogen_action_mixin = True
