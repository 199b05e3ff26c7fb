"""Atomic writes keep the previous file on failure and leave no temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nbs_gym.io import path_safe, write_atomic, write_text_atomic


def test_write_creates_folders_and_uses_umask_permissions(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "deep" / "run" / "split.json", "{}")
    assert path.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "metrics.json", "old")

    def crash(handle) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_path_safe_names_keep_words_dots_and_dashes_only() -> None:
    assert path_safe("examples.bandit:EpsilonGreedyBandit") == "examples.bandit-EpsilonGreedyBandit"
    assert path_safe("synthetic:fabric?contamination=0.2&x=y") == "synthetic-fabric-contamination-0.2-x-y"
    assert path_safe("ppo__v1__0") == "ppo__v1__0"
