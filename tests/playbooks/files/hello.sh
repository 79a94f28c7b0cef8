#!/bin/sh
# Used by modules.yml through the script module.
echo "script says $1"
