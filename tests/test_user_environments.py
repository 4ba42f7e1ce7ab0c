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
    found = venvs.user_environment(env, owner="torchtune", tool="tune", stamp=".stamp",
                                   requires={"pytest": pytest_version.split(".")[0] + "."}, variable="LLMKIT_TORCHTUNE_ENV")
    assert found["distributions"]["pytest"] == pytest_version
    assert found["torch"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]
    import torch

    assert found["cuda"] == torch.version.cuda and found["gpu"] == torch.cuda.is_available()  # the same interpreter
    assert sorted(p.name for p in env.rglob("*")) == before  # nothing written into it


def _user(env: Path, tool: str = "axolotl", **requires: str) -> dict | None:
    return venvs.user_environment(env, owner="axolotl", tool=tool, stamp=".stamp", requires=requires or {"axolotl": "0.19."},
                                  variable="LLMKIT_AXOLOTL_ENV")


def test_another_release_is_refused_naming_both(tmp_path):
    env = _environment(tmp_path / "mine", "axolotl")
    with pytest.raises(BackendUnavailableError, match=r"holds pytest \S+: llmkit's axolotl adapter is written for pytest 0\.0\.x"):
        _user(env, pytest="0.0.")
    with pytest.raises(BackendUnavailableError, match=r"holds no axolotl.*LLMKIT_AXOLOTL_ENV|LLMKIT_AXOLOTL_ENV.*holds no axolotl"):
        _user(env)


def test_llmkits_own_and_empty_folders_are_not_users(tmp_path):
    stamped = _environment(tmp_path / "made-by-llmkit", "axolotl")
    (stamped / ".stamp").write_text("{}")
    assert _user(stamped) is None
    assert _user(tmp_path / "none") is None
    (tmp_path / "empty").mkdir()
    assert _user(tmp_path / "empty") is None


def test_a_half_made_environment_is_llmkits_not_the_users(tmp_path):
    """A build cut after bin/axolotl appeared but before its stamp: marked incomplete first, made again."""
    env = tmp_path / "env"
    venvs.mark_incomplete(env, ".stamp")
    _environment(env, "axolotl")
    assert _user(env) is None


def test_a_folder_that_is_nobodys_environment_is_refused_and_left_alone(tmp_path):
    """Not empty, no stamp, no bin/<tool>: it may be the user's (a venv of theirs, a project): never removed,
    never installed into."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(BackendUnavailableError, match=r"no bin/axolotl and no llmkit stamp"):
        _user(folder)
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("python", ["", "#!/bin/sh\n", "#!/bin/sh\necho not json\n", None])
def test_a_broken_python_is_a_clear_error(tmp_path, python):
    env = _environment(tmp_path / "mine", "axolotl")
    if python is None:
        (env / "bin" / "python").unlink()  # no interpreter at all
    else:
        (env / "bin" / "python").write_text(python)
    with pytest.raises(BackendUnavailableError, match="python"):
        _user(env)


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


def test_torchtune_does_not_remove_a_folder_it_did_not_make(tmp_path, monkeypatch):
    tt_env = pytest.importorskip("llmkit_torchtune.env")
    folder = tmp_path / "someones-venv"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("#!/bin/sh\n")
    monkeypatch.setenv("LLMKIT_TORCHTUNE_ENV", str(folder))
    with pytest.raises(BackendUnavailableError, match="no bin/tune"):
        tt_env.ensure_env(log=lambda line: pytest.fail(f"it tried to make an environment: {line}"))
    assert (folder / "bin" / "python").exists()
