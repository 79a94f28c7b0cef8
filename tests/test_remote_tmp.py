"""remote_tmp (ansible_remote_tmp, ANSIBLE_REMOTE_TMP) decides where the persistent
interpreter's own temp dir goes, not only the task temp dirs."""

from __future__ import annotations

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
