"""become_flags that cannot start an interpreter are refused, naming the flag."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleError

from ansible_ferrogen.become import check_flags


@pytest.mark.parametrize('method, flags', [
    ('sudo', '-H -S -n'),
    ('sudo', '-E -i --preserve-env=PATH'),
    ('su', '-l'),
    ('doas', '-n'),
])
def test_meaningful_flags_pass(method, flags):
    check_flags(method, flags)


@pytest.mark.parametrize('method, flags, named', [
    ('sudo', '-H -b', '-b'),
    ('sudo', '-bH', '-b'),
    ('sudo', '--user=postgres', '--user'),
    ('sudo', '-u postgres', '-u'),
    ('su', '-c true', '-c'),
    ('doas', '-s', '-s'),
])
def test_conflicting_flags_are_refused_by_name(method, flags, named):
    with pytest.raises(AnsibleError, match=f'become_flags: {named}'):
        check_flags(method, flags)


def test_unparseable_flags_are_reported():
    with pytest.raises(AnsibleError, match='cannot be parsed'):
        check_flags('sudo', '-H "unterminated')
