"""The container connection types (Mitogen's mitogen_docker, mitogen_kubectl, ...): the agent
runs inside a container, pod or jail, started through the container's own tool by the mux
(mux/src/transport/KIND.rs builds each command line)."""

from __future__ import annotations

import functools
import shlex
from typing import NamedTuple

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure

from ansible_ferrogen.connection import INVENTORY_NAME_OPTION, PYTHON_INTERPRETER_OPTION, Connection

# setns: the tool that finds the container's first process, by mitogen_kind, and the variable
# that gives its path.
SETNS_TOOLS = {
    'docker': 'docker_path',
    'lxc': 'lxc_info_path',
    'lxd': 'lxc_path',
    'machinectl': 'machinectl_path',
}

# kubectl: the options that become kubectl flags, in the order kubernetes.core.kubectl puts
# them before `exec`: (option, variable, flag).
KUBECTL_FLAGS = (
    ('kubectl_namespace', 'ansible_kubectl_namespace', '-n'),
    ('kubectl_kubeconfig', 'ansible_kubectl_kubeconfig', '--kubeconfig'),
    ('kubectl_context', 'ansible_kubectl_context', '--context'),
    ('kubectl_host', 'ansible_kubectl_host', '--server'),
    ('kubectl_username', 'ansible_kubectl_username', '--username'),
    ('kubectl_password', 'ansible_kubectl_password', '--password'),
    ('kubectl_token', 'ansible_kubectl_token', '--token'),
    ('client_cert', 'ansible_kubectl_cert_file', '--client-certificate'),
    ('client_key', 'ansible_kubectl_key_file', '--client-key'),
    ('ca_cert', 'ansible_kubectl_ssl_ca_cert', '--certificate-authority'),
)


class Kind(NamedTuple):
    """What one container type takes from the inventory."""

    # What the agent runs in, for the documentation ("Docker container").
    what: str
    # The program that enters it, as documented.
    tool: str
    # The variables that name the program's path, the one that wins where several are set first.
    tool_vars: tuple[str, ...]
    # Whether ansible_user names an account inside (lxc and lxd enter as root).
    has_user: bool
    # The variable of extra tool arguments (ansible_docker_extra_args), if the type has one.
    extra_args_var: str | None = None


KINDS = {
    'docker': Kind('Docker container', 'docker', ('mitogen_docker_path',), True, 'ansible_docker_extra_args'),
    'podman': Kind('Podman container', 'podman', ('ansible_podman_executable', 'mitogen_podman_path'), True,
                   'ansible_podman_extra_args'),
    'buildah': Kind('Buildah working container', 'buildah', ('mitogen_buildah_path',), True),
    'lxc': Kind('LXC classic container', 'lxc-attach', ('mitogen_lxc_attach_path',), False),
    'lxd': Kind('LXD instance', 'lxc', ('mitogen_lxc_path',), False),
    'incus': Kind('Incus instance', 'incus', ('mitogen_incus_path',), False),
    'kubectl': Kind('Kubernetes pod', 'kubectl', ('mitogen_kubectl_path',), False, 'ansible_kubectl_extra_args'),
    'jail': Kind('FreeBSD jail', '/usr/sbin/jexec', ('mitogen_jexec_path',), True),
    'machinectl': Kind('systemd-nspawn machine, entered as setns does', '/bin/machinectl',
                       ('mitogen_machinectl_path',), True),
    'setns': Kind('container, entered with setns(2) through nsenter', 'the tool of mitogen_kind', (), True),
}


def _var(*names: str) -> list[dict]:
    return [{'name': name} for name in names]


