#!/usr/bin/python
# Test module: a new-style module that prints something that is not JSON and exits 0.
# The task must fail and show what the module printed.
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    AnsibleModule(argument_spec={})
    print("ferro-nonjson-marker: this is not JSON")
    sys.exit(0)


if __name__ == "__main__":
    main()
