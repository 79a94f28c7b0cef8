"""Connection delegation (``mitogen_via``): the route a target's connection takes.

``mitogen_via=<inventory name>`` (a host or group variable, or ``-e``) reaches the target
through that host; ``mitogen_via=<user>@<inventory name>`` through that account on it (the
host's become method). The hop's own ``mitogen_via`` is followed, so chains of any depth
work. Each hop's TargetSpec is built by the hop's own connection plugin from the hop's
inventory variables, as it would be if the hop were the task's target, so that a hop also
targeted directly shares its connection (docs/protocol.md, "Connection delegation").
"""
from __future__ import annotations

import os

from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext

from ansible_ferrogen import ansible_internals

VIA_VAR = 'mitogen_via'

# What the hop's connection plugin reads besides its own options' variables.
HOP_VARS = ('inventory_hostname', 'ansible_python_interpreter', 'ansible_host', 'ansible_become_method',
            'ansible_become_pass', 'ansible_become_password', 'ansible_become_exe', 'ansible_become_flags',
            VIA_VAR)


def delegation(connection) -> dict:
    """The TargetSpec fields that route `connection` through its hops: {} without mitogen_via."""
    variables = ansible_internals.current_task_vars()
    if not variables:
        return {}
    hostvars = variables.get('hostvars') or {}
    name = connection.inventory_name()
    own = hostvars[name] if name and name in hostvars else {}
    # Under delegate_to the connection is the delegated host's: its own variables (where its
    # mitogen_via is, if any) are the task's only delegated ones.
    delegated = variables.get('ansible_delegated_vars') or {}
    if len(delegated) == 1:
        name, own = next(iter(delegated.items()))
    via = own.get(VIA_VAR)
    if not via:
        return {}
    return route_through(str(via), hostvars, [name or '?'])


def route_through(via: str, hostvars, seen: list[str]) -> dict:
    """`via` and `via_become` for a target reached through `via` ("host" or "user@host")."""
    account, _, name = via.rpartition('@')
    if name not in hostvars:
        raise AnsibleConnectionFailure(f'{VIA_VAR}={via}: there is no host {name!r} in the inventory')
    if name in seen:
        raise AnsibleConnectionFailure(f'{VIA_VAR} loops: {" -> ".join([*seen, name])}')
    hop_vars = hostvars[name]
    fields = {'via': hop_spec(name, hop_vars, hostvars, [*seen, name])}
    if account:
        method = hop_vars.get('ansible_become_method') or 'sudo'
        password = hop_vars.get('ansible_become_password') or hop_vars.get('ansible_become_pass')
        fields['via_become'] = {
            'method': method,
            'user': account,
            'exe': hop_vars.get('ansible_become_exe') or method,
            'flags': hop_vars.get('ansible_become_flags') or ('-H -S -n' if method == 'sudo' else ''),
            'password': str(password) if password else None,
            'python': None,
        }
    return fields


def hop_spec(name: str, hop_vars, hostvars, seen: list[str]) -> dict:
    """The TargetSpec of hop `name`, built by its own connection plugin from its variables."""
    from ansible import constants as C
    from ansible.plugins.loader import connection_loader

    from ansible_ferrogen.connection import Connection

    kind = str(hop_vars.get('ansible_connection') or 'ssh')
    play_context = PlayContext()
    play_context.remote_addr = hop_vars.get('ansible_host') or name
    plugin = connection_loader.get(kind, play_context, os.devnull)
    if not isinstance(plugin, Connection):
        raise AnsibleConnectionFailure(
            f'{VIA_VAR}: hop {name} uses connection {kind!r}, which ferrogen cannot route through '
            f'(ssh, local and container hops can be)')
    wanted = set(HOP_VARS)
    for var in C.config.get_plugin_vars('connection', plugin._load_name):
        wanted.add(var)
    options = {var: hop_vars[var] for var in sorted(wanted) if var in hop_vars}
    options.setdefault('inventory_hostname', name)
    plugin.set_options(var_options=options)
    spec = dict(plugin.build_target_spec(), name=name)
    via = options.get(VIA_VAR)
    if via:
        spec.update(route_through(str(via), hostvars, seen))
    return spec


def stack(spec: dict, become: dict | None) -> list[dict]:
    """mitogen_get_stack's answer: each hop from nearest to furthest, accounts as hops of their
    own; passwords are never shown."""
    hops = []
    if spec.get('via'):
        hops.extend(stack(spec['via'], None))
    if spec.get('via_become'):
        hops.append(account_hop(spec['via_become']))
    kwargs = {key: value for key, value in spec.items() if key not in ('via', 'via_become', 'transport')}
    hops.append({'method': spec.get('transport'), 'kwargs': kwargs})
    if become:
        hops.append(account_hop(become))
    return hops


def account_hop(account: dict) -> dict:
    """A become step of the route, its password redacted."""
    kwargs = {key: value for key, value in account.items() if key != 'password'}
    kwargs['password'] = '********' if account.get('password') else None
    return {'method': account.get('method'), 'kwargs': kwargs}
