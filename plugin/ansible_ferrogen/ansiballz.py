"""Taking apart the AnsiballZ payload Ansible pipelines to a connection.

Ansible builds one self-contained script per task: a fixed wrapper, a base64 zip of the module
and its module_utils (the same for every task of that module), and the task's arguments. The
agent keeps the zip per interpreter and only the arguments travel again. Where module_cache
put a reference in place of the zip, the zip is looked up rather than sliced out and hashed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shlex

from ansible_ferrogen import ansible_internals, module_cache

WRAPPER_MARKER = b'_ANSIBALLZ_WRAPPER = True'
CALL_MARKER = b'\nif __name__ == "__main__":\n    _ansiballz_main('
# The zip is by far the largest argument; it is sliced out rather than parsed.
ZIP_ARGUMENT = b"\nzip_data='"
ENV_ASSIGNMENT_CHARS = frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_')


# Plain classes rather than dataclasses or NamedTuples, which a connection-only worker would
# build the methods of for every task (about a millisecond for a dataclass, half one for a
# NamedTuple).
class ModulePayload:
    """What the agent needs to run one pipelined module. zip_data is the zip in base64;
    interpreter, the one the command names (ansible_python_interpreter, or the discovered one)."""

    __slots__ = ('zip_data', 'zip_hash', 'args', 'interpreter')

    def __init__(self, zip_data: bytes, zip_hash: str, args: dict, interpreter: str = ''):
        self.zip_data = zip_data
        self.zip_hash = zip_hash
        self.args = args
        self.interpreter = interpreter


def parse(in_data: bytes, cmd: str) -> ModulePayload | None:
    """Return the payload for a pipelined module run, or None if this is not one we understand
    (an older wrapper format, a become command line): the caller then runs it verbatim."""
    if not ansible_internals.enabled('module_arguments_only'):
        return None
    if not in_data.startswith(b'#!') or WRAPPER_MARKER not in in_data:
        return None
    start = in_data.rfind(CALL_MARKER)
    if start < 0:
        return None
    command = _environment_from_command(cmd)
    if command is None:
        return None
    environment, interpreter = command
    call_start = start + len(CALL_MARKER) - len(b'_ansiballz_main(')
    zip_start = in_data.find(ZIP_ARGUMENT, call_start)
    zip_end = in_data.find(b"'", zip_start + len(ZIP_ARGUMENT)) if zip_start >= 0 else -1
    if zip_end < 0:
        return None
    try:
        call_source = in_data[call_start:zip_start] + in_data[zip_end + 2:]
        call = ast.parse(call_source.decode('utf-8').strip(), mode='eval').body
        values = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg != 'date_time'}
        # The zip stays in Ansible's base64 form: the agent decodes it once per interpreter,
        # rather than the worker on every task.
        zip_data = in_data[zip_start + len(ZIP_ARGUMENT):zip_end]
        args = {
            'module_name': values['ansible_module'],
            'module_fqn': values['module_fqn'],
            'params': values['params'],
            'profile': values['profile'],
            'extensions': values.get('extensions') or {},
            # ansible_python_module_rlimit_nofile; 0 leaves the limit alone.
            'rlimit_nofile': values.get('rlimit_nofile') or 0,
            'env': environment,
        }
    except (SyntaxError, ValueError, KeyError, AttributeError, UnicodeDecodeError):
        return None
    referenced = module_cache.zip_for(zip_data)
    if referenced is not None:
        digest, zip_data = referenced
    else:
        digest = hashlib.sha1(zip_data).hexdigest()
    args['zip'] = digest
    # The agent runs the module only if it is that interpreter (else: other_interpreter).
    args['interpreter'] = interpreter
    return ModulePayload(zip_data=zip_data, zip_hash=digest, args=args, interpreter=interpreter)


def _environment_from_command(cmd: str) -> tuple[dict[str, str], str] | None:
    """Ansible puts the task's environment in front of the interpreter:
    `/bin/sh -c 'LANG=C FOO=bar /usr/bin/python3 && sleep 0'`. Return it and the interpreter,
    or None if the command has another shape (become, a custom executable, an interpreter
    with arguments)."""
    try:
        words = shlex.split(cmd)
        if len(words) == 3 and words[1] == '-c':
            words = shlex.split(words[2])
    except ValueError:
        return None
    environment = {}
    for index, word in enumerate(words):
        name, sep, value = word.partition('=')
        if sep and name and not name[0].isdigit() and set(name) <= ENV_ASSIGNMENT_CHARS:
            environment[name] = value
            continue
        rest = words[index + 1:]
        if rest not in ([], ['&&', 'sleep', '0']):
            return None
        return environment, word
    return None


class ModuleCall:
    """A run_module call as exec_command makes it: its args, the zip it needs, the account."""

    __slots__ = ('args', 'blobs', 'as_become')

    def __init__(self, args: dict, blobs: dict, as_become: bool):
        self.args = args
        self.blobs = blobs
        self.as_become = as_become

    @classmethod
    def of(cls, payload, cwd: str | None, as_become: bool) -> ModuleCall:
        args = dict(payload.args, cwd=cwd) if cwd else payload.args
        return cls(args=args, blobs={payload.zip_hash: payload.zip_data}, as_become=as_become)

    def key(self) -> str:
        """Equal for calls that run the same module with the same arguments in the same account
        (the payload's embedded date is not part of the arguments)."""
        return json.dumps([self.as_become, self.args], sort_keys=True)
