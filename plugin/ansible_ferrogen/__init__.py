"""ferrogen for Ansible: Mitogen-compatible strategy and connection plugins over ferrogen-mux."""

from __future__ import annotations

# ansible-core releases CI runs against (ci/ansible-versions.txt; a test keeps the two equal);
# others get a warning, never a refusal.
TESTED_ANSIBLE_CORE = ((2, 16), (2, 17), (2, 18), (2, 19), (2, 20), (2, 21))
