#!/usr/bin/python
"""Test module: answers with what module_utils echoing of ferrotest.beta makes of the name."""
from ansible_collections.ferrotest.alpha.plugins.module_utils.answer import answer
from ansible_collections.ferrotest.beta.plugins.module_utils.echoing import echo

if __name__ == '__main__':
    answer(echo)
