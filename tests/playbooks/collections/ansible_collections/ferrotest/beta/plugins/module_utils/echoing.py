"""Used by ferrotest.beta.echo, whose zip also carries part of ferrotest.alpha (module_utils answer)."""


def echo(name):
    return 'beta echoes %s' % name
