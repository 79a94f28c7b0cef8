"""Keeping the module zip out of every task's payload.

For each task Ansible loads the module's zip (a pickle of about 400 KB) from its AnsiballZ cache
and renders it, base64 and quoted, into a fresh wrapper script, which our connection then takes
apart again to send only the arguments. When a module call goes to a ferrogen connection and
will be pipelined, the zip is instead stored once per worker process under its hash and the
wrapper carries a short reference to it; the connection resolves the reference and the mux
asks for the zip's bytes only if it has never seen that hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from ansible.executor import module_common
from ansible.plugins.action import ActionBase

from ansible_ferrogen import ansible_internals

# A reference in place of the zip's base64 text: plain ASCII, so Ansible's repr() keeps it as is.
BLOB_REFERENCE_PREFIX = b'ferrogen-blob:'

# Hash -> the zip in Ansible's base64 form, for every zip referenced by this process.
_zips: dict[str, bytes] = {}
# Cache file (path, inode, size, mtime) -> (the cache entry as loaded, the same with a reference).
_loaded: dict[tuple, tuple] = {}


class _State:
    # True while Ansible builds a module for a ferrogen connection that will pipeline it.
    referencing = False


def zip_for(reference: bytes) -> tuple[str, bytes] | None:
    """(hash, zip) for a reference this process made, else None."""
    if not reference.startswith(BLOB_REFERENCE_PREFIX):
        return None
    digest = reference[len(BLOB_REFERENCE_PREFIX):].decode('ascii', 'replace')
    zip_data = _zips.get(digest)
    return None if zip_data is None else (digest, zip_data)


def expand(payload: bytes) -> bytes:
    """The payload with every reference replaced by its zip, for running it verbatim."""
    for digest, zip_data in _zips.items():
        reference = BLOB_REFERENCE_PREFIX + digest.encode('ascii')
        if reference in payload:
            payload = payload.replace(reference, zip_data)
    return payload


def _load(original_load, path: str):
    status = os.stat(path)
    key = (path, status.st_ino, status.st_size, status.st_mtime_ns)
    entry = _loaded.get(key)
    if entry is None:
        cached = original_load(path)
        zip_data = bytes(cached.zip_data)
        digest = hashlib.sha1(zip_data).hexdigest()
        _zips[digest] = zip_data
        referenced = dataclasses.replace(cached, zip_data=BLOB_REFERENCE_PREFIX + digest.encode('ascii'))
        entry = _loaded[key] = (cached, referenced)
    return entry[1] if _State.referencing else entry[0]


def _references_allowed(action: ActionBase) -> bool:
    """Only a ferrogen connection that will pipeline the module may receive a reference: any
    payload that is written to a file (async tasks, keep_remote_files) keeps the whole zip."""
    connection = action._connection
    if not getattr(connection, 'resolves_module_references', False):
        return False
    return not action._task.async_val and connection.is_pipelining_enabled(False)


def install() -> None:
    """Patch Ansible (in the controller, before workers fork) to build referencing payloads."""
    if getattr(ActionBase._configure_module, 'ferrogen_references', False) \
            or not ansible_internals.enabled('module_zip_by_reference'):
        return
    cached_module_class = module_common._CachedModule
    original_load = cached_module_class.load
    original_configure = ActionBase._configure_module

    def load(cls, path):
        return _load(original_load, path)

    def _configure_module(self, module_name, module_args, task_vars):
        if not _references_allowed(self):
            return original_configure(self, module_name, module_args, task_vars)
        _State.referencing = True
        try:
            return original_configure(self, module_name, module_args, task_vars)
        finally:
            _State.referencing = False

    _configure_module.ferrogen_references = True
    cached_module_class.load = classmethod(load)
    ActionBase._configure_module = _configure_module
