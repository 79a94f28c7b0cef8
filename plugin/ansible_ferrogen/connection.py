"""The connection plugins' shared body: every operation becomes a call to ferrogen-mux."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex

import yaml
from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_ferrogen import ansiballz, ansible_internals, frames, module_cache, via
from ansible_ferrogen.client import MuxClient, MuxError, StreamError

display = Display()

# interpreter_info answers by target key, for this worker process.
_interpreter_info: dict[str, dict] = {}
# The failed module result of a target whose Python this ansible-core's modules do not run on,
# by target key (python_too_old_for_modules): kept for this worker process.
_too_old_results: dict[str, bytes] = {}

# (pid, target key) of the targets this worker process asked the mux to connect to ahead.
_connecting_ahead: set[tuple[int, str]] = set()

# Connection-level failures: Ansible marks the host unreachable.
UNREACHABLE_KINDS = frozenset((frames.UNREACHABLE, frames.CONNECTION_LOST))

# Our one long-lived ssh per target multiplexes everything itself; letting ssh fork a
# ControlPersist master would detach the process whose stdio the mux reads.
DROPPED_SSH_OPTIONS = ('controlmaster', 'controlpersist', 'controlpath')

# The inventory name, so that messages and the mux's actor table say which host they mean.
INVENTORY_NAME_OPTION = {
    'description': 'Inventory name of the host, used to name it in messages and in the mux status table.',
    'type': 'string',
    'vars': [{'name': 'inventory_hostname'}],
}

PYTHON_INTERPRETER_OPTION = {
    'description': [
        'Python that runs the persistent interpreter on the target.',
        'Unset or C(auto*) tries python3 and the usual platform paths, as interpreter discovery would.',
    ],
    'type': 'string',
    'vars': [{'name': 'ansible_python_interpreter'}],
}

# Mitogen's switch for ssh's stream compression. ferrogen compresses the link itself where that
# pays (docs/protocol.md, "Compression on the agent link"), so ssh's -C is passed only when this
# is true, or when the user put -C in ssh options they set themselves.
SSH_COMPRESSION_OPTION = {
    'description': [
        "Whether ssh compresses the connection's stream (C(-C)).",
        "Unset: only where C(-C) is in ssh options the user set; Ansible's default ssh_args lose theirs.",
    ],
    'type': 'boolean',
    'vars': [{'name': 'mitogen_ssh_compression'}],
}

# Mitogen's other per-host ssh variables (the spec's "SSH" connection type).
SSH_DEBUG_LEVEL_OPTION = {
    'description': [
        "ssh's own debug level, 0 to 3 (that many C(-v)); its debug lines are shown at -vvv.",
        'The larger of this and O(verbosity) applies.',
    ],
    'type': 'int',
    'vars': [{'name': 'mitogen_ssh_debug_level'}],
}
SSH_KEEPALIVE_INTERVAL_OPTION = {
    'description': [
        'Seconds between keepalives: the mux heartbeats the agent, and ssh is given C(ServerAliveInterval).',
        'Unset: 30, or the FERROGEN_KEEPALIVE_INTERVAL the run was started with.',
    ],
    'type': 'float',
    'vars': [{'name': 'mitogen_ssh_keepalive_interval'}],
}
SSH_KEEPALIVE_COUNT_OPTION = {
    'description': [
        'Keepalives missed before the host is UNREACHABLE (and C(ServerAliveCountMax)).',
        'Unset: 10, or the FERROGEN_KEEPALIVE_COUNT the run was started with.',
    ],
    'type': 'int',
    'vars': [{'name': 'mitogen_ssh_keepalive_count'}],
}
MASK_REMOTE_NAME_OPTION = {
    'description': [
        "Name the host's interpreters C(mitogen:ansible) in ps rather than after the controller"
        " (C(mitogen:user@controller:pid)).",
    ],
    'type': 'boolean',
    'default': False,
    'vars': [{'name': 'mitogen_mask_remote_name'}],
}

# The options ferrogen's ssh plugins have beyond ansible.builtin.ssh's.
SSH_EXTRA_OPTIONS = {
    'ssh_compression': SSH_COMPRESSION_OPTION,
    'ssh_debug_level': SSH_DEBUG_LEVEL_OPTION,
    'keepalive_interval': SSH_KEEPALIVE_INTERVAL_OPTION,
    'keepalive_count': SSH_KEEPALIVE_COUNT_OPTION,
    'mask_remote_name': MASK_REMOTE_NAME_OPTION,
}

# The options ferrogen's local plugins have beyond ansible.builtin.local's.
LOCAL_EXTRA_OPTIONS = {
    'mask_remote_name': MASK_REMOTE_NAME_OPTION,
}

# The most -v ssh takes.
SSH_MAX_DEBUG_LEVEL = 3


# The characters of an interpreter setting that names a program rather than a command line. A
# set rather than a regular expression: compiling one costs every connection-only worker about
# half a millisecond.
PLAIN_PATH_CHARS = frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./+@%:,-')

# libyaml, where PyYAML has it: the borrowed documentation is parsed and written on every run's
# critical path, ten times faster than in pure Python.
YAML_LOADER = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)
YAML_DUMPER = getattr(yaml, 'CSafeDumper', yaml.SafeDumper)


def borrow_documentation(vanilla: str, name: str, short_description: str, extra_options: dict | None = None) -> str:
    """Reuse a built-in plugin's options so every variable users already set keeps working."""
    doc = yaml.load(vanilla, Loader=YAML_LOADER)  # noqa: S506 - a safe loader
    doc['name'] = name
    doc['short_description'] = short_description
    doc.pop('author', None)
    doc['author'] = 'ferrogen developers'
    doc.setdefault('options', {})['python_interpreter'] = PYTHON_INTERPRETER_OPTION
    doc['options']['inventory_name'] = INVENTORY_NAME_OPTION
    doc['options'].update(extra_options or {})
    return yaml.dump(doc, Dumper=YAML_DUMPER, sort_keys=False)


