"""The body of the test modules: answer with the message `make_message` makes of the name."""

from ansible.module_utils.basic import AnsibleModule


def answer(make_message):
    module = AnsibleModule(argument_spec=dict(name=dict(type='str', required=True)))
    module.exit_json(changed=False, msg=make_message(module.params['name']))
