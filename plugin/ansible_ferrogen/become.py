"""Become through persistent interpreters: one per account, started once over the login one."""

from __future__ import annotations

import shlex

from ansible.errors import AnsibleError

# Become methods the agent starts interpreters through; any other become plugin's command
# runs verbatim in the login interpreter, as it would over plain ssh.
METHODS = {
    'sudo': 'sudo',
    'ansible.builtin.sudo': 'sudo',
    'su': 'su',
    'ansible.builtin.su': 'su',
    'doas': 'doas',
    'community.general.doas': 'doas',
}

# Flags that cannot work when the tool must start a long-lived interpreter for us, and why.
REFUSED_FLAGS = {
    'sudo': {
        '-b': 'runs the command in the background', '--background': 'runs the command in the background',
        '-u': 'the account is become_user', '--user': 'the account is become_user',
        '-e': 'edits files instead of running a command', '--edit': 'edits files instead of running a command',
        '-l': 'lists privileges instead of running a command', '--list': 'lists privileges',
        '-v': 'only validates credentials', '--validate': 'only validates credentials',
        '-K': 'only removes credentials', '--remove-timestamp': 'only removes credentials',
        '-V': 'only prints the version', '--version': 'only prints the version',
    },
    'su': {
        '-c': 'the command is the interpreter', '--command': 'the command is the interpreter',
        '-C': 'the command is the interpreter', '--session-command': 'the command is the interpreter',
    },
    'doas': {
        '-u': 'the account is become_user', '-s': 'runs a shell instead of the interpreter',
        '-C': 'only checks a configuration file',
    },
}


def method_of(plugin) -> str | None:
    """Our name for the plugin's method, or None when the agent does not drive it."""
    return METHODS.get(getattr(plugin, 'name', None) or getattr(plugin, '_load_name', ''))


def become_spec(plugin, python: str | None) -> dict:
    """The call's `become` field (docs/protocol.md) from a loaded become plugin."""
    method = method_of(plugin)
    flags = plugin.get_option('become_flags') or ''
    check_flags(method, flags)
    password = plugin.get_option('become_pass')
    return {
        'method': method,
        'user': plugin.get_option('become_user') or 'root',
        'exe': plugin.get_option('become_exe') or method,
        'flags': flags,
        'password': str(password) if password else None,
        'python': python,
    }


def check_flags(method: str, flags: str) -> None:
    """Refuse flags that would stop the tool starting our interpreter, naming the flag."""
    try:
        words = shlex.split(flags)
    except ValueError as exc:
        raise AnsibleError(f'become_flags for {method} cannot be parsed ({exc}): {flags!r}') from exc
    refused = REFUSED_FLAGS[method]
    for word in words:
        name = word.split('=', 1)[0]
        if name in refused:
            raise AnsibleError(f'become_flags: {name} is not supported with become_method {method}: {refused[name]}')
        # Bundled short flags such as -bH.
        if name.startswith('-') and not name.startswith('--'):
            for letter in name[1:]:
                if f'-{letter}' in refused:
                    raise AnsibleError(f'become_flags: -{letter} (in {word}) is not supported with '
                                       f'become_method {method}: {refused[f"-{letter}"]}')
