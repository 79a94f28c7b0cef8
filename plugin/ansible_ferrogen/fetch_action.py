"""The fetch action on our connections: the fetched file's digests taken from its stream
(transfer.py), and a fetch with become streamed (issue 20).

Ansible's fetch action reads a file through the slurp module when the task becomes, because its
connection plugins cannot read a file as another account: the whole file then travels base64
encoded in one module output, and the action decodes it in the worker. A ferrogen connection
fetches as the become account itself (`fetch_begin` in that account's interpreter, relayed in
bounded chunks by the login agent). So, on our connections, a become fetch of a file the stat
module (run as the become account) finds readable runs the action's own code for a fetch
without become: its stat is that one, and its `fetch_file` streams as the become account. The
result is the one slurp would give (remote_checksum is the file's SHA-1 either way). Anything
else (a missing or unreadable file, a directory, check mode) takes the action's own path,
slurp included, so its messages are vanilla's.
"""

from __future__ import annotations

import sys

from ansible.errors import AnsibleError
from ansible.plugins.loader import action_loader

from ansible_ferrogen import ansible_internals, transfer
from ansible_ferrogen.connection import Connection

# What this module installs (ansible_internals.OPTIMISATIONS).
OPTIMISATIONS = ('fetch_digests_from_stream', 'fetch_streamed_with_become')

_installed = False


def readable_file_stat(action, source: str, task_vars: dict) -> dict | None:
    """The stat module's result for source as the become account, if it shows a file that
    account can read (it has a checksum); else None."""
    try:
        found = action._execute_remote_stat(source, all_vars=task_vars, follow=True)
    except AnsibleError:
        return None
    if not found.get('exists') or found.get('isdir') or found.get('checksum') in (None, '1', ''):
        return None
    return found


def streamed_with_become(original):
    def run(self, tmp=None, task_vars=None):
        connection = self._connection
        source = self._task.args.get('src')
        if (not isinstance(connection, Connection) or connection.become_for_transfers() is None
                or self._task.check_mode or not isinstance(source, str)
                or not isinstance(self._task.args.get('dest'), str)):
            return original(self, tmp, task_vars)
        source = self._remote_expand_user(connection._shell.join_path(source))
        found = readable_file_stat(self, source, task_vars or {})
        if found is None:
            return original(self, tmp, task_vars)
        # The action's path without become, its one stat and its one expansion of src
        # answered with what was found as the become account; its fetch_file still reads as
        # that account.
        self._execute_remote_stat = lambda *args, **kwargs: found
        self._remote_expand_user = lambda *args, **kwargs: source
        try:
            with connection.become_seen_only_by_transfers():
                return original(self, tmp, task_vars)
        finally:
            del self._execute_remote_stat
            del self._remote_expand_user

    run.ferrogen_fetch_become = True
    return run


def install() -> None:
    """Patch the fetch action's classes (in the controller before workers fork, or in a
    connection-only worker whose task fetches); other connections see no change."""
    global _installed
    if _installed:
        return
    _installed = True
    if ansible_internals.enabled('fetch_digests_from_stream'):
        transfer.install_fetched_digests(sys.modules[ansible_internals.action_class('fetch').__module__])
    if not ansible_internals.enabled('fetch_streamed_with_become'):
        return
    for cls in {action_loader.get(name, class_only=True) for name in ('ansible.legacy.fetch', 'ansible.builtin.fetch')}:
        if cls is not None and not getattr(cls.run, 'ferrogen_fetch_become', False):
            cls.run = streamed_with_become(cls.run)
