"""The mitogen_sudo / mitogen_su / mitogen_doas connection types: on the controller, every call
runs as ansible_user through that tool, in one persistent interpreter for the run."""

from __future__ import annotations

from ansible_ferrogen import become
from ansible_ferrogen.connection import LocalConnection


def documentation(method: str) -> str:
    """Options as Mitogen documents them for the mitogen_<method> connection types."""
    return f"""
    name: mitogen_{method}
    short_description: run as another account on the controller through {method}, via ferrogen-mux
    description:
        - Every task runs as C(ansible_user) in one persistent interpreter started through {method}.
        - The inventory hostname has no special meaning.
    author: ferrogen developers
    options:
        remote_user:
            description: Account to {method} to.
            default: root
            vars:
                - name: ansible_user
                - name: ansible_{method}_user
        password:
            description: Password {method} asks for, if any.
            vars:
                - name: ansible_password
                - name: ansible_{method}_pass
        become_exe:
            description: The {method} executable.
            default: {method}
            vars:
                - name: ansible_{method}_exe
                - name: ansible_become_exe
        become_flags:
            description: Flags for {method}.
            default: ''
            vars:
                - name: ansible_{method}_flags
                - name: ansible_become_flags
        python_interpreter:
            description: Python that runs the interpreter as the target account.
            vars:
                - name: ansible_python_interpreter
        inventory_name:
            description: Inventory name of the host, for messages and the mux status table.
            vars:
                - name: inventory_hostname
"""


class BecomeConnection(LocalConnection):
    """A local connection whose every call runs as ansible_user through `method`."""

    method = 'sudo'

    def become_account(self) -> dict:
        flags = self.get_option('become_flags') or ''
        become.check_flags(self.method, flags)
        password = self.get_option('password')
        return {
            'method': self.method,
            'user': self.get_option('remote_user') or 'root',
            'exe': self.get_option('become_exe') or self.method,
            'flags': flags,
            'password': str(password) if password else None,
            'python': self.python_interpreter(),
        }

    def task_temp_dirs_in_interpreter(self) -> bool:
        # Every call runs as the become account, whose interpreter is not the login one.
        return False

    def call_account(self, as_become: bool) -> dict:
        # There is no login account to run anything as: every call, transfers included.
        return self.become_account()
