"""Virtual environments of their own for tools that cannot share llmkit's (pinned dependencies that
conflict with the engines'): created on first use under `<llmkit cache>/envs/<name>`, reused after, run
as subprocesses.

torch is installed first and alone, pinned to the CPU build of the main environment (pip on this machine
kind finds a local CPU wheel; an unpinned torch pulled in by another package would be a multi-GB CUDA
build), then the tool with a constraint that keeps that torch. A stamp file records what was asked for
and what got installed; an environment made for other requirements is made again. Concurrent callers
wait for one creation (a lock file beside the folder).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import BackendUnavailableError

STAMP = ".llmkit-env.json"


@dataclass(frozen=True)
class VenvSpec:
    """What one tool's environment holds. `name` is also the folder's name under `<cache>/envs`."""

    name: str
    owner: str  # the llmkit backend or tool that uses it, for messages
    requirements: tuple[str, ...]  # pip requirement strings, installed together after torch
    torch: str = "torch==2.13.0"
    probe: str = "import torch"  # Python run in the new environment to check it imports
    env_override: str | None = None  # an environment variable naming another folder

    def wanted(self) -> dict:
        return {"torch": self.torch, "requirements": list(self.requirements),
                "python": f"{sys.version_info.major}.{sys.version_info.minor}"}

    def path(self) -> Path:
        if self.env_override and os.environ.get(self.env_override):
            return Path(os.environ[self.env_override])
        from llmkit.catalog import cache_dir

        return cache_dir() / "envs" / self.name

    def python(self) -> Path:
        return self.path() / "bin" / "python"

    def ready(self) -> bool:
        try:
            return json.loads((self.path() / STAMP).read_text())["wanted"] == self.wanted() and self.python().exists()
        except (OSError, ValueError, KeyError):
            return False

    def versions(self) -> dict[str, str]:
        """The distributions' versions recorded when the environment was made."""
        try:
            return json.loads((self.path() / STAMP).read_text())["versions"]
        except (OSError, ValueError, KeyError):
            return {}


def ensure(spec: VenvSpec, log: Callable[[str], None] | None = None) -> Path:
    """The environment's folder, created when missing or made for other requirements. pip's
    "Collecting ..." lines go to `log` (default: stderr) as progress."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = spec.path()
    if spec.ready():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not spec.ready():
            _create(spec, path, log)
    return path


def _create(spec: VenvSpec, path: Path, log: Callable[[str], None]) -> None:
    start = time.perf_counter()
    log(f"{spec.owner}: creating its environment in {path} (once; a few minutes): {spec.torch} {' '.join(spec.requirements)}")
    if path.exists():
        shutil.rmtree(path)
    base_python = getattr(sys, "_base_executable", None) or sys.executable  # a venv made from a venv uses the base
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(spec.torch + "\n")
    steps = [("virtual environment", [base_python, "-m", "venv", str(path)]),
             (spec.torch + " (first and alone: the CPU build)", [*pip, spec.torch]),
             (" ".join(spec.requirements), [*pip, *spec.requirements, "-c", constraints.name])]
    try:
        for number, (label, command) in enumerate(steps, 1):
            t0 = time.perf_counter()
            log(f"{spec.owner}: [{number}/{len(steps)}] {label}")
            _run(spec, command, log)
            log(f"{spec.owner}: [{number}/{len(steps)}] done in {time.perf_counter() - t0:.0f} s")
    finally:
        os.unlink(constraints.name)
    probe = subprocess.run([str(path / "bin" / "python"), "-c", f"{spec.probe}\nimport json, torch, importlib.metadata as m\n"
                            f"print(json.dumps({{'cuda': torch.version.cuda, **{{d.metadata['Name'].lower(): d.version "
                            f"for d in m.distributions()}}}}))"], capture_output=True, text=True)
    if probe.returncode:
        raise BackendUnavailableError(spec.owner, f"the new environment {path} does not import: {probe.stderr[-2000:]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    if found.pop("cuda"):
        raise BackendUnavailableError(spec.owner, f"{path} got a CUDA build of torch ({found.get('torch')}), not the CPU wheel")
    seconds = time.perf_counter() - start
    (path / STAMP).write_text(json.dumps({"wanted": spec.wanted(), "versions": found, "seconds": round(seconds, 1)}, indent=2))
    log(f"{spec.owner}: environment ready in {seconds:.0f} s")


def _run(spec: VenvSpec, command: list[str], log: Callable[[str], None]) -> None:
    """Run one set-up command, passing pip's progress lines on and keeping the tail for an error."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if not line or "is ignored: it is neither a file nor a directory" in line:
            continue
        tail = (tail + [line])[-30:]
        if line.startswith(("Collecting", "Successfully", "ERROR")):
            log(f"  {line}")
    if process.wait():
        raise BackendUnavailableError(spec.owner, f"creating its environment failed: {' '.join(command)}\n" + "\n".join(tail),
                                      f"remove {spec.path()} and retry")