def options_fragment(vanilla: str, extra_options: dict | None = None) -> str:
    """A documentation fragment with a plugin's options, those of the fragments its documentation
    extends, and ours: the collection's plugins document themselves in plain text for ansible-doc
    and extend this, so every variable of the built-in plugin keeps working."""
    from ansible.plugins.loader import fragment_loader

    doc = yaml.load(vanilla, Loader=YAML_LOADER)  # noqa: S506 - a safe loader
    extends = doc.get('extends_documentation_fragment') or []
    options = {}
    for name in extends.split(',') if isinstance(extends, str) else extends:
        fragment = fragment_loader.get(name.strip())
        if fragment is not None:
            options.update(yaml.load(fragment.DOCUMENTATION, Loader=YAML_LOADER).get('options') or {})
    # As Ansible merges fragments: an option the plugin also names keeps the fragment's keys
    # that the plugin does not set.
    for name, option in (doc.get('options') or {}).items():
        options[name] = {**options.get(name, {}), **option}
    options.setdefault('python_interpreter', PYTHON_INTERPRETER_OPTION)
    options.setdefault('inventory_name', INVENTORY_NAME_OPTION)
    options.update(extra_options or {})
    return yaml.dump({'options': options}, Dumper=YAML_DUMPER, sort_keys=False)


def reuse_builtin_options(module_name: str, builtin: str, extra_options: dict | None = None) -> None:
    """Register the options of the collection plugin in module `module_name` as the built-in
    plugin's plus ours, where Ansible has parsed the built-in's already: ansible-playbook loads
    every built-in connection plugin before it forks workers, so a worker that loads ours is
    spared parsing its documentation and fragment (tens of milliseconds a task). The plugin
    loader registers and looks up a collection plugin's options under its Python module name
    (`ansible_collections.ferrogen.mux.plugins.connection.ssh`), not its FQCN. Elsewhere
    (ansible-doc, an ad-hoc run) Ansible parses them as usual; the options are the same."""
    config = C.config
    if config.has_configuration_definition('connection', module_name):
        return
    if not config.has_configuration_definition('connection', builtin):
        return
    options = dict(config.get_configuration_definitions('connection', builtin))
    options.setdefault('python_interpreter', PYTHON_INTERPRETER_OPTION)
    options.setdefault('inventory_name', INVENTORY_NAME_OPTION)
    options.update(extra_options or {})
    config.initialize_plugin_configuration_definitions('connection', module_name, options)


def inside(path: str, directory: str) -> bool:
    """Whether path is directory or below it."""
    return path == directory or path.startswith(directory.rstrip('/') + '/')


def keep_vanilla_attributes(ours: type, vanilla: type) -> None:
    """Give `ours` every attribute of the built-in plugin class it replaces that it lacks.
    Other plugins reach the replaced class through the loader and call its class-level
    helpers (the network connections call ssh's `_create_control_path`)."""
    for klass in reversed(vanilla.__mro__):
        if klass in ConnectionBase.__mro__:
            continue
        for name, value in vars(klass).items():
            if not hasattr(ours, name):
                setattr(ours, name, value)


def ssh_options(args: list[str]) -> dict[str, str]:
    """The -o options among ssh arguments, by lower-case name; the first of a name wins, as
    in ssh."""
    options: dict[str, str] = {}
    for index, arg in enumerate(args):
        option = None
        if arg == '-o' and index + 1 < len(args):
            option = args[index + 1]
        elif arg.startswith('-o') and len(arg) > 2:
            option = arg[2:]
        if option is not None:
            name, _, value = option.replace(' ', '=', 1).partition('=')
            options.setdefault(name.strip().lower(), value.strip())
    return options


def drop_control_options(args: list[str]) -> list[str]:
    """Remove -o ControlMaster/ControlPersist/ControlPath, in both -o X=y and -oX=y forms."""
    kept = []
    skip_next = False
    for index, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        option = None
        if arg == '-o' and index + 1 < len(args):
            option = args[index + 1]
        elif arg.startswith('-o') and len(arg) > 2:
            option = arg[2:]
        if option is not None and option.split('=', 1)[0].strip().lower() in DROPPED_SSH_OPTIONS:
            skip_next = arg == '-o'
            continue
        kept.append(arg)
    return kept


def split_output(result: dict, body: bytes) -> tuple[int, bytes, bytes]:
    """(rc, stdout, stderr) of a task's reply, whose body is stdout then stderr."""
    split = result.get('stdout_len', len(body))
    return result['rc'], body[:split], body[split:]


class NoInterpreter(AnsibleConnectionFailure):
    """The target has no Python to run the agent; ssh itself works (kind `no_interpreter`)."""


