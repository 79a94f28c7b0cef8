"""Settings checked before the mux starts, and the mux's log level from Ansible's verbosity."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleError

from ansible_ferrogen import mux_process


@pytest.mark.parametrize(
    ('name', 'value'),
    [
        ('MITOGEN_POOL_SIZE', '0'),
        ('MITOGEN_POOL_SIZE', '-2'),
        ('MITOGEN_POOL_SIZE', 'eight'),
        ('MITOGEN_POOL_SIZE', ''),
        ('MITOGEN_MAX_INTERPRETERS', '2.5'),
        ('MITOGEN_MAX_INTERPRETERS', '1_0'),
        ('MITOGEN_MAX_INTERPRETERS', '++1'),
        ('MITOGEN_DUMP_THREAD_STACKS', '0'),
        ('MITOGEN_DUMP_THREAD_STACKS', 'nan'),
        ('MITOGEN_DUMP_THREAD_STACKS', 'inf'),
    ],
)
def test_invalid_settings_name_the_variable(name, value):
    with pytest.raises(AnsibleError) as raised:
        mux_process.check_settings({name: value})
    assert f'invalid {name}={value!r}' in str(raised.value)


def test_valid_and_absent_settings_pass():
    mux_process.check_settings({})
    mux_process.check_settings(
        {'MITOGEN_POOL_SIZE': ' 8 ', 'MITOGEN_MAX_INTERPRETERS': '1', 'MITOGEN_DUMP_THREAD_STACKS': '0.5'}
    )


def test_log_level_follows_verbosity_unless_chosen():
    assert mux_process.LOG_ENV not in mux_process.mux_environment({}, 2)
    assert mux_process.mux_environment({}, 3)[mux_process.LOG_ENV] == mux_process.VERBOSE_LOG_FILTER
    assert mux_process.mux_environment({mux_process.LOG_ENV: 'trace'}, 4)[mux_process.LOG_ENV] == 'trace'
