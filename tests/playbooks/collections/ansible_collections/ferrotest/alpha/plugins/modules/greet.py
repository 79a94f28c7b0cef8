#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferrotest.alpha.plugins.module_utils.greeting import greeting

DOCUMENTATION = r'''
module: greet
short_description: Test module of ferrotest.alpha built on its module_utils greeting
options:
  name:
    type: str
    required: true
'''


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type='str', required=True)))
    module.exit_json(changed=False, msg=greeting(module.params['name']))


if __name__ == '__main__':
    main()
