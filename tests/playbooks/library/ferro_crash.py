#!/usr/bin/python
# Test module: a new-style module that raises. The task must fail and show the traceback.
from ansible.module_utils.basic import AnsibleModule


def main():
    AnsibleModule(argument_spec={})
    raise RuntimeError("ferro-crash-marker: this module crashed on purpose")


if __name__ == "__main__":
    main()
