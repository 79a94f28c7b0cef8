"""Used by ferrotest.beta.echo: another collection under the same ansible_collections package."""


def echo(name):
    return 'beta echoes %s' % name
