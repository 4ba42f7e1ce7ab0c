"""Environments the user made for a tuner (`llmkit.kit.venvs.user_environment`): used as they are, never
modified; a release the adapter is not written for is refused by name. A stand-in environment here is a
folder whose `bin/python` runs this interpreter (it has torch) and whose `bin/<tool>` exists."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from llmkit.errors import BackendUnavailableError
from llmkit.kit import venvs


def _environment(root: Path, tool: str, python: str = sys.executable) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text(f'#!/bin/sh\nexec {python} "$@"\n')
    (root / "bin" / tool).write_text("#!/bin/sh\n")
    for name in ("python", tool):
        (root / "bin" / name).chmod(0o755)
    return root


def test_a_users_environment_is_probed_and_used_as_it_is(tmp_path):
    env = _environment(tmp_path / "mine", "tune")
    before = sorted(p.name for p in env.rglob("*"))
    pytest_version = importlib.metadata.version("pytest")
    found = venvs.user_environment(env, owner="torchtune", tool="tune", stamp=".stamp", distribution="pytest",
                                   supported=pytest_version.split(".")[0] + ".")
    assert found["distributions"]["pytest"] == pytest_version
    assert found["torch"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    assert found["gpu"] is False and found["cuda"] is None  # this machine: the CPU build, no GPU
    assert sorted(p.name for p in env.rglob("*")) == before  # nothing written into it


def test_another_release_is_refused_naming_both(tmp_path):
    env = _environment(tmp_path / "mine", "axolotl")
    with pytest.raises(BackendUnavailableError, match=r"holds pytest \S+: llmkit's axolotl adapter is written for pytest 0\.0\.x"):
        venvs.user_environment(env, owner="axolotl", tool="axolotl", stamp=".stamp", distribution="pytest", supported="0.0.")
    with pytest.raises(BackendUnavailableError, match="holds axolotl nothing"):
        venvs.user_environment(env, owner="axolotl", tool="axolotl", stamp=".stamp", distribution="axolotl", supported="0.19.")


def test_llmkits_own_environments_and_empty_folders_are_not_users(tmp_path):
    stamped = _environment(tmp_path / "made-by-llmkit", "tune")
    (stamped / ".stamp").write_text("{}")
    assert venvs.user_environment(stamped, owner="t", tool="tune", stamp=".stamp", distribution="x", supported="1.") is None
    assert venvs.user_environment(tmp_path / "none", owner="t", tool="tune", stamp=".stamp", distribution="x", supported="1.") is None


def test_torchtune_uses_a_users_environment_without_making_one(tmp_path, monkeypatch):
    """The environment llmkit made for torchtune, reached through a folder of the user's: ensure_env returns
    that folder (no venv, no pip) and the recipes run on the CPU there."""
    tt_env = pytest.importorskip("llmkit_torchtune.env")
    made = tt_env.env_dir()
    if not tt_env.ready(made):
        pytest.skip("torchtune's environment is not made here (make setup makes it)")
    env = _environment(tmp_path / "mine", "tune", python=str(made / "bin" / "python"))
    monkeypatch.setenv("LLMKIT_TORCHTUNE_ENV", str(env))
    assert tt_env.ensure_env(log=lambda line: pytest.fail(f"it tried to make an environment: {line}")) == env
    assert tt_env.device(env) == "cpu"
    assert not (env / tt_env.STAMP).exists()
