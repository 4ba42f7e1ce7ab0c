"""torchtune's own virtual environment, created on first use and reused.

torchtune 0.6.1 imports only beside torchao 0.15.0 (0.16-0.18 break its imports), while llmkit's
environment holds a newer torchao: torchtune lives in a venv of its own, under
`llmkit.catalog.cache_dir() / "envs"`, and runs there in a subprocess. torch is pinned to the CPU build
2.13.0 (pip on this machine kind finds a local CPU wheel; an unpinned torch would be a multi-GB CUDA
build). `python -m llmkit_torchtune.env` creates it (scripts/setup.sh does, so tests find it ready). Where
pip finds a CUDA build instead (a GPU machine with PyPI), that build is kept and the runs use the GPU.

An environment you made yourself is used as it is: point `$LLMKIT_TORCHTUNE_ENV` at a folder with `bin/tune`
and torchtune 0.6 (beside torchao 0.15.0 and the torch of your choice), and llmkit installs nothing there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llmkit.errors import BackendUnavailableError
from llmkit.kit import venvs

TORCH = "torch==2.13.0"
REQUIREMENTS = (TORCH, "torchtune==0.6.1", "torchao==0.15.0")
STAMP = ".llmkit-env.json"


def env_dir() -> Path:
    """`$LLMKIT_TORCHTUNE_ENV`, else `<llmkit cache>/envs/torchtune-0.6.1`."""
    if os.environ.get("LLMKIT_TORCHTUNE_ENV"):
        return Path(os.environ["LLMKIT_TORCHTUNE_ENV"])
    from llmkit.catalog import cache_dir

    return cache_dir() / "envs" / "torchtune-0.6.1"


def _wanted() -> dict:
    return {"requirements": list(REQUIREMENTS), "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def ready(path: Path | None = None) -> bool:
    path = path or env_dir()
    stamp = path / STAMP
    try:
        return json.loads(stamp.read_text())["wanted"] == _wanted() and (path / "bin" / "tune").exists()
    except (OSError, ValueError, KeyError):
        return False


def user_environment(path: Path | None = None) -> dict | None:
    """What a user-made environment at `path` holds (None: not one); refused if its torchtune is not 0.6."""
    return venvs.user_environment(path or env_dir(), owner="torchtune", tool="tune", stamp=STAMP,
                                  requires={"torchtune": "0.6.", "torchao": "0.15."}, variable="LLMKIT_TORCHTUNE_ENV")


def versions(path: Path | None = None) -> dict[str, str]:
    """What the environment holds (recorded when llmkit made it)."""
    path = path or env_dir()
    try:
        return json.loads((path / STAMP).read_text())["versions"]
    except (OSError, ValueError, KeyError):
        return {}


def device(path: Path | None = None) -> str:
    """Where the recipes run: "cuda" when the environment's torch is a CUDA build and sees a GPU now, else "cpu"."""
    found = venvs.probe_torch(path or env_dir(), "torchtune")
    return "cuda" if found["cuda"] and found["gpu"] else "cpu"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_env(log: Callable[[str], None] | None = None) -> Path:
    """The environment's folder, created (≈2 min on 2 cores) when missing or made for other versions.
    Progress goes to `log` (default: stderr). Concurrent callers wait for one creation."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = env_dir()
    if ready(path) or user_environment(path) is not None:
        return path
    with _locked(path):
        if ready(path):
            return path
        start = time.perf_counter()
        log(f"llmkit-torchtune: creating torchtune's environment in {path} (once; about 2 minutes): "
            + " ".join(REQUIREMENTS))
        if path.exists():  # llmkit's (stamped) or empty: user_environment refused anything else
            import shutil

            shutil.rmtree(path)
        venvs.mark_incomplete(path, STAMP)
        python = path / "bin" / "python"
        logfile = path.parent / f"{path.name}-install.log"
        steps = [
            ("virtual environment", [sys.executable, "-m", "venv", str(path)]),
            # torch first and alone: the pinned CPU build, before anything could pull another one.
            (TORCH, [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", TORCH]),
            ("torchtune, torchao", [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar",
                                    "off", *REQUIREMENTS]),
        ]
        with open(logfile, "w") as out:
            for label, command in steps:
                t0 = time.perf_counter()
                log(f"llmkit-torchtune:   {label} ...")
                done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
                if done.returncode:
                    tail = "".join(logfile.read_text().splitlines(keepends=True)[-15:])
                    raise BackendUnavailableError("torchtune", f"creating its environment failed at {label} "
                                                  f"(log: {logfile}):\n{tail}", "pip install torchtune==0.6.1 torchao==0.15.0")
                log(f"llmkit-torchtune:   {label}: {time.perf_counter() - t0:.0f} s")
        probe = subprocess.run(
            [str(python), "-c", "import json, torch, torchao, torchtune; print(json.dumps({'torch': torch.__version__, "
             "'torchao': torchao.__version__, 'torchtune': torchtune.__version__, 'cuda': torch.version.cuda}))"],
            capture_output=True, text=True)
        if probe.returncode:
            raise BackendUnavailableError("torchtune", f"torchtune does not import in {path}: {probe.stderr[-2000:]}")
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        found["cuda"] = found["cuda"] or "none (CPU build)"
        (path / STAMP).write_text(json.dumps({"wanted": _wanted(), "versions": found}, indent=2))
        log(f"llmkit-torchtune: environment ready in {time.perf_counter() - start:.0f} s: {found}")
        return path


if __name__ == "__main__":
    print(ensure_env())
