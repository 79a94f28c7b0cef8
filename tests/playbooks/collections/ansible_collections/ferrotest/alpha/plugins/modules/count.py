#!/usr/bin/python
"""Test module: answers with what module_utils counting of ferrotest.alpha makes of the name."""
from ansible_collections.ferrotest.alpha.plugins.module_utils.answer import answer
from ansible_collections.ferrotest.alpha.plugins.module_utils.counting import count

if __name__ == '__main__':
    answer(count)
