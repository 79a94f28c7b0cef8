"""What the bootstrap stub set before the agent's source: debug settings, temp dirs, the login service."""

import json
import re


# The compressed agent source, as the bootstrap stub read it from stdin (the stub runs this
# file in its own namespace); become children are started with the same bytes.
SOURCE = globals().get('SOURCE')

# Debug settings the mux puts in the stub before SOURCE (docs/protocol.md): MITOGEN_ROUTER_DEBUG
# makes every interpreter write /tmp/mitogen.<pid>.log; LOG_LEVEL "debug" forwards the agent's
# debug records to the controller (shown at -vvv). Neither ever carries call arguments or
# passwords: only ops, ids, accounts and what a become tool printed, password scrubbed.
ROUTER_DEBUG = bool(globals().get('ROUTER_DEBUG'))
LOG_LEVEL = globals().get('LOG_LEVEL') or 'info'

# The PAM service whose session started this interpreter, set by a become child's stub (the
# become method); a login interpreter finds it out (login_service). A become child that kept
# its caller's environment (su) also gets the files that environment came from, as (path,
# syntax) pairs.
LOGIN_SERVICE = globals().get('LOGIN_SERVICE')
INHERITED_ENV_FILES = globals().get('INHERITED_ENV_FILES') or []

# The name this interpreter shows in ps after `mitogen:`, set by the stub: the controller's
# user@host:pid, or `ansible` where mitogen_mask_remote_name hides it. Become children get it
# too and add their account.
REMOTE_NAME = globals().get('REMOTE_NAME')


# Compression of the link to the mux (docs/protocol.md, "Compression on the agent link"): the
# mux sets COMPRESS_LINK in the stub when it crosses a network and ssh does not compress it;
# this agent then deflates what it sends where that pays. It always reads compressed segments.
# The numbers are worker-ipc's (src/compression.rs), whose tests check these lines, but for the
# level: CPython's zlib at 1 still builds Huffman tables (zlib-rs at 1 does not: the mux uses 2).
COMPRESS_LINK = bool(globals().get('COMPRESS_LINK'))


# Where the private temp dir may live when the controller names nowhere: Ansible's default
# remote_tmp and system_tmpdirs.
TEMP_DIR_CANDIDATES = ('~/.ansible/tmp', '/var/tmp', '/tmp')

# Where the controller says the temp dir goes first (remote_tmp, then system_tmpdirs, as the
# task's settings give them; `~` and `$VAR` are expanded here): hex-encoded JSON set by the stub.
TEMP_DIRS = globals().get('TEMP_DIRS')


def debug_settings():
    """This agent's debug settings as stub statements, for the become children it starts."""
    return ('ROUTER_DEBUG=1;' if ROUTER_DEBUG else '') + ('LOG_LEVEL="debug";' if LOG_LEVEL == 'debug' else '')


def temp_dir_settings():
    """The controller's temp dir settings as a stub statement, for the become children this
    agent starts: each expands `~` to its own account's home, as vanilla's remote_tmp does."""
    return 'TEMP_DIRS="%s";' % TEMP_DIRS if TEMP_DIRS and re.fullmatch('[0-9a-f]+', TEMP_DIRS) else ''


def configured_temp_dirs():
    """The temp dir settings the controller sent, or the defaults where it sent none."""
    if TEMP_DIRS:
        try:
            return [str(path) for path in json.loads(bytes.fromhex(TEMP_DIRS).decode('utf-8'))]
        except (ValueError, TypeError):
            pass
    return list(TEMP_DIR_CANDIDATES)