def options(kind: str) -> dict:
    """The options of the mitogen_<kind> connection type."""
    spec = KINDS[kind]
    opts: dict = {
        'remote_addr': {
            'description': f'Name of the {spec.what} (default: inventory hostname).',
            'default': 'inventory_hostname',
            'vars': _var('inventory_hostname', 'ansible_host', f'ansible_{kind}_host'),
        },
        'timeout': {
            'description': 'Seconds allowed for starting the tool and the interpreter inside.',
            'type': 'integer',
            'default': 10,
            'ini': [{'section': 'defaults', 'key': 'timeout'}],
            'env': [{'name': 'ANSIBLE_TIMEOUT'}],
            'vars': _var('ansible_timeout', f'ansible_{kind}_timeout'),
        },
        'python_interpreter': PYTHON_INTERPRETER_OPTION,
        'inventory_name': INVENTORY_NAME_OPTION,
    }
    if spec.has_user:
        opts['remote_user'] = {
            'description': f'Account inside the {spec.what} to run as; unset: its default account.',
            'ini': [{'section': 'defaults', 'key': 'remote_user'}],
            'env': [{'name': 'ANSIBLE_REMOTE_USER'}],
            'vars': _var('ansible_user', f'ansible_{kind}_user'),
            'cli': [{'name': 'user'}],
            'keyword': [{'name': 'remote_user'}],
        }
    if spec.tool_vars:
        opts['tool_path'] = {
            'description': f'Path of C({spec.tool}) if it is not C({spec.tool}) on the PATH.',
            'default': spec.tool,
            'vars': _var(*reversed(spec.tool_vars)),
        }
        if kind == 'podman':
            opts['tool_path']['env'] = [{'name': 'ANSIBLE_PODMAN_EXECUTABLE'}]
    if spec.extra_args_var:
        opts['extra_args'] = {
            'description': f'Extra arguments for C({spec.tool}), before its subcommand, split as a shell would.',
            'default': '',
            'vars': _var(spec.extra_args_var),
        }
    if kind == 'kubectl':
        opts['kubectl_pod'] = {'description': 'Pod name (default: ansible_host).',
                               'vars': _var('ansible_kubectl_pod')}
        opts['kubectl_container'] = {'description': 'Container of the pod (C(-c)); unset: its default.',
                                     'vars': _var('ansible_kubectl_container')}
        for option, var, flag in KUBECTL_FLAGS:
            opts[option] = {'description': f'Passed to kubectl as C({flag}).', 'vars': _var(var)}
        opts['validate_certs'] = {'description': 'False: C(--insecure-skip-tls-verify=true).', 'type': 'boolean',
                                  'vars': _var('ansible_kubectl_verify_ssl')}
    if kind == 'setns':
        opts['kind'] = {'description': 'How the container is known: which tool finds its first process.',
                        'required': True, 'choices': sorted(SETNS_TOOLS), 'vars': _var('mitogen_kind')}
        opts['docker_path'] = {'description': 'docker, for mitogen_kind docker.', 'default': 'docker',
                               'vars': _var('mitogen_docker_path')}
        opts['lxc_path'] = {'description': "LXD's lxc, for mitogen_kind lxd.", 'default': 'lxc',
                            'vars': _var('mitogen_lxc_path')}
        opts['lxc_info_path'] = {'description': "LXC classic's lxc-info, for mitogen_kind lxc.",
                                 'default': 'lxc-info', 'vars': _var('mitogen_lxc_info_path')}
        opts['machinectl_path'] = {'description': 'machinectl, for mitogen_kind machinectl.',
                                   'default': '/bin/machinectl', 'vars': _var('mitogen_machinectl_path')}
    return opts


@functools.cache
def option_names(kind: str) -> frozenset[str]:
    """The options mitogen_<kind> has."""
    return frozenset(options(kind))


def register_options(name: str, kind: str) -> None:
    """Give Ansible plugin `name`'s options from the table above, so that its loader does not
    parse documentation (some 20 ms a plugin in pure Python): the strategy loads every redirected
    plugin before workers fork, container types included. `name` is what the plugin loader
    registers the options under: a legacy plugin's name (`mitogen_docker`), a collection
    plugin's Python module name (see `connection.reuse_builtin_options`)."""
    if not C.config.has_configuration_definition('connection', name):
        C.config.initialize_plugin_configuration_definitions('connection', name, options(kind))


class ContainerConnection(Connection):
    """A connection to an interpreter inside a container, through the container's tool."""

    # The key of KINDS, and the TargetSpec transport (setns plugins may say machinectl).
    kind = 'docker'

    def _optional(self, name: str):
        """The option's value, None where this type has no such option."""
        return self.get_option(name) if name in option_names(self.kind) else None

    def tool_args(self) -> list[str]:
        args = shlex.split(self._optional('extra_args') or '')
        if self.kind != 'kubectl':
            return args
        flags: list[str] = []
        for option, _, flag in KUBECTL_FLAGS:
            value = self.get_option(option)
            if value:
                flags += [flag, str(value)]
        if self.get_option('validate_certs') is False:
            flags.append('--insecure-skip-tls-verify=true')
        return flags + args

    def container_spec(self) -> dict:
        if self.kind == 'setns':
            kind = self.get_option('kind')
            if kind not in SETNS_TOOLS:
                raise AnsibleConnectionFailure(f'mitogen_kind must be one of {", ".join(sorted(SETNS_TOOLS))}, '
                                               f'not {kind!r}')
            return {'tool': self.get_option(SETNS_TOOLS[kind]), 'tool_args': [], 'pod_container': None,
                    'setns_kind': kind}
        return {
            'tool': self._optional('tool_path') or KINDS[self.kind].tool,
            'tool_args': self.tool_args(),
            'pod_container': self._optional('kubectl_container'),
            'setns_kind': None,
        }

    def container_name(self) -> str:
        pod = self._optional('kubectl_pod')
        return pod or self.get_option('remote_addr') or self._play_context.remote_addr

    def build_target_spec(self) -> dict:
        user = self._optional('remote_user')
        return {
            'transport': self.kind,
            'host': self.container_name(),
            'port': None,
            'user': str(user) if user else None,
            'identity_file': None,
            'ssh_executable': 'ssh',
            'ssh_args': [],
            'host_key_checking': False,
            'timeout': int(self.get_option('timeout') or 10),
            'python': self.python_interpreter(),
            'temp_dirs': self.temp_dirs(),
            'container': self.container_spec(),
            'name': self.inventory_name() or self._play_context.remote_addr,
        }

    def _host(self) -> str:
        return self.inventory_name() or self._play_context.remote_addr or ''
