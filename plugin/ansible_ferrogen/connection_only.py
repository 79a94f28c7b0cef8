"""Connection-only mode: ferrogen's connection plugins under Ansible's own strategies.

The ferrogen strategies install, in the controller before workers fork, what spares actions
round trips on our connections (action_mixin, module_cache, speculation). Without one, the
worker that loads one of the collection's connection plugins installs the same for itself, and
its first call finds or starts the run's mux (run_mux.py). Under a ferrogen strategy this finds
everything installed already.
"""

from __future__ import annotations

from ansible_ferrogen import action_mixin, module_cache, speculation


def install() -> None:
    action_mixin.install()
    module_cache.install()
    speculation.install()
