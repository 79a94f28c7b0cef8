"""`python -m ansible_ferrogen config`: the ansible.cfg lines that enable ferrogen."""

from __future__ import annotations

import sys

# Each mode: what it is, then its ansible.cfg lines (README shows the same).
MODES = {
    'connection': (
        "Connection-only mode: Ansible's own strategies (linear, free, host_pinned); ssh connections "
        'go through ferrogen-mux. The callback loads the plugin once, before ansible-playbook forks '
        'its workers (add it to a callbacks_enabled list of your own).',
        ['[defaults]', 'transport = ferrogen.mux.ssh', 'callbacks_enabled = ferrogen.mux.preload'],
    ),
    'strategy': (
        'Strategy mode, as with Mitogen: ssh and local connections go through ferrogen-mux.',
        ['[defaults]', 'strategy = ferrogen.mux.linear'],
    ),
}

USAGE = f'usage: python -m ansible_ferrogen config [{"|".join(MODES)}]'


def config(modes: list[str]) -> str:
    """The ansible.cfg text for the given modes (all if none)."""
    blocks = []
    for mode in modes or MODES:
        summary, lines = MODES[mode]
        blocks.append('\n'.join([f'# {summary}', *lines]))
    return '\n\n'.join(blocks) + '\n'


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != 'config' or any(mode not in MODES for mode in args[1:]):
        print(USAGE, file=sys.stderr)
        return 2
    sys.stdout.write(config(args[1:]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