class BecomeFailed(AnsibleError):
    """The become tool did not let the account in (kind `become_failed`)."""

    def __init__(self, message: str, tool_answered: bool):
        super().__init__(message)
        # False when nothing answered in time: asking the tool again would only wait again.
        self.tool_answered = tool_answered


# How a become failure reads when the tool never answered (the agent's and the mux's words).
BECOME_TIMEOUTS = ('timed out after becoming', 'did not answer within')


class OtherInterpreter(AnsibleError):
    """The module is meant for another Python than the persistent interpreter."""


class Captured(Exception):
    """Stops a module call in capture mode, carrying the call it would have made."""

    def __init__(self, call: ansiballz.ModuleCall):
        super().__init__(call.args['module_fqn'])
        self.call = call


class NotCaptured(Exception):
    """Capture mode met a command that is not a module call we could run ahead."""


class Connection(ConnectionBase):
    """Runs commands, modules and transfers through the run's ferrogen-mux."""

    # Every new-style module goes to the persistent interpreter as one call (is_pipelining_enabled
    # below), except an async task's: Ansible then writes the module and its async_wrapper to
    # the target and starts the wrapper, which detaches from the interpreter.
    has_pipelining = True
    has_tty = False
    # Module payloads built for this connection may carry a reference instead of the zip.
    resolves_module_references = True

    # Set by the wrapped become plugin when Ansible asks for a become command; the next
    # sudoable exec_command then runs in the become account's interpreter.
    _become_requested = False
    # The become plugin while become_seen_only_by_transfers() hides it from the action.
    _become_for_transfers_only = None
    # The task temp dir action_mixin made in the login interpreter's temp dir: small uploads
    # into it are detached calls.
    detached_temp_dir: str | None = None
    # speculation.py: while capturing, exec_command records the module call instead of
    # making it; results of calls that ran ahead, by ModuleCall.key(), and uploads made ahead.
    _capturing = False
    # speculation.py: work for the worker while the next module call runs on the target.
    while_next_module_runs = None
    # A plain channel to a target that turned out to have no Python (open_shell_channel):
    # every operation of this task then goes through it, as without ferrogen. The next task
    # asks the mux again, so a Python installed meanwhile is used at once.
    _shell_channel = None

    def __init__(self, *args, **kwargs):
        # Once per process; a worker forked by our strategy inherits the strategy's check.
        ansible_internals.start(ansible_internals.EVERY_TASK)
        self._target_spec: tuple[str | None, dict] | None = None
        super().__init__(*args, **kwargs)
        self._ready_results: dict[str, tuple[int, bytes, bytes]] = {}
        self._ready_uploads: set[tuple[str, str]] = set()
        self._used_uploads: set[tuple[str, str]] = set()
        # Payloads parsed while capturing, by id(): each entry holds its bytes, so no other object
        # can take that id while the entry exists.
        self._captured_payloads: dict[int, tuple[bytes, str, ansiballz.ModulePayload]] = {}

    def set_become_plugin(self, plugin) -> None:
        """Keep Ansible's become plugin for its options, but run its commands ourselves."""
        super().set_become_plugin(plugin)
        if plugin is None:
            return
        # Only workers whose task becomes import it.
        from ansible_ferrogen import become

        if become.method_of(plugin) is None:
            return
        connection = self

        def build_become_command(cmd, shell):
            connection._become_requested = bool(cmd)
            return cmd

        plugin.build_become_command = build_become_command

    def is_pipelining_enabled(self, wrap_async: bool = False) -> bool:
        """Modules always travel in the call, whatever the become method (su included)."""
        return not C.DEFAULT_KEEP_REMOTE_FILES and not wrap_async

    def get_option(self, option, hostvars=None):
        # ansible-core 2.18 and older ask the `pipelining` option rather than the method above.
        if option == 'pipelining':
            return self.is_pipelining_enabled()
        return super().get_option(option, hostvars)

    def wants_tty(self) -> bool:
        """Whether a plain command would have had a terminal under the vanilla plugin."""
        return False

    def emulates_tty(self, in_data: bytes | None, sudoable: bool) -> bool:
        """Whether this command runs as if on the terminal the vanilla plugin would give it."""
        return self.wants_tty() and not in_data and sudoable

    def target_spec(self) -> dict:
        """The TargetSpec (docs/protocol.md) that names this host's connection in the mux;
        worked out once per set of options, since one action makes several calls."""
        remote_addr = self._play_context.remote_addr
        if self._target_spec is None or self._target_spec[0] != remote_addr:
            self._target_spec = (remote_addr, dict(self.build_target_spec(), **via.delegation(self)))
        return self._target_spec[1]

    def build_target_spec(self) -> dict:
        """The TargetSpec, from the plugin's options."""
        raise NotImplementedError

    def set_options(self, *args, **kwargs) -> None:
        super().set_options(*args, **kwargs)
        self._target_spec = None

    def become_account(self) -> dict:
        """The account a become call runs as: the task's become plugin decides."""
        from ansible_ferrogen import become

        return become.become_spec(self.become or self._become_for_transfers_only, self.python_interpreter())

    def become_for_transfers(self):
        """The become plugin transfers run as, where the agent drives its method; else None."""
        plugin = self.become or self._become_for_transfers_only
        if plugin is None:
            return None
        from ansible_ferrogen import become

        return plugin if become.method_of(plugin) is not None else None

    @contextlib.contextmanager
    def become_seen_only_by_transfers(self):
        """Within: the action sees no become plugin (`connection.become` is None), while
        put_file and fetch_file still run as the become account (fetch_action.py)."""
        plugin, self.become = self.become, None
        self._become_for_transfers_only = plugin
        try:
            yield
        finally:
            self.become, self._become_for_transfers_only = plugin, None

    def call_account(self, as_become: bool) -> dict | None:
        """The account a call runs as, for every call path (commands, modules, transfers
        streamed or not, detached calls): None for the login account's interpreter, else the
        become account's spec. as_become is what the call asks for: a become command, or a
        transfer that transfers_as_become() gives to the become account."""
        return self.become_account() if as_become else None

    def optional(self, option: str):
        """An option this ansible-core may not have (the ssh plugin's `verbosity` came in
        2.19); None where it lacks it."""
        try:
            return self.get_option(option)
        except (KeyError, AnsibleError):
            return None

    def inventory_name(self) -> str | None:
        """The host's inventory name, where the plugin's options define it."""
        try:
            return self.get_option('inventory_name')
        except (KeyError, AnsibleError):
            return None

    def python_interpreter(self) -> str | None:
        """The Python to start the persistent interpreter with; None: discover one, in
        Ansible's order. An interpreter with arguments or a shell expression is no path to
        start: modules then run through the shell, as vanilla runs them."""
        value = self.get_option('python_interpreter')
        if not value or str(value).startswith('auto') or not set(str(value)) <= PLAIN_PATH_CHARS:
            return None
        return str(value)

    def temp_dirs(self) -> list[str]:
        """Where the interpreter's own temp dir goes first: remote_tmp, then system_tmpdirs, as
        the task's shell options give them (ansible_remote_tmp, ANSIBLE_REMOTE_TMP, ...)."""
        dirs = []
        for option in ('remote_tmp', 'system_tmpdirs'):
            try:
                value = self._shell.get_option(option)
            except (AttributeError, KeyError, AnsibleError):
                continue
            dirs.extend([value] if isinstance(value, str) else list(value or []))
        return [str(path) for path in dirs if path]

    def task_temp_dirs_in_interpreter(self) -> bool:
        """Whether action_mixin may put task temp dirs in the login interpreter's own temp
        dir (every call but unprivileged become ones runs in that interpreter)."""
        return True

    def target_key(self) -> str:
        """The target spec without its name (and its password only as a digest): calls with
        equal keys share a connection."""
        spec = dict(self.target_spec(), name=None)
        if spec.get('password') is not None:
            spec['password'] = hashlib.sha256(spec['password'].encode('utf-8', 'surrogateescape')).hexdigest()
        return json.dumps(spec, sort_keys=True)

    def connect_ahead(self) -> None:
        """Have the mux bring this host's connection up while the task prepares its first
        call (the action builds the module meanwhile). Once per target in a worker; errors
        are left for that call to meet."""
        try:
            target = self.target_spec()
            key = (os.getpid(), self.target_key())
            if key in _connecting_ahead:
                return
            MuxClient.get().connect_ahead(target)
        except AnsibleError as exc:
            display.vvvv(f'ferrogen: not connecting ahead: {exc}', host=self._host())
            return
        _connecting_ahead.add(key)
        display.vvv('ferrogen: connecting ahead of the first call', host=self._host())

    def interpreter_info(self) -> dict:
        """The login interpreter's `ready` (tmpdir, home, user, pid), answered by the mux
        without a round trip to the target; kept for this worker process."""
        key = self.target_key()
        info = _interpreter_info.get(key)
        if info is None:
            info = _interpreter_info[key] = self._call('interpreter_info', {})[0]
        return info

    def python_too_old_for_modules(self) -> bytes | None:
        """The module result that says the persistent interpreter's Python is older than this
        ansible-core's modules need (None if it is not): the words vanilla's module_utils use,
        naming the version found, also where vanilla's wrapper dies with a traceback first."""
        minimum = ansible_internals.module_python_minimum()
        try:
            info = self.interpreter_info()
        except AnsibleError:
            # No agent (the module call says why), or a connection type whose mux target
            # answers no interpreter_info (sudo, su, doas connections): nothing to tell.
            return None
        found = tuple(int(part) for part in str(info.get('version', '')).split('.') if part.isdigit())
        if minimum is None or not found or found >= minimum:
            return None
        key = self.target_key()
        if key not in _too_old_results:
            # sys.version in full, as module_utils quotes it: one more command, on such hosts only.
            python = shlex.quote(str(info.get('python')))
            rc, out, _ = split_output(*self._exec_shell(
                f'{python} -c "import sys; print(\'\'.join(sys.version.splitlines()))"', None, False, False, None))
            version = out.decode('utf-8', 'replace').strip() if rc == 0 and out.strip() else info['version']
            message = (f"Ansible requires Python {'.'.join(map(str, minimum))} or newer on the target. "
                       f"Current version: {version}")
            _too_old_results[key] = json.dumps({'failed': True, 'msg': message}).encode()
        return _too_old_results[key]

    def detached(self, op: str, args: dict, body: bytes = b'') -> None:
        """Send a call that the mux acknowledges at once (docs/protocol.md, "Detached calls")."""
        self._run(op, lambda client, target, account: client.call(target, op, args, body, None, account,
                                                                  detached=True))

    def _connect(self):
        # The mux connects on the first call and keeps the connection for the whole run.
        self._connected = True
        return self

    def _call(self, op: str, args: dict, body: bytes = b'', blobs: dict[str, bytes] | None = None,
              as_become: bool = False, while_waiting=None):
        return self._run(op, lambda client, target, account: client.call(
            target, op, args, body, blobs, account, while_waiting=while_waiting), as_become)

    def _run(self, op: str, request, as_become: bool = False):
        """request(client, target, become) against the mux, its errors as Ansible's."""
        target = self.target_spec()
        account = self.call_account(as_become)
        try:
            return request(MuxClient.get(), target, account)
        except MuxError as exc:
            if exc.kind == frames.NO_INTERPRETER:
                raise NoInterpreter(str(exc)) from exc
            if exc.kind in UNREACHABLE_KINDS:
                raise AnsibleConnectionFailure(str(exc)) from exc
            if exc.kind == frames.NOT_FOUND:
                raise AnsibleFileNotFound(str(exc)) from exc
            if exc.kind == frames.OTHER_INTERPRETER:
                raise OtherInterpreter(str(exc)) from exc
            if exc.kind == frames.BECOME_FAILED:
                raise BecomeFailed(f'{op} on {target.get("name")}: {exc}',
                                   not any(words in str(exc) for words in BECOME_TIMEOUTS)) from exc
            raise AnsibleError(f'{op} on {target.get("name")}: {exc}') from exc
        except StreamError as exc:
            raise AnsibleError(f'{op} on {target.get("name")}: {exc}') from exc

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run a command, or a pipelined module, on the target."""
        try:
            return self.exec_through_mux(cmd, in_data, sudoable)
        except BecomeFailed as failure:
            return self.exec_after_become_failure(cmd, in_data, sudoable, failure)

    def exec_after_become_failure(self, cmd: str, in_data: bytes | None, sudoable: bool,
                                  failure: BecomeFailed) -> tuple[int, bytes, bytes]:
        """The become tool refused the account: the command runs once more through Ansible's own
        plugin for this transport, so the task fails as it fails without ferrogen (the same
        keys and message, whatever the ansible-core: "Incorrect sudo password", or the tool's
        whole output in module_stderr). Nothing ran as the account, so nothing runs twice."""
        channel = self.vanilla_channel() if failure.tool_answered else None
        if channel is None:
            raise failure
        display.vvv(f'ferrogen: {failure}: asking the become tool again as vanilla Ansible does', host=self._host())
        cmd = type(self.become).build_become_command(self.become, cmd, self._shell)
        return channel.exec_command(cmd, in_data=module_cache.expand(in_data) if in_data else in_data,
                                    sudoable=sudoable)

    def vanilla_channel(self):
        """Ansible's own connection plugin for this transport, set up as this connection is
        (options, shell, become); None where there is none to ask."""
        return None

    def exec_through_mux(self, cmd: str, in_data: bytes | None, sudoable: bool) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        as_become = sudoable and self._become_requested
        self._become_requested = False
        cwd = getattr(self, 'cwd', None)
        payload = self._parse_payload(in_data, cmd) if in_data else None
        call = ansiballz.ModuleCall.of(payload, to_text(cwd) if cwd else None, as_become) if payload else None
        if self._shell_channel is not None and not self._capturing:
            return self.exec_over_shell_channel(cmd, in_data, sudoable, as_become)
        if self._capturing:
            if call is None:
                raise NotCaptured(cmd)
            self._captured_payloads[id(in_data)] = (in_data, cmd, payload)
            raise Captured(call)
        if call is not None:
            # Only a prepared copy has results waiting: other calls skip building the key.
            ready = self._ready_results.pop(call.key(), None) if self._ready_results else None
            if ready is not None:
                display.vvv(f'ferrogen: {payload.args["module_fqn"]} already ran with the call before it',
                            host=self._host())
                return ready
            too_old = self.python_too_old_for_modules()
            if too_old is not None:
                return 1, too_old, b''
            display.vvv(f'ferrogen: run {payload.args["module_fqn"]} in the persistent interpreter', host=self._host())
            while_waiting, self.while_next_module_runs = self.while_next_module_runs, None
            try:
                result, body = self._call('run_module', call.args, blobs=call.blobs, as_become=as_become,
                                          while_waiting=while_waiting)
            except NoInterpreter as exc:
                self.open_shell_channel(exc)
                return self.exec_over_shell_channel(cmd, in_data, sudoable, as_become)
            except OtherInterpreter as exc:
                display.vvv(f'ferrogen: {exc}: through the shell', host=self._host())
                result, body = self._exec_shell(cmd, in_data, sudoable, as_become, cwd)
        else:
            try:
                result, body = self._exec_shell(cmd, in_data, sudoable, as_become, cwd)
            except NoInterpreter as exc:
                self.open_shell_channel(exc)
                return self.exec_over_shell_channel(cmd, in_data, sudoable, as_become)
        return split_output(result, body)

    def _exec_shell(self, cmd: str, in_data: bytes | None, sudoable: bool, as_become: bool, cwd):
        """Run cmd with the account's shell, as the vanilla plugins run every command."""
        display.vvv(f'ferrogen: exec {cmd}', host=self._host())
        if in_data:
            in_data = module_cache.expand(in_data)
        args = {'cmd': cmd, 'emulate_tty': self.emulates_tty(in_data, sudoable)}
        if cwd:
            args['cwd'] = to_text(cwd)
        return self._call('exec_command', args, in_data or b'', as_become=as_become)

    def open_shell_channel(self, exc: NoInterpreter) -> None:
        """Set _shell_channel up for a target without Python; only a transport with a plain
        shell channel (ssh) has one."""
        raise exc

    def exec_over_shell_channel(self, cmd: str, in_data: bytes | None, sudoable: bool,
                                as_become: bool) -> tuple[int, bytes, bytes]:
        """Run the command as vanilla Ansible would, over the plain channel: results and
        failures are vanilla's (a module fails as it does without Python)."""
        if as_become:
            # Our become plugin hands commands through unchanged (set_become_plugin); the plain
            # channel needs them wrapped by the plugin's own method.
            cmd = type(self.become).build_become_command(self.become, cmd, self._shell)
        return self._shell_channel.exec_command(cmd, in_data=module_cache.expand(in_data) if in_data else in_data,
                                                sudoable=sudoable)

    def has_interpreter(self) -> bool:
        """Whether the target runs our agent (False: it has no Python). Answered by the call
        that the first helper of an action makes anyway (interpreter_info)."""
        if self._shell_channel is not None:
            return False
        try:
            self.interpreter_info()
        except NoInterpreter as exc:
            self.open_shell_channel(exc)
            return False
        return True

    def _parse_payload(self, in_data: bytes, cmd: str) -> ansiballz.ModulePayload | None:
        """ansiballz.parse, answered from capture when the action sends a payload built then
        (speculation.py hands it the same one)."""
        captured = self._captured_payloads.get(id(in_data))
        if captured is not None and captured[0] is in_data and captured[1] == cmd:
            return captured[2]
        return ansiballz.parse(in_data, cmd)

    def capture(self, run) -> ansiballz.ModuleCall | None:
        """The module call run() would make through this connection, without making it; None
        if run() makes none that we could run ahead (see speculation.py)."""
        self._capturing = True
        try:
            run()
        except Captured as captured:
            return captured.call
        except Exception as exc:  # noqa: BLE001 - whatever stopped it, the real run meets it again
            display.vvvv(f'ferrogen: nothing to run ahead: {exc}', host=self._host())
        finally:
            self._capturing = False
        return None

    def run_module_then(self, first: ansiballz.ModuleCall,
                        branches: list[tuple[dict, ansiballz.ModuleCall]]) -> None:
        """Run first and then the first module of branches whose condition first's result
        meets, in one call; keep their results for exec_command to answer the same calls with
        when the action makes them."""
        blobs = dict(first.blobs)
        for _, call in branches:
            blobs.update(call.blobs)
        args = dict(first.args, then=[{'if': condition, 'args': call.args} for condition, call in branches])
        display.vvv(f'ferrogen: run {first.args["module_fqn"]}, then the module it calls for', host=self._host())
        try:
            result, body = self._call('run_module', args, blobs=blobs, as_become=first.as_become)
        except OtherInterpreter:
            return  # nothing ran: the action's own calls go through the shell
        then = result.get('then') or {}
        ran = then.get('ran')
        first_len = len(body) if ran is None else result['body_len']
        self._ready_results[first.key()] = split_output(result, body[:first_len])
        if ran is not None:
            self._ready_results[branches[ran][1].key()] = split_output(then, body[first_len:])

    def prepare_upload(self, in_path: str, out_path: str, data: bytes) -> None:
        """Upload a small file into the task temp dir now, already u+rwx as the action's
        _fixup_perms2 would make it; put_file(in_path, out_path) is then already done."""
        self.detached('put_file', {'path': out_path, 'mode': 0o700}, data)
        self._ready_uploads.add((in_path, out_path))

    def uploaded_ahead(self, remote_path: str) -> bool:
        """Whether remote_path is an upload prepare_upload made (the module that used it may
        already have moved it away)."""
        return any(out_path == remote_path for _, out_path in self._ready_uploads | self._used_uploads)

    def forget_ready(self) -> list[str]:
        """Drop what ran ahead and was not asked for; the modules among it, by name."""
        unused = [json.loads(key)[1]['module_fqn'] for key in self._ready_results]
        self._ready_results.clear()
        self._captured_payloads.clear()
        self._ready_uploads.clear()
        self._used_uploads.clear()
        return unused

    def transfers_as_become(self, remote_path: str) -> bool:
        """Whether a transfer of remote_path runs in the become account's interpreter.

        Action plugins put files into the task's remote temp dir, which the login account
        created (0700) and whose files Ansible then hands to the become account itself
        (_fixup_perms2) and chmods as the login account: those stay the login account's, as
        with vanilla Ansible. Any other path of a become task is read or written by the
        become account, so nothing the become account may read lands somewhere another
        account can read it.
        """
        if self.become_for_transfers() is None:
            return False
        tmpdir = getattr(self._shell, 'tmpdir', None)
        if tmpdir:
            tmpdir = tmpdir.rstrip('/') + '/'
            if remote_path.startswith(tmpdir):
                return False
        return True

    def _progress(self, verb: str, path: str):
        host = self._host()

        def report(done: int, total: int | None, rate: float) -> None:
            of = f'/{total}' if total is not None else ''
            display.vvv(f'ferrogen: {verb} {path}: {done}{of} bytes, {rate / 1e6:.1f} MB/s', host=host)

        return report

    def put_file(self, in_path: str, out_path: str) -> None:
        """Write a controller file to the target, atomically: in one call up to 124 KiB,
        streamed beyond."""
        super().put_file(in_path, out_path)
        try:
            handle = open(in_path, 'rb')  # noqa: SIM115 - closed below, also on errors
        except OSError as exc:
            raise AnsibleFileNotFound(f'file or module does not exist: {in_path}: {exc}') from exc
        if (in_path, out_path) in self._ready_uploads:
            self._ready_uploads.discard((in_path, out_path))
            self._used_uploads.add((in_path, out_path))
            handle.close()
            return
        as_become = self.transfers_as_become(out_path)
        with handle:
            data = handle.read(frames.SMALL_FILE_LIMIT + 1)
            if len(data) <= frames.SMALL_FILE_LIMIT:
                display.vvv(f'ferrogen: put {in_path} to {out_path} ({len(data)} bytes in one call)',
                            host=self._host())
                if self.detached_temp_dir and inside(out_path, self.detached_temp_dir):
                    # The action's next call uses the file, and fails if this did.
                    self.detached('put_file', {'path': out_path}, data)
                else:
                    self._call('put_file', {'path': out_path}, data, as_become=as_become)
                return
            from ansible_ferrogen import transfer  # only workers that stream a file import it

            handle.seek(0)
            size = os.fstat(handle.fileno()).st_size
            ahead = ', hashed ahead' if os.path.realpath(in_path) in transfer.DIGESTS_AHEAD else ''
            display.vvv(f'ferrogen: stream {in_path} to {out_path} ({size} bytes{ahead})', host=self._host())
            report = self._progress('put', out_path)
            self._run('put_file', lambda client, target, account: client.put_stream(
                target, {'path': out_path, 'size': size}, handle, size, account, report), as_become)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a target file to the controller, streamed; the local file is replaced
        atomically (hidden temp file, fsync, rename, directory fsync)."""
        from ansible_ferrogen import transfer  # only workers that fetch import it

        super().fetch_file(in_path, out_path)
        display.vvv(f'ferrogen: fetch {in_path} to {out_path}', host=self._host())
        report = self._progress('fetch', in_path)
        with transfer.AtomicFile(out_path) as sink:
            result = self._run('fetch_file', lambda client, target, account: client.fetch_stream(
                target, in_path, sink, account, report), self.transfers_as_become(in_path))
            sink.commit(transfer.fetched_mode(out_path, self.fetched_file_mode(result.get('mode'))))
            transfer.record_fetched(out_path, sink.digests())

    def fetched_file_mode(self, remote_mode: int | None) -> int:
        """The mode (before the umask) a newly fetched file gets: the remote file's, as sftp
        gives it."""
        return 0o644 if remote_mode is None else remote_mode

    def reset(self) -> None:
        """Shut this host's interpreters down; the next task starts fresh ones."""
        client = MuxClient.get(start=False)
        if client is None:
            return  # no mux yet, so no connection to reset
        try:
            client.reset(self.target_spec())
        except MuxError as exc:
            raise AnsibleConnectionFailure(f'reset of {self._host()} failed: {exc}') from exc

    def close(self) -> None:
        """The connection belongs to the mux and outlives this worker."""
        self._connected = False

    def _host(self) -> str:
        return self._play_context.remote_addr or ''


