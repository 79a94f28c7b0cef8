#!/usr/bin/python
# Test module: the address the task's own process resolves a name to (its C library's resolver).
import socket

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"name": {"type": "str", "required": True}})
    try:
        address = socket.gethostbyname(module.params["name"])
    except OSError as exc:
        address = "unresolved: %s" % (exc,)
    module.exit_json(changed=False, address=address)


if __name__ == "__main__":
    main()
