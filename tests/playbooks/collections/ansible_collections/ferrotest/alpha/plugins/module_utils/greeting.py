"""Used only by ferrotest.alpha.greet: absent from the zips of the collection's other modules."""


def greeting(name):
    return 'alpha greets %s' % name
