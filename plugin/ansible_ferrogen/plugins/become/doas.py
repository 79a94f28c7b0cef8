# Copyright: ferrogen developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = """
    name: doas
    short_description: Do As user (OpenBSD's doas, or opendoas on Linux)
    description:
        - Runs tasks as another account through doas. Under the ferrogen strategies the account gets
          its own persistent interpreter; without them the command is wrapped as the community.general
          plugin of the same name would wrap it.
        - Shipped with ferrogen so that C(become_method=doas) works with ansible-core alone.
    author: ferrogen developers
    options:
        become_user:
            description: User you 'become' to execute the task.
            default: root
            ini:
              - section: privilege_escalation
                key: become_user
              - section: doas_become_plugin
                key: user
            vars:
              - name: ansible_become_user
              - name: ansible_doas_user
            env:
              - name: ANSIBLE_BECOME_USER
              - name: ANSIBLE_DOAS_USER
            keyword:
              - name: become_user
        become_exe:
            description: doas executable.
            default: doas
            ini:
              - section: privilege_escalation
                key: become_exe
              - section: doas_become_plugin
                key: executable
            vars:
              - name: ansible_become_exe
              - name: ansible_doas_exe
            env:
              - name: ANSIBLE_BECOME_EXE
              - name: ANSIBLE_DOAS_EXE
            keyword:
              - name: become_exe
        become_flags:
            description: Options to pass to doas.
            default: ''
            ini:
              - section: privilege_escalation
                key: become_flags
              - section: doas_become_plugin
                key: flags
            vars:
              - name: ansible_become_flags
              - name: ansible_doas_flags
            env:
              - name: ANSIBLE_BECOME_FLAGS
              - name: ANSIBLE_DOAS_FLAGS
            keyword:
              - name: become_flags
        become_pass:
            description: Password for doas prompt.
            required: false
            vars:
              - name: ansible_become_password
              - name: ansible_become_pass
              - name: ansible_doas_pass
            env:
              - name: ANSIBLE_BECOME_PASS
              - name: ANSIBLE_DOAS_PASS
            ini:
              - section: doas_become_plugin
                key: password
"""

import re  # noqa: E402  (Ansible plugin layout: DOCUMENTATION first)

from ansible.plugins.become import BecomeBase  # noqa: E402


class BecomeModule(BecomeBase):
    """doas, for ansible-core without community.general"""

    name = 'doas'

    # Messages doas prints when the password was wrong or the rule does not allow the command.
    fail = ('Permission denied', 'Authentication failed')
    missing = ('Authorization required',)

    def check_password_prompt(self, b_output: bytes) -> bool:
        """Whether the output ends in a doas password prompt."""
        return bool(re.match(rb'^doas \(.+@.+\) password:', b_output.strip()) or
                    re.match(rb'^[Pp]assword:', b_output.strip()))

    def build_become_command(self, cmd, shell):
        super().build_become_command(cmd, shell)
        if not cmd:
            return cmd
        self.prompt = True
        exe = self.get_option('become_exe') or self.name
        flags = self.get_option('become_flags') or ''
        user = self.get_option('become_user') or 'root'
        return f'{exe} {flags} -u {user} {self._build_success_command(cmd, shell)}'
