#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferrotest.alpha.plugins.module_utils import greeting

DOCUMENTATION = r'''
module: whence
short_description: Test module of ferrotest.alpha that says how its module_utils greeting was loaded
'''


def main():
    module = AnsibleModule(argument_spec={})
    module.exit_json(changed=False, loader=type(greeting.__loader__).__name__, file=greeting.__file__)


if __name__ == '__main__':
    main()
