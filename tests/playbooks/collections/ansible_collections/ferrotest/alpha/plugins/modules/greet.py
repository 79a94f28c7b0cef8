#!/usr/bin/python
"""Test module: answers with what module_utils greeting of ferrotest.alpha makes of the name."""
from ansible_collections.ferrotest.alpha.plugins.module_utils.answer import answer
from ansible_collections.ferrotest.alpha.plugins.module_utils.greeting import greeting

if __name__ == '__main__':
    answer(greeting)
