"""pytest fixtures for ferrogen's integration tests (real ansible-playbook runs).

Run `bash ci/setup.sh` first (ci/test.sh does): it builds the mux, makes .venv, starts the test
sshd on 127.0.0.1:2222 and writes .state/inventory.ini.

`pytest --ferrogen-baseline` runs every ferrogen run under vanilla Ansible instead and skips the
tests marked `mux_only`; it checks the playbooks and this harness without the plugin.
"""

from __future__ import annotations

import functools
from pathlib import Path

import helpers
import pytest



def pytest_addoption(parser):
    parser.addoption(
        "--ferrogen-baseline",
        action="store_true",
        default=False,
        help="run ferrogen=True playbook runs under vanilla Ansible (checks the harness); skip mux_only tests",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "mux_only: asserts something only ferrogen's mux can satisfy")
    helpers.BASELINE["on"] = bool(config.getoption("--ferrogen-baseline"))


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--ferrogen-baseline"):
        return
    skip = pytest.mark.skip(reason="--ferrogen-baseline: needs the ferrogen mux")
    for item in items:
        if "mux_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return helpers.REPO


@pytest.fixture(scope="session")
def ansible_playbook() -> Path:
    path = helpers.ansible_playbook_bin()
    if not path.exists():
        pytest.fail(f"{path} missing: run `bash ci/setup.sh` first")
    return path


@pytest.fixture(scope="session")
def inventory(ansible_playbook) -> Path:
    if not helpers.INVENTORY.exists():
        pytest.fail(f"{helpers.INVENTORY} missing: run `bash ci/setup.sh` first")
    return helpers.INVENTORY


@pytest.fixture(scope="session")
def cached_run(inventory, tmp_path_factory):
    """Run a playbook once per session per (playbook, limit, ferrogen) and share the result."""

    @functools.cache
    def run(playbook: str, limit: str, ferrogen: bool) -> helpers.PlaybookRun:
        tmp = tmp_path_factory.mktemp("cached")
        return helpers.run_playbook(playbook, ferrogen=ferrogen, tmp_path=tmp, limit=limit)

    return run


@pytest.fixture
def run_playbook(inventory, tmp_path):
    """run_playbook(playbook, *, ferrogen, extra_env=None, extra_args=(), limit=None, timeout=300, inventory=None)"""

    def run(playbook, **kwargs):
        kwargs.setdefault("tmp_path", tmp_path)
        return helpers.run_playbook(playbook, **kwargs)

    return run
