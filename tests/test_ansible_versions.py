"""Every supported ansible-core runs playbooks through the mux (issue 18): the primary version
runs the whole suite; each other version in ci/ansible-versions.txt runs the smoke set here,
from its own venv (ci/setup.sh makes them), in strategy mode and in connection-only mode
(issue 19)."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from helpers import ansible_playbook_bin, ansible_versions, describe
from test_connection_only import connection_only_env

from ansible_ferrogen import TESTED_ANSIBLE_CORE

pytestmark = pytest.mark.mux_only

# The unprivileged login: become to root and to another account, and the temp dirs between them.
SMOKE_HOSTS = "sshuser"
# The optimisations each older version lacks the internals for (ansible_internals.OPTIMISATIONS),
# each named in exactly one warning; any other version switches none off.
OLDER_THAN_2_19 = {"module_arguments_only", "module_zip_by_reference", "json_profiles_ahead"}
SWITCHED_OFF = {"2.16": OLDER_THAN_2_19, "2.17": OLDER_THAN_2_19, "2.18": OLDER_THAN_2_19}
# Installed only by the strategy: connection-only workers neither look them up nor warn about them.
STRATEGY_ONLY = {"task_names", "json_profiles_ahead"}


def release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def test_the_plugin_lists_the_versions_ci_tests():
    assert sorted(TESTED_ANSIBLE_CORE) == sorted(release(version) for version in ansible_versions())


@pytest.mark.parametrize("mode", ["strategy", "connection-only"])
@pytest.mark.parametrize("version", ansible_versions()[1:])
def test_smoke_set(run_playbook, tmp_path, version, mode):
    playbook = ansible_playbook_bin(version)
    assert playbook.exists(), f"{playbook} missing: run `bash ci/setup.sh` first"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 << 20))
    fetch_root = tmp_path / "fetched"
    run = run_playbook(
        "smoke.yml",
        ferrogen=True,
        ansible_version=version,
        limit=SMOKE_HOSTS,
        extra_env=connection_only_env(tmp_path, "linear") if mode == "connection-only" else None,
        extra_args=["-e", f"big_source={big} big_sha1={hashlib.sha1(big.read_bytes()).hexdigest()}",
                    "-e", f"fetch_root={fetch_root}"],
    )
    assert run.returncode == 0, describe(run)
    for host in SMOKE_HOSTS.split(","):
        results = run.for_host(host)
        assert [r["task"] for r in results if r["failed"]] == ["fail ignored"], describe(run)
        assert run.task(host, "smoke results as expected")["status"] == "ok"
        assert (fetch_root / host / "big.bin").read_bytes() == big.read_bytes()

    output = " ".join(run.output.split())  # Ansible wraps long warnings
    switched_off = set(re.findall(r"ferrogen: [^()]+ \((\w+)\) is off with ansible-core", output))
    expected = SWITCHED_OFF.get(".".join(version.split(".")[:2]), set())
    assert switched_off == (expected - STRATEGY_ONLY if mode == "connection-only" else expected), output
    for name in switched_off:
        assert output.count(f"({name}) is off") == 1, output
    assert "ferrogen is tested with" not in output
