#!/bin/sh
echo "script args: $*"
echo "script err" >&2
exit 4
