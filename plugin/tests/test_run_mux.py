"""The run's mux without a strategy (run_mux.py): its private directory, how a lost mux's end is
told, and the protocol check of the binary (mux_process.check_version)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ansible.errors import AnsibleError

from ansible_ferrogen import frames, mux_process, run_mux

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mux.tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def test_the_run_dir_is_named_after_the_run_and_private(private_tmp):
    path = Path(run_mux.run_dir())
    assert path.parent == private_tmp
    assert path.name.startswith(f"ferrogen-run-{os.getuid()}-{os.getpid()}-")
    run_mux._private_dir(str(path))
    assert path.stat().st_mode & 0o777 == 0o700
    run_mux._private_dir(str(path))  # an existing private dir of ours is fine


def test_run_dirs_of_ended_runs_are_swept_and_live_ones_kept(private_tmp):
    live = Path(run_mux.run_dir())
    ended = private_tmp / f"ferrogen-run-{os.getuid()}-{os.getpid()}-1"  # this pid, another start time
    gone = private_tmp / f"ferrogen-run-{os.getuid()}-999999999-5"
    unrelated = private_tmp / "ferrogen-run-notes"
    for path in (live, ended, gone, unrelated):
        path.mkdir(mode=0o700)
        (path / "exit-1").write_text("137\n")
    run_mux.sweep_ended_runs()
    assert live.exists() and unrelated.exists()
    assert not ended.exists() and not gone.exists()


@pytest.mark.parametrize("kind", ["link", "shared"])
def test_a_run_dir_that_is_a_link_or_shared_is_refused(private_tmp, kind):
    path = Path(run_mux.run_dir())
    if kind == "link":
        elsewhere = private_tmp / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        path.symlink_to(elsewhere)
    else:
        path.mkdir()
        path.chmod(0o755)
    with pytest.raises(AnsibleError, match="must be a directory owned by uid"):
        run_mux.find_or_start()


def test_how_a_mux_ended_is_told_in_words(private_tmp):
    assert mux_process.exit_in_words(-9) == "was killed by signal 9 (SIGKILL)"
    assert mux_process.exit_in_words(1) == "exited with status 1"
    assert run_mux.describe(9) == "was killed by signal 9 (SIGKILL)"  # wait(2) status of SIGKILL
    assert run_mux.describe(2 << 8) == "exited with status 2"
    # The supervisor shell's $?: above 128 is a signal.
    (private_tmp / "exit-4242").write_text("137\n")
    assert run_mux.how_it_ended(4242, str(private_tmp)) == "was killed by signal 9 (SIGKILL)"
    (private_tmp / "exit-4343").write_text("1\n")
    assert run_mux.how_it_ended(4343, str(private_tmp)) == "exited with status 1"
    assert run_mux.how_it_ended(4242, str(private_tmp)) == "was killed by signal 9 (SIGKILL)"
    # A mux that never said READY (pid unknown): the exit file that was not there before.
    assert run_mux.how_it_ended(None, str(private_tmp), {"exit-4242"}) == "exited with status 1"


def test_how_a_strategys_mux_ended_is_read_from_its_zombie():
    child = subprocess.Popen(["sh", "-c", "kill -TERM $$"])
    try:
        assert run_mux.how_it_ended(child.pid, None) == "was killed by signal 15 (SIGTERM)"
    finally:
        child.wait()


def fake_mux(tmp_path: Path, version_line: str) -> str:
    script = tmp_path / "ferrogen-mux"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(0o755)
    return str(script)


def test_a_mux_of_another_protocol_is_refused_saying_both(tmp_path):
    binary = fake_mux(tmp_path, "ferrogen-mux 9.0.0 (protocol 99)")
    with pytest.raises(AnsibleError) as refused:
        mux_process.check_version(binary)
    assert "protocol 99" in str(refused.value)
    assert f"speaks protocol {frames.PROTOCOL_VERSION}" in str(refused.value)
    mux_process.check_version(fake_mux(tmp_path, f"ferrogen-mux 0.1.0 (protocol {frames.PROTOCOL_VERSION})"))


def test_the_built_mux_speaks_the_plugins_protocol():
    binary = REPO / "target" / "release" / "ferrogen-mux"
    if not binary.exists():
        pytest.skip("no release build")
    mux_process.check_version(str(binary))
