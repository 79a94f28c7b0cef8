"""What a process that forks Ansible's workers can do once for all of them, so that none does it
again and loses it when it exits: the ferrogen strategies do it, and so does the
`ferrogen.mux.preload` callback for connection-only mode."""

from __future__ import annotations

from ansible.plugins.loader import connection_loader, module_loader

from ansible_ferrogen import ansible_internals

# The connection plugins connection-only mode's workers would each load for themselves.
PRELOADED_CONNECTIONS = ('ferrogen.mux.ssh', 'ferrogen.mux.local')


def warm_worker_caches() -> None:
    """Work out here, once, what every forked worker would otherwise work out again on its own
    and lose when it exits: about 4 ms of controller CPU per task and host.

    - The index of module files outside collections: the first `ansible.legacy.` lookup lists
      every module directory. A built-in module's lookup builds the whole index, because the
      built-in directory is listed last.
    - The JSON profiles a module's arguments and result are exchanged with, imported on first
      use.
    """
    module_loader.find_plugin_with_context('ansible.legacy.ping', '.py')
    if not ansible_internals.enabled('json_profiles_ahead'):
        return
    from ansible.module_utils.common.json import Direction, get_module_decoder, get_module_encoder

    get_module_decoder('legacy', Direction.CONTROLLER_TO_MODULE)
    get_module_encoder('legacy', Direction.MODULE_TO_CONTROLLER)


def preload_connections() -> None:
    """Load the collection's connection plugins as a connection-only worker would, with every
    built-in connection plugin loaded first (ansible-playbook has loaded them already: the
    collection's plugins take their options from those), then warm the workers' caches."""
    list(connection_loader.all(class_only=True))
    for name in PRELOADED_CONNECTIONS:
        connection_loader.get(name, class_only=True)
    ansible_internals.start(ansible_internals.EVERY_TASK)
    warm_worker_caches()
