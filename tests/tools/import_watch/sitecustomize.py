"""Test tool, on PYTHONPATH: every process of the Python started with it, forked ones included,
appends `pid module` to the file $FERROGEN_IMPORT_LOG when it imports one of the modules named
in $FERROGEN_IMPORT_WATCH (comma-separated) itself. A process forked after its parent imported
the module finds it in sys.modules and logs nothing."""

import os
import sys


class ImportWatch:
    """A finder that finds nothing: it is asked only for modules not imported yet."""

    def __init__(self, log, watched):
        self.log = log
        self.watched = watched

    def find_spec(self, name, path=None, target=None):
        if name in self.watched:
            with open(self.log, "a") as log:
                log.write(f"{os.getpid()} {name}\n")


if os.environ.get("FERROGEN_IMPORT_LOG"):
    sys.meta_path.insert(0, ImportWatch(os.environ["FERROGEN_IMPORT_LOG"],
                                        set(os.environ.get("FERROGEN_IMPORT_WATCH", "").split(","))))  # fmt: skip
