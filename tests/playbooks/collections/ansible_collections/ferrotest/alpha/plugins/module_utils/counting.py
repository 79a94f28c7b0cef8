"""Used only by ferrotest.alpha.count."""


def count(name):
    return 'alpha counts %d letters in %s' % (len(name), name)
