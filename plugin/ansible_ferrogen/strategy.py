"""What the mitogen_* strategies add to Ansible's own: a mux for the run, and connections
redirected to it."""

from __future__ import annotations

import contextlib
import os

from ansible import __version__ as ansible_version
from ansible.executor.process.worker import WorkerProcess
from ansible.plugins.loader import action_loader, become_loader, connection_loader
from ansible.utils.display import Display

from ansible_ferrogen import TESTED_ANSIBLE_CORE, action_mixin, ansible_internals, client, fetch_action, module_cache, speculation
from ansible_ferrogen.preload import warm_worker_caches
from ansible_ferrogen.mux_process import MuxProcess

display = Display()

PLUGINS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plugins')
CONNECTION_DIR = os.path.join(PLUGINS_DIR, 'connection')
# become methods Mitogen users expect that ansible-core itself lacks (doas).
BECOME_DIR = os.path.join(PLUGINS_DIR, 'become')
# mitogen_get_stack.
ACTION_DIR = os.path.join(PLUGINS_DIR, 'action')

# Built-in connection names and the plugin that replaces each.
REDIRECTS = {
    'ssh': 'mitogen_ssh',
    'smart': 'mitogen_ssh',
    'ansible.builtin.ssh': 'mitogen_ssh',
    'ansible.builtin.smart': 'mitogen_ssh',
    'local': 'mitogen_local',
    'ansible.builtin.local': 'mitogen_local',
    # Containers, as Mitogen redirects them, by short name and by the name of the collection
    # that ships Ansible's own plugin (which need not be installed).
    'docker': 'mitogen_docker',
    'community.docker.docker': 'mitogen_docker',
    'podman': 'mitogen_podman',
    'containers.podman.podman': 'mitogen_podman',
    'buildah': 'mitogen_buildah',
    'containers.podman.buildah': 'mitogen_buildah',
    'lxc': 'mitogen_lxc',
    'community.general.lxc': 'mitogen_lxc',
    'lxd': 'mitogen_lxd',
    'community.general.lxd': 'mitogen_lxd',
    'incus': 'mitogen_incus',
    'community.general.incus': 'mitogen_incus',
    'kubectl': 'mitogen_kubectl',
    'kubernetes.core.kubectl': 'mitogen_kubectl',
    'community.kubernetes.kubectl': 'mitogen_kubectl',
    'jail': 'mitogen_jail',
    'community.general.jail': 'mitogen_jail',
    'machinectl': 'mitogen_machinectl',
    'setns': 'mitogen_setns',
}

_warned_version = False


def warn_if_untested() -> None:
    """Newer ansible-core gets a warning, never a refusal."""
    global _warned_version
    release = tuple(int(part) for part in ansible_version.split('.')[:2] if part.isdigit())
    if release not in TESTED_ANSIBLE_CORE and not _warned_version:
        _warned_version = True
        tested = ', '.join('.'.join(map(str, version)) for version in TESTED_ANSIBLE_CORE)
        display.warning(f'ferrogen is tested with ansible-core {tested}; running with {ansible_version} anyway')


def name_worker_tasks() -> None:
    """Let each forked worker tell the mux which task its calls belong to."""
    if getattr(WorkerProcess._run, 'ferrogen_names_tasks', False) or not ansible_internals.enabled('task_names'):
        return
    original = WorkerProcess._run

    def _run(self):
        client.current_task = self._task.get_name()
        return original(self)

    _run.ferrogen_names_tasks = True
    WorkerProcess._run = _run


@contextlib.contextmanager
def redirected_connections():
    """Send ssh/local/smart to the mitogen_* plugins while the strategy runs; workers forked
    meanwhile inherit the patched loader."""
    connection_loader.add_directory(CONNECTION_DIR)
    become_loader.add_directory(BECOME_DIR)
    action_loader.add_directory(ACTION_DIR)
    original = connection_loader.get_with_context

    def get_with_context(name, *args, **kwargs):
        return original(REDIRECTS.get(name, name), *args, **kwargs)

    connection_loader.get_with_context = get_with_context
    # Loaded here, once, rather than in every forked worker (each worker would parse the
    # borrowed documentation again: tens of milliseconds a task).
    for name in sorted(set(REDIRECTS.values())):
        connection_loader.get(name, class_only=True)
    try:
        yield
    finally:
        connection_loader.get_with_context = original


def strategy_with_mux(base: type) -> type:
    """Return a subclass of one of Ansible's strategies that runs through ferrogen-mux."""

    class StrategyModule(base):
        def run(self, iterator, play_context):
            warn_if_untested()
            ansible_internals.start()
            name_worker_tasks()
            module_cache.install()
            action_mixin.install()
            speculation.install()
            fetch_action.install()
            MuxProcess.ensure()
            warm_worker_caches()
            with redirected_connections():
                return super().run(iterator, play_context)

    StrategyModule.__doc__ = f'{base.__module__} through ferrogen-mux'
    return StrategyModule
