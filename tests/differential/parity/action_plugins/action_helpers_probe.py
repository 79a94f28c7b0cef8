# Test action for the differential harness: ActionBase's helpers as third-party action plugins
# call them, and what each returns.
from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        tmpdir = self._make_tmp_path()
        result['tmpdir_parent'] = tmpdir.rstrip('/').rsplit('/', 1)[0]
        data_path = self._transfer_data(self._connection._shell.join_path(tmpdir, 'data.txt'), 'payload\n')
        result['data_path_in_tmpdir'] = data_path.startswith(tmpdir)
        self._fixup_perms2([tmpdir, data_path])
        low = self._low_level_execute_command('cat %s; echo to-stderr >&2; exit 4' % data_path)
        result['low_level'] = {key: low.get(key) for key in ('rc', 'stdout', 'stderr', 'stdout_lines')}
        result['home'] = self._remote_expand_user('~')
        result['home_unsudoable'] = self._remote_expand_user('~', sudoable=False)
        result['module'] = self._execute_module(module_name='python_probe', module_args={}, task_vars=task_vars)
        result['ping'] = self._execute_module(module_name='ansible.builtin.ping', module_args={'data': 'x'},
                                              task_vars=task_vars)
        self._remove_tmp_path(tmpdir)
        return result