class SshConnection(Connection):
    """Connection over one long-lived ssh per target."""

    transport = 'ssh'

    def wants_tty(self) -> bool:
        # Vanilla ssh adds -tt to commands without stdin: stderr merges into stdout, \n becomes \r\n.
        return bool(self.get_option('use_tty'))

    def _exec_shell(self, cmd: str, in_data: bytes | None, sudoable: bool, as_become: bool, cwd):
        result, body = super()._exec_shell(cmd, in_data, sudoable, as_become, cwd)
        if self.emulates_tty(in_data, sudoable):
            body += self.closing_notice()
        return result, body

    def closing_notice(self) -> bytes:
        """What ssh prints on stderr when a session with a terminal ends, and vanilla's
        exec_command returns: "Shared connection to H closed." through a ControlPersist master
        (Ansible's default ssh_args), else "Connection to H closed."; nothing when ssh is
        told to be quiet."""
        args = []
        for option in ('ssh_args', 'ssh_common_args', 'ssh_extra_args'):
            value = self.get_option(option)
            if value:
                args.extend(shlex.split(value))
        options = ssh_options(args)
        if '-q' in args or options.get('loglevel', '').upper() in ('QUIET', 'FATAL', 'ERROR'):
            return b''
        shared = (options.get('controlmaster', 'no').lower() not in ('no', 'false')
                  and options.get('controlpersist', 'no').lower() not in ('no', 'false'))
        host = self.get_option('host') or self._play_context.remote_addr
        return f'{"Shared connection" if shared else "Connection"} to {host} closed.\r\n'.encode()

    def open_shell_channel(self, exc: NoInterpreter) -> None:
        """Ansible's own ssh plugin, set up as this connection is (options, shell, become)."""
        if self._shell_channel is not None:
            return
        display.vvv(f'ferrogen: running this task over plain ssh: {exc}', host=self._host())
        self._shell_channel = self.vanilla_channel()

    def vanilla_channel(self):
        return builtin_plugin(self, 'ansible.builtin.ssh')

    def reset(self) -> None:
        """Also end the plain ssh's own master connection, as vanilla's reset does."""
        super().reset()
        if self._shell_channel is not None:
            self._shell_channel.reset()

    def put_file(self, in_path: str, out_path: str) -> None:
        """Through the mux; over plain ssh (scp/sftp, as vanilla) on a target without Python."""
        if self._shell_channel is None:
            try:
                return super().put_file(in_path, out_path)
            except NoInterpreter as exc:
                self.open_shell_channel(exc)
        return self._shell_channel.put_file(in_path, out_path)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Through the mux; over plain ssh (scp/sftp, as vanilla) on a target without Python."""
        if self._shell_channel is None:
            try:
                return super().fetch_file(in_path, out_path)
            except NoInterpreter as exc:
                self.open_shell_channel(exc)
        return self._shell_channel.fetch_file(in_path, out_path)

    def ssh_options(self) -> list[str]:
        """ssh_args, ssh_common_args and ssh_extra_args, with -C only where the user asked for
        ssh's compression: mitogen_ssh_compression true, or -C in an option they set (Ansible's
        default ssh_args carry one). The mux compresses the link itself otherwise."""
        ssh_args = []
        for option in ('ssh_args', 'ssh_common_args', 'ssh_extra_args'):
            # An ansible-core without origins keeps every -C, as vanilla ssh would.
            value, origin = (self.get_option_and_origin(option) if hasattr(self, 'get_option_and_origin')
                             else (self.get_option(option), None))
            words = shlex.split(value) if value else []
            ssh_args.extend(word for word in words if word != '-C' or origin != 'default')
        compression = self.get_option('ssh_compression')
        if compression is False:
            ssh_args = [word for word in ssh_args if word != '-C']
        elif compression and '-C' not in ssh_args:
            ssh_args.append('-C')
        return drop_control_options(ssh_args)

    def build_target_spec(self) -> dict:
        port = self.get_option('port')
        return {
            'transport': 'ssh',
            'host': self.get_option('host') or self._play_context.remote_addr,
            'port': int(port) if port else None,
            'user': self.get_option('remote_user') or None,
            'identity_file': os.path.expanduser(self.get_option('private_key_file'))
            if self.get_option('private_key_file') else None,
            'ssh_executable': self.get_option('ssh_executable') or 'ssh',
            'ssh_args': self.ssh_options(),
            'host_key_checking': bool(self.get_option('host_key_checking')),
            'timeout': int(self.get_option('timeout') or 10),
            'python': self.python_interpreter(),
            'temp_dirs': self.temp_dirs(),
            'name': self.inventory_name() or self._play_context.remote_addr,
            **self.login_settings(),
        }

    def login_settings(self) -> dict:
        """The TargetSpec's password, ssh debug level, keepalive and process name fields; each
        left out where unset, as the mux's defaults then apply."""
        settings = {}
        password = self.optional('password') or self._play_context.password
        if password:
            settings['password'] = str(password)
        level = max(int(self.optional('ssh_debug_level') or 0), int(self.optional('verbosity') or 0))
        if level > 0:
            settings['ssh_debug_level'] = min(level, SSH_MAX_DEBUG_LEVEL)
        interval = self.optional('keepalive_interval')
        if interval is not None:
            settings['keepalive_interval'] = float(interval)
        count = self.optional('keepalive_count')
        if count is not None:
            settings['keepalive_count'] = int(count)
        if self.optional('mask_remote_name'):
            settings['mask_remote_name'] = True
        return settings


