#!/bin/sh
# Run by the script module: what the script sees of its account and arguments.
echo "args: $*"
echo "user: $(id -un)"
echo "to stderr" >&2
exit 0
