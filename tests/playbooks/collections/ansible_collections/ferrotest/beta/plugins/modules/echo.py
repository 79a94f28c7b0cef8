#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferrotest.beta.plugins.module_utils.echoing import echo

DOCUMENTATION = r'''
module: echo
short_description: Test module of ferrotest.beta built on its module_utils echoing
options:
  name:
    type: str
    required: true
'''


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type='str', required=True)))
    module.exit_json(changed=False, msg=echo(module.params['name']))


if __name__ == '__main__':
    main()
