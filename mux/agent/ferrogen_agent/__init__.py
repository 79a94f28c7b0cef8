"""The ferrogen agent: the persistent interpreter ferrogen-mux starts on a target, in parts.

The mux sends the agent as one source (the bootstrap blob): mux/src/build.rs joins the files
that mux/agent/parts.txt names, in that order, leaving out the lines by which they import each
other (`from .PART import ...`, `from ansible_ferrogen.MODULE import ...`); a part missing fails
the build. The parts then share one namespace, so they are never imported one by one; their
imports say which part a name comes from. The first parts are the plugin's modules that the
agent shares with it (frames, atomic_files).

The agent's tests take that same source from `source()`, and the agent as a module from
`load()`.
"""

import os
import types

# The repository's root: parts.txt names the parts from there.
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))
PARTS = os.path.join(ROOT, 'mux', 'agent', 'parts.txt')
# The lines of a part left out of the blob (the same rule as mux/src/build.rs).
LINK_PREFIXES = ('from .', 'from ansible_ferrogen.')


def part_paths():
    """The parts' paths, in blob order."""
    with open(PARTS) as handle:
        names = [line.strip() for line in handle]
    return [os.path.join(ROOT, name) for name in names if name and not name.startswith('#')]


def source():
    """The agent's source, as the mux sends it."""
    texts = []
    for path in part_paths():
        with open(path, encoding='utf-8') as handle:
            texts.append(''.join(line for line in handle if not line.startswith(LINK_PREFIXES)))
    return '\n'.join(texts).encode('utf-8')


def load(name='ferrogen_agent.joined'):
    """The agent as a module (not started: its `main` runs only as `__main__`)."""
    module = types.ModuleType(name)
    exec(compile(source(), '<ferrogen agent>', 'exec'), module.__dict__)
    return module
