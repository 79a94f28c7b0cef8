"""The agent's emulation of a fresh login (LoginState): pam_env's files as PAM reads them, the
spec's rules for applying their changes, the resolver reloaded when resolv.conf changes."""

from __future__ import annotations

import os

import ferrogen_agent
import pytest

@pytest.fixture(scope='module')
def agent():
    return ferrogen_agent.load()


def test_pam_config_names_the_files_in_pams_order(agent, tmp_path, monkeypatch):
    (tmp_path / 'common-session').write_text('session required pam_unix.so\n'
                                             'session optional pam_env.so user_readenv=1 envfile=/etc/locale\n')
    (tmp_path / 'login').write_text('# comment\n'
                                    'session [success=ok default=bad] pam_selinux.so open\n'
                                    'session required pam_env.so readenv=1 # trailing\n'
                                    '@include common-session\n'
                                    'session include other\n')
    (tmp_path / 'other').write_text('-session optional /lib/security/pam_env.so conffile=/etc/other.conf readenv=0\n')
    (tmp_path / 'quiet').write_text('session required pam_limits.so\n')
    monkeypatch.setattr(agent, 'PAM_CONFIG_DIR', str(tmp_path))
    assert agent.pam_env_sources('login', '/home/u') == [
        ('/etc/security/pam_env.conf', 'conf'), ('/etc/environment', 'env'), ('/etc/locale', 'env'),
        ('/home/u/.pam_environment', 'conf'), ('/etc/other.conf', 'conf')]
    assert agent.pam_env_sources('quiet', '/home/u') == []
    assert agent.pam_env_sources('missing', '/home/u') == []


def test_environment_file_syntax(agent):
    text = 'A=1\nexport B="two words"\n  # comment\nC\nD=x#y\nbad-key=3\nE=\'q\'\n'
    assert agent.parse_environment_file(text) == [('A', '1'), ('B', 'two words'), ('C', None), ('D', 'x'),
                                                  ('E', 'q')]


def test_pam_env_conf_syntax(agent):
    text = ('X DEFAULT=${HOME}/x\nY DEFAULT=1 OVERRIDE=@{HOME}/y\nZ\nW=3\n'
            'Q DEFAULT="quoted value"\nR DEFAULT=${X}/r\n')
    assert agent.parse_pam_env_conf(text, {'HOME': '/h'}, '/home/u', '/bin/sh') == [
        ('X', '/h/x'), ('Y', '/home/u/y'), ('Z', None), ('W', '3'), ('Q', 'quoted value'), ('R', '/h/x/r')]


def test_changes_apply_where_the_spec_says_it_is_safe(agent):
    environ = {'SAME': '1', 'OVERRIDDEN': 'by a profile', 'GONE': 'g', 'KEPT': 'mine'}
    old = {'SAME': '1', 'OVERRIDDEN': 'f', 'GONE': 'g', 'KEPT': 'theirs'}
    new = {'SAME': '2', 'OVERRIDDEN': 'f2', 'NEW': 'n', 'UNSET': None}
    agent.apply_env_changes(old, new, environ)
    assert environ == {'SAME': '2', 'OVERRIDDEN': 'by a profile', 'NEW': 'n', 'KEPT': 'mine'}


def test_refresh_applies_file_changes_and_reloads_the_resolver(agent, tmp_path, monkeypatch):
    (tmp_path / 'sshd').write_text('session required pam_env.so user_readenv=1\n')
    environment = tmp_path / 'environment'
    environment.write_text('FERRO_T_CHANGED=before\nFERRO_T_REMOVED=gone\n')
    resolv = tmp_path / 'resolv.conf'
    resolv.write_text('nameserver 127.0.0.1\n')
    reloads = []
    monkeypatch.setattr(agent, 'PAM_CONFIG_DIR', str(tmp_path))
    monkeypatch.setattr(agent, 'PAM_ENV_ENVFILE', str(environment))
    monkeypatch.setattr(agent, 'PAM_ENV_CONFFILE', str(tmp_path / 'no-pam_env.conf'))
    monkeypatch.setattr(agent, 'RESOLV_CONF', str(resolv))
    monkeypatch.setattr(agent, 'reload_resolver', lambda: reloads.append(1) or True)
    for key in ('FERRO_T_CHANGED', 'FERRO_T_REMOVED', 'FERRO_T_ADDED'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('FERRO_T_CHANGED', 'before')
    monkeypatch.setenv('FERRO_T_REMOVED', 'gone')
    state = agent.LoginState('sshd')
    assert state.refresh() == []
    environment.write_text('FERRO_T_CHANGED=after\nFERRO_T_ADDED=new\n')
    changes = state.refresh()
    assert os.environ.get('FERRO_T_CHANGED') == 'after'
    assert os.environ.get('FERRO_T_ADDED') == 'new'
    assert 'FERRO_T_REMOVED' not in os.environ
    assert len(changes) == 3, changes
    assert reloads == []
    resolv.write_text('nameserver 127.0.0.2\n')
    assert len(state.refresh()) == 1
    assert reloads == [1]
    assert state.refresh() == []


def test_no_login_no_files(agent):
    assert agent.LoginState(None).sources == []


def test_resolver_reload_calls_res_init(agent):
    assert agent.reload_resolver() is True