# ---- environments the user made -------------------------------------------------------------------------

_TORCH_PROBE = ("import json, torch, importlib.metadata as m\n"
                "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.is_available(), "
                "'distributions': {d.metadata['Name'].lower(): d.version for d in m.distributions()}}))")


def probe_torch(env: Path, owner: str) -> dict:
    """What `env`'s Python sees: its torch, the CUDA version that torch was built for (None: the CPU build),
    whether a GPU is visible now, and every installed distribution's version (a few seconds: torch imports)."""
    python = env / "bin" / "python"
    try:
        done = subprocess.run([str(python), "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise BackendUnavailableError(owner, f"{python} could not import torch: {done.stderr[-1500:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise BackendUnavailableError(owner, f"{python} does not run as a Python with torch ({type(exc).__name__}: {exc})") from exc


def user_environment(env: Path, *, owner: str, tool: str, stamp: str, requires: dict[str, str],
                     variable: str) -> dict | None:
    """`env` as the user made it (for instance with a CUDA build of torch, or offline from their own wheels), or
    None when llmkit may make its own there (no folder, an empty one, or one with llmkit's stamp). A user's
    environment is a folder with `bin/<tool>` and no llmkit stamp: llmkit installs nothing into it, never
    removes it, and uses it as it is. `requires` maps distributions to the releases the adapter is written
    for (version prefixes such as "0.19."); another release is refused, naming both. A folder that is neither
    (not empty, no stamp, no `bin/<tool>`) is refused: it may be the user's, so llmkit does not touch it."""
    if (env / stamp).exists() or not env.exists() or not any(env.iterdir()):
        return None
    pins = " ".join(f"'{name}=={prefix}*'" for name, prefix in requires.items())
    if not (env / "bin" / tool).exists():
        raise BackendUnavailableError(owner, f"{env} (from ${variable} or the tuner's env=) is not empty, has no bin/{tool} "
                                      "and no llmkit stamp: llmkit neither installs into nor removes a folder it did not make; "
                                      "point it at an environment with its tool, or at an empty or new folder",
                                      f"{env / 'bin' / 'python'} -m pip install {pins}")
    found = probe_torch(env, owner)
    for name, prefix in requires.items():
        version = found["distributions"].get(name)
        if version is None or not version.startswith(prefix):
            raise BackendUnavailableError(owner, f"{env} (from ${variable} or the tuner's env=) is an environment of your "
                                          f"own, and it holds {f'{name} {version}' if version else f'no {name}'}: llmkit's "
                                          f"{owner} adapter is written for {name} {prefix}x",
                                          f"{env / 'bin' / 'python'} -m pip install {pins}")
    return found


def mark_incomplete(env: Path, stamp: str) -> None:
    """Before llmkit builds an environment: a stamp that says so, so a half-made one is never taken for a
    user's environment (it has bin/<tool> but would have no stamp) and is made again."""
    env.mkdir(parents=True, exist_ok=True)
    (env / stamp).write_text(json.dumps({"incomplete": True}))