def builtin_plugin(connection: Connection, name: str):
    """Ansible's own connection plugin `name`, set up as `connection` is (options, shell, become)."""
    from ansible.plugins.loader import connection_loader

    # The loader's own method: the strategy redirects the builtin names to us on the loader instance.
    channel, _ = type(connection_loader).get_with_context(connection_loader, name, connection._play_context,
                                                          shell=connection._shell)
    channel.set_options(direct={option: value for option, value in connection.get_options().items()
                                if option in channel.option_definitions})
    channel.set_become_plugin(connection.become)
    # The local plugin starts its commands in the directory the action chose.
    channel.cwd = getattr(connection, 'cwd', None)
    return channel


class LocalConnection(Connection):
    """Connection to a persistent interpreter on the controller itself."""

    # Not _remote_is_local: the built-in local plugin is not either (only network connections
    # are), so modules run under ansible_python_interpreter and temp dirs go under remote_tmp.
    transport = 'local'

    def fetched_file_mode(self, remote_mode: int | None) -> int:
        """As shutil.copyfile (the vanilla local plugin) creates it."""
        return 0o666

    def vanilla_channel(self):
        return builtin_plugin(self, 'ansible.builtin.local')

    def build_target_spec(self) -> dict:
        return {
            'transport': 'local',
            'host': None,
            'port': None,
            'user': None,
            'identity_file': None,
            'ssh_executable': 'ssh',
            'ssh_args': [],
            'host_key_checking': False,
            'timeout': 30,
            'python': self.python_interpreter(),
            'temp_dirs': self.temp_dirs(),
            'name': self.inventory_name() or 'localhost',
            **({'mask_remote_name': True} if self.optional('mask_remote_name') else {}),
        }
