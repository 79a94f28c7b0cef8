"""run_module continuations: which module runs after the stat module, decided on the target."""

from __future__ import annotations

import json

import ferrogen_agent
import pytest

agent_module = ferrogen_agent.load()

SHA1 = 'a' * 40


def stat_output(**stat):
    return json.dumps({'changed': False, 'stat': stat}).encode()


@pytest.mark.parametrize(('output', 'other', 'same'), [
    (stat_output(exists=False), True, False),
    (stat_output(exists=True, isdir=False, checksum='b' * 40), True, False),
    # Unreadable: the copy action takes the missing checksum as '' and copies.
    (stat_output(exists=True, isdir=False), True, False),
    (stat_output(exists=True, isdir=False, checksum=SHA1), False, True),
    # A directory: the action stats the path below it first.
    (stat_output(exists=True, isdir=True, checksum=''), False, False),
    # Anything unexpected runs nothing ahead.
    (stat_output(exists=True, checksum='b' * 40), False, False),
    (stat_output(exists=True, isdir=False, checksum=42), False, False),
    (json.dumps({'failed': True, 'msg': 'boom', 'stat': {'exists': False}}).encode(), False, False),
    (b'not json', False, False),
    (b'{"stat": null}', False, False),
    (b'[]', False, False),
])
def test_conditions_match_the_copy_actions_own_choice(output, other, same):
    condition = {'sha1': SHA1}
    assert agent_module.stat_shows_other_content(output, condition) is other
    assert agent_module.stat_shows_same_content(output, condition) is same


def test_an_unknown_condition_is_refused_before_anything_runs(agent):
    header, _ = agent.call('run_module', {'zip': 'x' * 40, 'module_fqn': 'm', 'then': [
        {'if': {'kind': 'always'}, 'args': {'zip': 'x' * 40, 'module_fqn': 'm'}}]})
    assert not header['ok']
    assert header['error']['kind'] == 'agent_error'
    assert 'known condition' in header['error']['message']


def test_a_continuation_whose_zip_is_missing_asks_for_it(agent):
    header, _ = agent.call('run_module', {'zip': 'x' * 40, 'module_fqn': 'm', 'then': [
        {'if': {'kind': 'stat_shows_other_content', 'sha1': SHA1}, 'args': {'zip': 'y' * 40, 'module_fqn': 'm'}}]})
    assert not header['ok']
    assert header['error']['kind'] == 'missing_blob'
