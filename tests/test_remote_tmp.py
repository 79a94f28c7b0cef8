"""remote_tmp (ansible_remote_tmp, ANSIBLE_REMOTE_TMP) decides where the persistent
interpreter's own temp dir goes, not only the task temp dirs."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import helpers
import pytest


@pytest.mark.mux_only
@pytest.mark.parametrize("how", ["variable", "environment"])
def test_the_interpreter_temp_dir_is_under_remote_tmp(tmp_path, how):
    # Under /tmp, which every account of the test reaches; a fresh name, so that no earlier
    # interpreter's dir is found.
    root = Path(f"/tmp/fg-remote-tmp-{uuid.uuid4().hex[:10]}")
    extra_args = ["-e", f"remote_tmp_root={root}"]
    extra_env = {}
    if how == "variable":
        extra_args += ["-e", f"ansible_remote_tmp={root}"]
    else:
        extra_env["ANSIBLE_REMOTE_TMP"] = str(root)
    try:
        run = helpers.run_playbook(
            "remote_tmp.yml", ferrogen=True, tmp_path=tmp_path, limit="sshroot,localhost",
            extra_args=extra_args, extra_env=extra_env,
        )
        assert run.returncode == 0, helpers.describe(run)
        for host in ("sshroot", "localhost"):
            listed = run.task(host, "the interpreter's temp dir")["stdout"].splitlines()
            assert len(listed) >= 1 and all(line.startswith(f"{root}/ferrogen-") for line in listed), listed
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.mux_only
def test_a_noexec_remote_tmp_is_skipped(tmp_path):
    """The spec's "Temporary Files" order skips a directory on a noexec filesystem: remote_tmp on
    a noexec tmpfs (mounted in a private mount namespace, so nothing outside the run sees it)
    is passed over for the next candidate, system_tmpdirs, and the tasks work as vanilla's do."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root to mount a noexec tmpfs")
    run_root = Path(f"/tmp/fg-noexec-{uuid.uuid4().hex[:10]}")
    noexec_root, exec_root = run_root / "noexec", run_root / "exec"
    noexec_root.mkdir(parents=True)
    exec_root.mkdir()
    mount = f"mount -t tmpfs -o noexec,mode=0755 fgnoexec {noexec_root} && exec \"$@\""
    try:
        run = helpers.run_playbook(
            "noexec_tmp.yml", ferrogen=True, tmp_path=tmp_path, limit="localhost",
            extra_args=["-e", f"noexec_root={noexec_root}", "-e", f"exec_root={exec_root}",
                        "-e", f"ansible_remote_tmp={noexec_root}/tmp",
                        "-e", f'{{"ansible_system_tmpdirs": ["{exec_root}"]}}'],
            command_prefix=["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"],
        )
        assert run.returncode == 0, helpers.describe(run)
        listed = run.task("localhost", "the interpreter's temp dirs")["stdout"].splitlines()
        assert listed and all(line.startswith(f"{exec_root}/ferrogen-") for line in listed), listed
        assert (exec_root / "copied").read_text() == "through a temp dir\n"
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
