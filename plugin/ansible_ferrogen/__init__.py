"""ferrogen for Ansible: Mitogen-compatible strategy and connection plugins over ferrogen-mux."""

from __future__ import annotations

# ansible-core releases the test suite runs against; newer ones get a warning, never a refusal.
TESTED_ANSIBLE_CORE = ((2, 19),)
