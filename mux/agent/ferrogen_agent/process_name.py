"""The name the agent shows in ps (mitogen:user@controller:pid)."""

import os
import pwd
import re

from .settings import LOGIN_SERVICE, REMOTE_NAME


# Characters a REMOTE_NAME may have: the mux keeps to these, so it needs no quoting in a stub.
REMOTE_NAME_CHARS = re.compile(r'[A-Za-z0-9._@:+-]+')


def remote_name_setting():
    """This agent's REMOTE_NAME as a stub statement, for the become children it starts."""
    return 'REMOTE_NAME="%s";' % REMOTE_NAME if REMOTE_NAME and REMOTE_NAME_CHARS.fullmatch(REMOTE_NAME) else ''


def process_title():
    """What ps shows for this interpreter after its program, as Mitogen names its processes:
    `mitogen:user@controller:pid`, with a become child's account after it (`sudo:postgres`);
    None where the mux sent no name."""
    if not REMOTE_NAME:
        return None
    title = 'mitogen:' + REMOTE_NAME
    if LOGIN_SERVICE:
        try:
            account = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            account = str(os.getuid())
        title += ' %s:%s' % (LOGIN_SERVICE, account)
    return title


def show_process_title(title):
    """Write title over this process's arguments after argv[0], where ps reads them
    (/proc/PID/cmdline shows the memory the kernel laid them out in): the bootstrap stub that
    was there says nothing to a person. argv[0] stays, so the program is still named. Python
    keeps its own copy of the arguments, so nothing in the interpreter changes; where /proc
    is missing or refuses, the process keeps the stub as its arguments."""
    if not title:
        return
    try:
        with open('/proc/self/stat', 'rb') as handle:
            fields = handle.read().rsplit(b')', 1)[1].split()
        # proc(5): arg_start and arg_end are fields 48 and 49; the split starts at field 3.
        arg_start, arg_end = int(fields[45]), int(fields[46])
        with open('/proc/self/cmdline', 'rb') as handle:
            program = handle.read().split(b'\0', 1)[0]
        start = arg_start + len(program) + 1
        room = arg_end - start
        if room < 2:
            return
        data = title.encode('utf-8', 'replace')[:room - 1]
        with open('/proc/self/mem', 'r+b', buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b'\0' * (room - len(data)))
    except (OSError, ValueError, IndexError):
        pass
