"""The conditions of run_module continuations, and the output limit."""

import json

from ansible_ferrogen.frames import MAX_BODY


def stat_result(stdout):
    """The `stat` of a stat module's output; None for a failure or anything unexpected."""
    try:
        result = json.loads(stdout.decode('utf-8'))
    except ValueError:
        return None
    status = result.get('stat') if isinstance(result, dict) and not result.get('failed') else None
    if not isinstance(status, dict) or not isinstance(status.get('exists'), bool):
        return None
    if status['exists'] and not (status.get('isdir') is False and isinstance(status.get('checksum', ''), str)):
        return None
    return status


def stat_shows_other_content(stdout, condition):
    """Whether the stat module's output says the path is absent or a non-directory without the
    content whose sha1 is condition['sha1']: when Ansible's copy action runs the copy module."""
    status = stat_result(stdout)
    return status is not None and (not status['exists'] or status.get('checksum', '') != condition['sha1'])


def stat_shows_same_content(stdout, condition):
    """Whether the stat module's output says the path is a non-directory with that content:
    when the copy action runs the file module instead."""
    status = stat_result(stdout)
    return status is not None and status['exists'] and status.get('checksum') == condition['sha1']


# The conditions a run_module continuation may have, by name.
CONTINUATION_CONDITIONS = {
    'stat_shows_other_content': stat_shows_other_content,
    'stat_shows_same_content': stat_shows_same_content,
}


class OutputTooLarge(Exception):
    """A task wrote more than one reply can carry (MAX_BODY)."""

    def __init__(self, size):
        super().__init__('the task wrote %d bytes of output, more than the %d bytes (%d MiB) a reply can '
                         'carry; redirect it to a file on the target instead' % (size, MAX_BODY, MAX_BODY >> 20))
